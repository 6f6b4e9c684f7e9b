"""Learning that takes effect only once the batch that taught it is committed.

The worker's tables and offsets roll back when a transaction fails; the models
live in memory, outside Kafka. So while the worker handles a batch, each
learning step is held (:meth:`Deferral.holding`) and handed to the runtime,
which runs it after the batch's transaction commits and drops it if the
transaction fails: an aborted batch teaches nothing, and a batch handled again
teaches once. Offline replay holds nothing: every step is taken at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

Step = Callable[[], None]


class Deferral:
    """Where a model's learning steps go: taken at once, or held in a list."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held: list[Step] | None = None

    def run(self, step: Step) -> None:
        if self.held is None:
            step()
        else:
            self.held.append(step)

    @contextlib.contextmanager
    def holding(self, into: list[Step]) -> Iterator[None]:
        """Hold every step taken inside the block in ``into`` (in order)."""
        previous, self.held = self.held, into
        try:
            yield
        finally:
            self.held = previous
