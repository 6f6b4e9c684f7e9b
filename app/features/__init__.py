"""Per-user state and its update from one event.

``UserState`` is what the worker keeps per user in a changelog-backed table;
``update(state, event)`` is pure and returns the new state. Serialization is
compact JSON so a changelog record stays small and readable.
"""

from app.features.state import UserState, update

__all__ = ["UserState", "update"]
