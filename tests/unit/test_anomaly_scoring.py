"""The anomaly detector is scored only where its signal could change an alert, and the
alerts are what scoring every event gives. Pure code: attack traffic replayed in-process."""

from __future__ import annotations

import importlib

import orjson
import pytest

from app.assembly import build_engine
from app.fraud.assess import Assessment
from app.fraud.halfspace import WindowedHalfSpaceTrees
from app.fraud.scoring import ANOMALY_WEIGHT, anomaly_can_alert
from app.fraud.signals import Signal
from app.replay import replay
from app.settings import Settings
from harness.simulation.attacks import AttackConfig, generate
from harness.simulation.events import START_MS

DAY_MS = 86_400_000
# The module, not the function app.fraud exports under the same name.
assess_module = importlib.import_module("app.fraud.assess")


def _attack_lines() -> list[bytes]:
    config = AttackConfig(
        seed=1, start_ms=START_MS, duration_ms=4 * DAY_MS,
        normal_users=400, normal_events=6_000,
    )  # fmt: skip
    return [orjson.dumps(e.document) for e in generate(config)]


def _replayed(lines: list[bytes]) -> list[bytes]:
    settings = Settings()
    engine = build_engine(settings)
    return list(replay(engine, lines, source_name="attacks", max_event_bytes=65_536))


def test_alerts_are_what_scoring_every_event_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _attack_lines()
    scored: list[int] = []
    real_score = WindowedHalfSpaceTrees.score_at_least

    def counted(self: WindowedHalfSpaceTrees, x: dict[str, float], floor: float) -> float | None:
        scored.append(1)
        return real_score(self, x, floor)

    monkeypatch.setattr(WindowedHalfSpaceTrees, "score_at_least", counted)
    skipping = _replayed(lines)
    scored_when_skipping = len(scored)
    monkeypatch.setattr(assess_module, "anomaly_can_alert", lambda score, at: True)
    scored.clear()
    every = _replayed(lines)
    assert skipping == every
    # The detector's signal is in some of these alerts (else the comparison shows nothing)
    # and most events were not scored.
    assert sum(b"anomaly.isolated" in record for record in every) >= 5
    assert scored_when_skipping < len(scored) / 2


@pytest.mark.parametrize("alert_at", [0.3, 0.5, 0.62, 0.9])
def test_the_bound_is_the_alert_score_with_the_detector_speaking(alert_at: float) -> None:
    speaking = Signal("anomaly.isolated", ANOMALY_WEIGHT, "anomaly score 0.99")
    for step in range(0, 10_001):
        event_score = round(step / 10_000, 4)
        with_it = Assessment(event_score, event_score, (), speaking)
        assert anomaly_can_alert(event_score, alert_at) == (with_it.alert_score >= alert_at)
