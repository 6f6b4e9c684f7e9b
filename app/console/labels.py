"""The ``fraud_label`` event an analyst's release or confirmation sends.

The console has no path of its own into the engine: a release is the same event an
analyst's tool would send (docs/contract.md, event types), on the ``fraud-labels``
topic that Kafka ACLs keep to the analysts' principals, decided by the worker like
any other. The queue learns the outcome only from the decision that comes back.
"""

from __future__ import annotations

import uuid
from typing import Any

from app.contract import Rejection, validate_event

# The queue's two buttons and the label each sends.
VERDICTS = {"release": "cleared", "confirm": "confirmed"}


class LabelError(ValueError):
    """A label the console refuses to send."""


def label_event(
    *, user_id: str, held_decision_id: str, verdict: str, analyst: str, now_ms: int
) -> dict[str, Any]:
    """The event for ``verdict`` (``cleared`` or ``confirmed``) on ``user_id``'s hold.

    Its ``event_id`` is new each time: the same id twice would be a replayed event to
    the engine (a fraud signal on the user), so a repeat is stopped before it is sent
    (:meth:`app.console.index.ConsoleIndex.mark_labelled`). ``ts`` is the moment of the
    verdict; the held decision's id goes in ``attributes`` for the audit trail.
    """
    if verdict not in VERDICTS.values():
        raise LabelError(f"a label is one of {sorted(VERDICTS.values())}, not {verdict!r}")
    event = {
        "event_id": f"console-{uuid.uuid4().hex}",
        "user_id": user_id,
        "type": "fraud_label",
        "ts": now_ms,
        "attributes": {
            "label": verdict,
            "analyst": analyst[:64] or "console",
            "source": "rewardstream-console",
            "held_decision_id": held_decision_id,
        },
    }
    checked = validate_event(event)
    if isinstance(checked, Rejection):
        raise LabelError(f"the label would not be valid: {checked.error}")
    return event
