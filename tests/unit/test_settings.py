"""Settings: one frozen object from the environment, and loud failures on typos."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from app.settings import Settings, SettingsError


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env(environ={"HOME": "/home/someone"})
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.topic_names() == {
        "events": "events",
        "decisions": "decisions",
        "fraud-alerts": "fraud-alerts",
        "dead-letter": "dead-letter",
        "fraud-labels": "fraud-labels",
        "consent": "consent",
        "members": "members",
        "model-checkpoints": "model-checkpoints",
        "shadow-decisions": "shadow-decisions",
        "erasure-requests": "erasure-requests",
        "erasures": "erasures",
        "links": "rewardstream-links",
        "rekeyed": "rewardstream-rekeyed",
    }
    assert settings.data_dir == Path("/home/someone/.local/state/rewardstream")
    assert settings.cache_dir == Path("/home/someone/.cache/rewardstream")


def test_environment_sets_fields_with_their_types() -> None:
    settings = Settings.from_env(
        environ={
            "REWARDSTREAM_PARTITIONS": "12",
            "REWARDSTREAM_TOPIC_EVENTS": "shop-events",
            "REWARDSTREAM_DATA_DIR": "/var/lib/rs",
            "XDG_CACHE_HOME": "/cache",
        }
    )
    assert settings.partitions == 12
    assert settings.topic_events == "shop-events"
    assert settings.data_dir == Path("/var/lib/rs")
    assert settings.cache_dir == Path("/cache/rewardstream")


def test_overrides_win_over_environment() -> None:
    settings = Settings.from_env(
        environ={"REWARDSTREAM_BOOTSTRAP_SERVERS": "a:1"}, bootstrap_servers="b:2"
    )
    assert settings.bootstrap_servers == "b:2"


def test_unknown_variable_is_an_error_naming_it() -> None:
    with pytest.raises(SettingsError, match="REWARDSTREAM_PARTITONS"):
        Settings.from_env(environ={"REWARDSTREAM_PARTITONS": "3"})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REWARDSTREAM_PARTITIONS", "many"),
        ("REWARDSTREAM_PARTITIONS", "0"),
        ("REWARDSTREAM_WEB_PORT", "70000"),
        ("REWARDSTREAM_MAX_EVENT_BYTES", "10"),
        ("REWARDSTREAM_TOPIC_DECISIONS", "events"),
        ("REWARDSTREAM_LOG_LEVEL", "loud"),
        ("REWARDSTREAM_CHECKPOINT_INTERVAL_S", "0"),
    ],
)
def test_unusable_values_fail_at_start(variable: str, value: str) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(environ={variable: value})


def test_settings_are_frozen_and_round_trip_through_env() -> None:
    settings = Settings.from_env(environ={"REWARDSTREAM_PARTITIONS": "6"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.partitions = 3  # type: ignore[misc]
    assert Settings.from_env(environ=settings.env()) == settings


def test_an_unknown_processing_guarantee_is_refused_by_name() -> None:
    with pytest.raises(SettingsError, match="REWARDSTREAM_PROCESSING_GUARANTEE"):
        Settings.from_env({"REWARDSTREAM_PROCESSING_GUARANTEE": "exactly-once"})
    chosen = Settings.from_env({"REWARDSTREAM_PROCESSING_GUARANTEE": "exactly_once"})
    assert chosen.processing_guarantee == "exactly_once"
