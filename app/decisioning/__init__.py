"""From one event and the user's state to one explained decision.

:class:`Engine` is the whole decision core: pure, synchronous, and unaware of
Kafka. The worker's decide stage calls it per event; offline replay and the tests call it
the same way.
"""

from app.decisioning.engine import Answer, Engine, Outcome

__all__ = ["Answer", "Engine", "Outcome"]
