"""What keeps a worker from doing its job, said in words for ``/ready``.

One job: remember the failures that last (a task's transactions failing in a row,
something the worker keeps retrying, its producer fenced again and again by a twin)
and say them while they last. The runtime reports each failure and each success as it
happens; nothing here decides what to do about them.
"""

from __future__ import annotations

from collections import deque

# A task's transactions failing this many times in a row make the worker not ready.
FAILURES_NOT_READY = 3
# The worker's one producer fenced this often within FENCED_WINDOW_S by a producer that
# took the same transactional id: two live workers share a worker id, and each start of
# one fences the other.
FENCED_NOT_READY = 3
FENCED_WINDOW_S = 60.0


class Health:
    """The lasting failures of one worker (times are monotonic seconds)."""

    def __init__(self, producer_id: str, worker_id: str) -> None:
        self.producer_id = producer_id  # the worker's one producer's transactional id
        self.worker_id = worker_id
        self.failures_in_a_row: dict[int, int] = {}  # per task
        # What the worker keeps trying and cannot do yet (a producer to renew, tasks to
        # take while the broker is away): since when, and the last error.
        self.retrying: dict[str, tuple[float, str]] = {}
        self.fenced_at: deque[float] = deque(maxlen=FENCED_NOT_READY)

    # ------------------------------------------------------------ what happened

    def commit_failed(self, partition: int) -> None:
        self.failures_in_a_row[partition] = self.failures_in_a_row.get(partition, 0) + 1

    def committed(self, partition: int) -> None:
        self.failures_in_a_row.pop(partition, None)

    def failures(self, partition: int) -> int:
        """How many of the task's transactions in a row failed."""
        return self.failures_in_a_row.get(partition, 0)

    def carry_failures(self, partition: int, failures: int) -> None:
        """A task taken again after failing counts on from ``failures``."""
        if failures:
            self.failures_in_a_row[partition] = failures

    def forget(self, partition: int) -> None:
        """The task left this worker."""
        self.failures_in_a_row.pop(partition, None)

    def failed_trying(self, what: str, error: BaseException, now_s: float) -> None:
        since = self.retrying.get(what, (now_s, ""))[0]
        self.retrying[what] = (since, repr(error))

    def done_trying(self, what: str) -> None:
        self.retrying.pop(what, None)

    def fenced(self, now_s: float) -> None:
        """The worker's one producer was fenced by another that took its id."""
        self.fenced_at.append(now_s)

    # ------------------------------------------------------------ what to say

    def problems(self, now_s: float) -> list[str]:
        found = [
            f"{what} has failed for {now_s - since:.0f} s (last: {error})"
            for what, (since, error) in sorted(self.retrying.items())
        ]
        fenced = self.fenced_at
        if len(fenced) == FENCED_NOT_READY and now_s - fenced[0] < FENCED_WINDOW_S:
            found.append(
                f"the producer {self.producer_id} was fenced {FENCED_NOT_READY} times in the "
                f"last {now_s - fenced[0]:.0f} s by another producer of the same id: is this "
                f"worker id ({self.worker_id}) given to another live worker too?"
            )
        found += [
            f"task {partition}: {failures} transactions in a row failed"
            for partition, failures in sorted(self.failures_in_a_row.items())
            if failures >= FAILURES_NOT_READY
        ]
        return found
