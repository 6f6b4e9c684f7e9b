"""Where each input this worker owns stands: how far behind its end, whether it is held
behind another producer's open transaction, and whether the stages it feeds are paused
while a stage they wait for catches up.

One job, refreshed on the runtime's housekeeping tick (and the pacing on every turn of
the loop), never on the handling path: it reads the consumer's positions and offsets and
writes the lag and blocked-input gauges. The runtime hands it the consumer and its tasks
each time; it keeps only what it showed last, so a gauge of a partition no longer owned
is taken down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiokafka import TopicPartition

from streams.task import Task


class InputWatch:
    """The lag, blocked-input and pacing view of one worker's inputs."""

    def __init__(
        self,
        stage_of_topic: Mapping[str, str],
        metrics: Any,
        *,
        paced: frozenset[str] = frozenset(),
        pacing: frozenset[str] = frozenset(),
        pause_behind: int = 5_000,
        resume_behind: int = 1_000,
    ) -> None:
        self.stage_of_topic = stage_of_topic  # input topic -> the name of its stage
        self.metrics = metrics
        # Pause the inputs of ``paced`` stages while a stage of ``pacing`` is more than
        # ``pause_behind`` records behind; resume under ``resume_behind``.
        self.paced = paced
        self.pacing = pacing
        self.pause_behind = pause_behind
        self.resume_behind = resume_behind
        self.paused = False
        self.paced_inputs: set[TopicPartition] = set()
        self.lag_shown: set[tuple[str, str]] = set()
        # Since when each input has waited behind an open transaction (monotonic seconds).
        self.blocked_since: dict[TopicPartition, float] = {}
        # Where the consumer stands on each owned input (see refresh).
        self.read_positions: dict[TopicPartition, int] = {}

    # ------------------------------------------------------------ positions

    async def refresh(self, consumer: Any, tasks: Mapping[int, Task]) -> None:
        """Where the consumer stands on each owned input: past what the loop handled, and
        past the commit markers and aborted records it never returns (a partition whose
        last entry is a marker is then not counted one behind), and known from the
        assignment on, before anything was fetched (an input held behind an open
        transaction from the start must show)."""
        positions: dict[TopicPartition, int] = {}
        for task in tasks.values():
            for tp in task.inputs:
                try:
                    position = await asyncio.wait_for(consumer.position(tp), 0.1)
                except Exception:  # not known yet (a reset in progress): next tick
                    continue
                handled = task.next_offsets.get(tp)
                positions[tp] = position if handled is None else max(position, handled)
        self.read_positions = positions

    def position_of(self, task: Task, tp: TopicPartition) -> int | None:
        handled = task.next_offsets.get(tp)
        known = self.read_positions.get(tp)
        if handled is None or known is None:
            return known if handled is None else handled
        return max(handled, known)

    @staticmethod
    def still_assigned(
        consumer: Any, tasks: Mapping[int, Task]
    ) -> list[tuple[TopicPartition, Task]]:
        """Each input of each task, with its task, that the consumer still holds: the group
        can take a partition from the consumer (a lost generation, a fenced twin) before the
        revocation reaches the tasks, and aiokafka refuses to say anything of a partition it
        does not hold (an assertion, or an IllegalStateError from pause and resume, either of
        which would end the worker)."""
        held = consumer.assignment()
        return [(tp, task) for task in tasks.values() for tp in task.inputs if tp in held]

    def behind(self, consumer: Any, tasks: Mapping[int, Task]) -> dict[TopicPartition, int]:
        """Per input partition this worker owns: how many records lie between the next one
        to handle and its end (last stable offset, or high watermark before the first
        read_committed fetch says it)."""
        found = {}
        for tp, task in self.still_assigned(consumer, tasks):
            end = consumer.last_stable_offset(tp)
            if end is None or end < 0:
                end = consumer.highwater(tp)
            position = self.position_of(task, tp)
            if end is not None and position is not None:
                found[tp] = max(end - position, 0)
        return found

    # ------------------------------------------------------------ gauges

    def export_lag(self, consumer: Any, tasks: Mapping[int, Task]) -> None:
        """``consumer_lag_records`` per owned input partition; the series of a partition no
        longer owned is removed, so only its owner reports it (an autoscaler sums these)."""
        gauge = self.metrics.consumer_lag
        shown = {(tp.topic, str(tp.partition)): n for tp, n in self.behind(consumer, tasks).items()}
        for labels, lag in shown.items():
            gauge.labels(*labels).set(lag)
        for labels in self.lag_shown - shown.keys():
            gauge.remove(*labels)
        self.lag_shown = set(shown)

    def watch_blocked(self, consumer: Any, tasks: Mapping[int, Task], now_s: float) -> None:
        """Inputs held behind an open transaction: everything up to the last stable offset
        is handled, and records lie beyond it (a producer opened a transaction and has not
        ended it; the broker aborts it only after its timeout, up to 15 minutes)."""
        gauge = self.metrics.input_blocked_seconds
        blocked: dict[TopicPartition, float] = {}
        for tp, task in self.still_assigned(consumer, tasks):
            stable, high = consumer.last_stable_offset(tp), consumer.highwater(tp)
            position = self.position_of(task, tp)
            if stable is None or high is None or position is None:
                continue
            if 0 <= stable < high and position >= stable:
                blocked[tp] = self.blocked_since.get(tp, now_s)
        for tp in self.blocked_since.keys() - blocked.keys():
            gauge.labels(tp.topic, str(tp.partition)).set(0)
        for tp, since in blocked.items():
            gauge.labels(tp.topic, str(tp.partition)).set(now_s - since)
        self.blocked_since = blocked

    def blocked_for(self, now_s: float, at_least_s: float) -> list[str]:
        """What /ready says of the inputs held behind an open transaction ``at_least_s``."""
        return [
            f"{tp.topic}[{tp.partition}] has waited {now_s - since:.0f} s behind an open "
            "transaction (its last stable offset does not move)"
            for tp, since in sorted(self.blocked_since.items())
            if now_s - since >= at_least_s
        ]

    def forget(self, tp: TopicPartition) -> None:
        """``tp`` is no longer owned: its blocked-input gauge goes back to 0."""
        if self.blocked_since.pop(tp, None) is not None:
            self.metrics.input_blocked_seconds.labels(tp.topic, str(tp.partition)).set(0)

    # ------------------------------------------------------------ pacing

    def pace_anew(self) -> None:
        """The consumer reads every owned partition again (an assignment, a rewind): the
        next :meth:`pace` pauses what it holds back anew."""
        self.paced_inputs = set()

    def pace(self, consumer: Any, tasks: Mapping[int, Task]) -> None:
        """Pause the paced stages' inputs while a pacing stage on this worker is far behind
        (the decide stage waits for the link stage, whose state its view shows)."""
        if not self.paced or not tasks:
            return
        behind = self.behind(consumer, tasks)
        lagging = [n for tp, n in behind.items() if self.stage_of_topic[tp.topic] in self.pacing]
        limit = self.resume_behind if self.paused else self.pause_behind
        paused = max(lagging, default=0) > limit
        paced = {
            tp
            for tp, _ in self.still_assigned(consumer, tasks)
            if self.stage_of_topic[tp.topic] in self.paced
        }
        if paused == self.paused and paced == self.paced_inputs:
            return  # nothing changed: no call into the client
        self.paused = paused
        self.paced_inputs = paced
        self.metrics.intake_paused.set(int(paused))
        if paused:
            consumer.pause(*sorted(paced))
        else:
            consumer.resume(*sorted(paced))
