"""The worker settles the cycle collector once it has started (streams.worker)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from streams.worker import GC_YOUNG, settle_collector


@pytest.fixture
def collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("collector")
def test_what_start_up_built_is_left_out_and_the_young_are_collected_less_often() -> None:
    settle_collector()
    assert gc.get_freeze_count() > 10_000  # start-up's objects, never scanned again
    assert gc.get_threshold()[0] == GC_YOUNG > 700
