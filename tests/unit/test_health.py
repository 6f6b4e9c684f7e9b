"""What /ready says of a worker's lasting failures (streams.health), on its own."""

from __future__ import annotations

from streams.health import FAILURES_NOT_READY, FENCED_WINDOW_S, Health


def health() -> Health:
    return Health("app-worker-3", "3")


def test_a_task_is_named_once_its_transactions_fail_enough_times_in_a_row() -> None:
    h = health()
    for _ in range(FAILURES_NOT_READY - 1):
        h.commit_failed(2)
    assert h.problems(0.0) == []
    h.commit_failed(2)
    assert h.problems(0.0) == [f"task 2: {FAILURES_NOT_READY} transactions in a row failed"]
    h.committed(2)  # one commit that works ends the run of failures
    assert h.problems(0.0) == []


def test_a_task_taken_again_after_failing_counts_its_failures_on() -> None:
    h = health()
    h.commit_failed(1)
    h.commit_failed(1)
    failures = h.failures(1)
    h.forget(1)  # the recovery drops the task ...
    h.carry_failures(1, failures)  # ... and takes it again
    h.commit_failed(1)
    assert h.problems(0.0) == ["task 1: 3 transactions in a row failed"]


def test_what_keeps_failing_is_said_since_its_first_failure_with_its_last_error() -> None:
    h = health()
    h.failed_trying("taking tasks 0,1", ConnectionError("broker away"), 10.0)
    h.failed_trying("taking tasks 0,1", TimeoutError("no answer"), 14.0)
    assert h.problems(25.0) == [
        "taking tasks 0,1 has failed for 15 s (last: TimeoutError('no answer'))"
    ]
    h.done_trying("taking tasks 0,1")
    assert h.problems(25.0) == []


def test_a_producer_fenced_again_and_again_points_at_a_twin_worker() -> None:
    h = health()
    h.fenced(0.0)
    h.fenced(1.0)
    assert h.problems(2.0) == []  # twice: a rebalance or a renewal can do that
    h.fenced(2.0)
    (said,) = h.problems(3.0)
    assert said.startswith("the producer app-worker-3 was fenced 3 times in the last 3 s")
    assert "worker id (3) given to another live worker" in said
    assert h.problems(FENCED_WINDOW_S + 1.0) == []  # long ago: not any more
