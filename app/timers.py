"""Event-time timers: what must happen to a user once their partition's event time passes
a moment, though the user sends nothing more.

A granted reward waits for its answer for the program's response window; a user who
never comes back would otherwise keep the offer forever, and the model would learn only
from the users who return. Each such user has a timer: a row of a changelogged table,
keyed by its partition, the moment it is due and whom it concerns, so it commits with
the transaction that set it, is restored with the partition, and the index in memory
is rebuilt from the keys alone (no row is decoded).

Time here is event time: a partition's clock is the newest event time decided on it,
kept in the same table, so a restart, a rebalance and a replay of the same partition's
events fire each timer at the same event. A partition that receives no events fires
nothing; an event stamped ahead moves the clock, which is why the worker bounds how far
ahead an event may be stamped (``REWARDSTREAM_MAX_EVENT_AHEAD_S``).

Key layout (every integer big-endian, so a table's keys sort by time within a partition):

- ``T`` + partition (2 bytes) + due ms (8 bytes) + subject: a timer; the value is ``1``;
- ``C`` + partition (2 bytes): the partition's clock; the value is the ms (8 bytes).
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import MutableMapping

Table = MutableMapping[bytes, bytes | None]

_TIMER = b"T"
_CLOCK = b"C"
_PARTITION = struct.Struct(">H")
_TIMER_HEAD = struct.Struct(">HQ")
_MS = struct.Struct(">Q")
_SET = b"1"


def timer_key(partition: int, due_ms: int, subject: bytes) -> bytes:
    return _TIMER + _TIMER_HEAD.pack(partition, max(due_ms, 0)) + subject


def clock_key(partition: int) -> bytes:
    return _CLOCK + _PARTITION.pack(partition)


class Timers:
    """The timers and clocks of one table (every partition it holds), indexed in memory.

    Adding, firing and cancelling write the table at once; a caller that commits the
    table's changes with its outputs commits its timers with them.
    """

    __slots__ = ("clocks", "due", "of_subject", "table")

    def __init__(self, table: Table) -> None:
        self.table = table
        # Per partition: (due ms, subject) in time order; an entry whose timer was
        # cancelled stays until it reaches the top (of_subject says whether it is live).
        self.due: dict[int, list[tuple[int, bytes]]] = {}
        self.of_subject: dict[tuple[int, bytes], set[int]] = {}
        self.clocks: dict[int, int] = {}
        for key, value in list(table.items()):
            if value is None:
                continue
            if key[:1] == _TIMER and len(key) >= 1 + _TIMER_HEAD.size:
                partition, due_ms = _TIMER_HEAD.unpack_from(key, 1)
                self._index(partition, due_ms, key[1 + _TIMER_HEAD.size :])
            elif key[:1] == _CLOCK and len(key) == 1 + _PARTITION.size and len(value) == 8:
                self.clocks[_PARTITION.unpack_from(key, 1)[0]] = _MS.unpack(value)[0]

    def __len__(self) -> int:
        return sum(len(dues) for dues in self.of_subject.values())

    def clock(self, partition: int) -> int | None:
        """The partition's event time: the newest event time it was advanced to."""
        return self.clocks.get(partition)

    def advance(self, partition: int, ts: int) -> bool:
        """Move the partition's clock to ``ts`` if that is later; whether it moved."""
        clock = self.clocks.get(partition)
        if clock is not None and ts <= clock:
            return False
        self.clocks[partition] = ts
        self.table[clock_key(partition)] = _MS.pack(max(ts, 0))
        return True

    def add(self, partition: int, due_ms: int, subject: bytes) -> None:
        """A timer for ``subject`` at ``due_ms`` (adding it twice adds it once)."""
        dues = self.of_subject.get((partition, subject))
        if dues is not None and due_ms in dues:
            return
        self.table[timer_key(partition, due_ms, subject)] = _SET
        self._index(partition, due_ms, subject)

    def covers(self, partition: int, subject: bytes, due_ms: int) -> bool:
        """Whether a timer of ``subject`` is due at or before ``due_ms``."""
        dues = self.of_subject.get((partition, subject))
        return dues is not None and min(dues) <= due_ms

    def pop_due(self, partition: int) -> list[bytes]:
        """Delete the partition's timers due at or before its clock; the subjects they
        concern, each once, in the order their first timer was due."""
        queue = self.due.get(partition)
        clock = self.clocks.get(partition)
        if not queue or clock is None or queue[0][0] > clock:
            return []
        fired: dict[bytes, None] = {}
        while queue and queue[0][0] <= clock:
            due_ms, subject = heapq.heappop(queue)
            dues = self.of_subject.get((partition, subject))
            if dues is None or due_ms not in dues:
                continue  # cancelled
            self._forget(partition, due_ms, subject, dues)
            fired[subject] = None
        return list(fired)

    def cancel(self, partition: int, subject: bytes) -> int:
        """Delete every timer of ``subject`` on the partition; how many there were."""
        dues = self.of_subject.get((partition, subject))
        if not dues:
            return 0
        count = len(dues)
        for due_ms in list(dues):
            self._forget(partition, due_ms, subject, dues)
        return count

    def _index(self, partition: int, due_ms: int, subject: bytes) -> None:
        self.of_subject.setdefault((partition, subject), set()).add(due_ms)
        heapq.heappush(self.due.setdefault(partition, []), (due_ms, subject))

    def _forget(self, partition: int, due_ms: int, subject: bytes, dues: set[int]) -> None:
        dues.discard(due_ms)
        if not dues:
            del self.of_subject[partition, subject]
        del self.table[timer_key(partition, due_ms, subject)]
