"""What the console knows of each user, kept in memory and fed from the output topics.

:class:`ConsoleIndex` is pure: the reader hands it each record it reads (decoded,
with the raw bytes and the Kafka timestamp), and the web pages ask it questions. It
keeps, per user, the newest ``history`` decisions and alerts (deflated,
:mod:`app.console.packed`) and the user's open hold, if any; it forgets a user whose
newest decision is older than the engine's state time to live (the engine has
forgotten them too) and, at once, a user whose erasure receipt arrives.

One lookup inflates at most ``2 x history`` records: its cost does not grow with
the number of users (``rewardstream bench-console`` measures it with a million).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import orjson

from app.console.packed import pack, unpack
from app.console.words import annotate, hold_ended, risk_factors
from app.erasure import receipt_subject

# A fraud hold this close to its deadline is flagged in the queue: unreviewed, it would be
# cancelled at the user's next event.
EXPIRES_SOON_MS = 24 * 3_600_000
# A packed record starts with its id (fixed length: "d-" or "a-" and 32 hex digits), so
# a repeat is found without inflating anything.
ID_LENGTH = 34


@dataclass(frozen=True, slots=True)
class OpenHold:
    """A held reward waiting for a label (or its deadline), as the queue shows it."""

    decision_id: str
    user_id: str
    reward: str
    value: float
    cost: float
    risk: float
    kind: str  # "risk" (an analyst's case) or "pending" (a new account's waiting period)
    ts: int  # the event time of the decision that held it
    deadline_ms: int  # when the engine cancels it (risk) or releases it (pending), at most
    factors: tuple[str, ...]
    explanation: str
    label_sent: str | None = None  # the verdict the console sent and has not seen answered

    def to_document(self, now_ms: int) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "user_id": self.user_id,
            "reward": self.reward,
            "value": self.value,
            "cost": self.cost,
            "risk": self.risk,
            "hold": self.kind,
            "ts": self.ts,
            "age_ms": max(now_ms - self.ts, 0),
            "deadline_ms": self.deadline_ms,
            "left_ms": self.deadline_ms - now_ms,
            "overdue": now_ms >= self.deadline_ms,
            "expires_soon": self.kind == "risk"
            and 0 < self.deadline_ms - now_ms <= EXPIRES_SOON_MS,
            "factors": list(self.factors),
            "explanation": self.explanation,
            "label_sent": self.label_sent,
        }


class _User:
    """One user's records: packed, newest last, each bounded to the index's history."""

    __slots__ = ("alerts", "decisions", "last_ts")

    def __init__(self) -> None:
        self.decisions: list[bytes] = []
        self.alerts: list[bytes] | None = None  # most users never have one
        self.last_ts = 0


class ConsoleIndex:
    """Per user: the newest decisions and alerts, the open hold; erasures applied."""

    def __init__(
        self,
        *,
        history: int,
        hold_for_ms: int,
        pending_ms: int | None,
        ttl_ms: int,
        receipt_key: str,
    ) -> None:
        """``hold_for_ms`` and ``pending_ms`` are the program's ``fraud.hold_for`` and
        ``fraud.new_account_pending``; ``receipt_key`` names users in erasure receipts
        (``REWARDSTREAM_ERASURE_RECEIPT_KEY``, else the app id)."""
        self.history = history
        self.hold_for_ms = hold_for_ms
        self.pending_ms = pending_ms
        self.ttl_ms = ttl_ms
        self.receipt_key = receipt_key
        self.users: dict[str, _User] = {}
        self.holds: dict[str, OpenHold] = {}
        # Erased users by their receipt subject: when the receipt was published. A record
        # published before it is the erased user's, whatever order the topics are read in.
        self.erased: dict[str, int] = {}
        # Each user's receipt subject, by its first 64 bits, worked out once when the user
        # first appears: a receipt then finds its user at once, where hashing every id
        # would hold lookups up for seconds at a million users. (Two users on one key
        # share a tuple.)
        self.by_subject: dict[int, str | tuple[str, ...]] = {}
        self.newest_ts = 0

    def __len__(self) -> int:
        return len(self.users)

    # ------------------------------------------------------------ feeding

    def add_decision(self, raw: bytes, decision: dict[str, Any], published_ms: int) -> bool:
        """Take in one decision record; False if it was a repeat or an erased user's."""
        user_id = str(decision["user_id"])
        user = self._user_for(user_id, published_ms)
        if user is None or _holds_id(user.decisions, str(decision["decision_id"])):
            return False
        packed = _packed(decision["decision_id"], raw)
        user.decisions = _bounded(user.decisions, packed, self.history)
        ts = int(decision["ts"])
        user.last_ts = max(user.last_ts, ts)
        self.newest_ts = max(self.newest_ts, ts)
        self._track_hold(user_id, decision)
        return True

    def add_alert(self, raw: bytes, alert: dict[str, Any], published_ms: int) -> bool:
        """Take in one fraud alert; False if it was a repeat or an erased user's."""
        user = self._user_for(str(alert["user_id"]), published_ms)
        if user is None or _holds_id(user.alerts or [], str(alert["alert_id"])):
            return False
        user.alerts = _bounded(user.alerts or [], _packed(alert["alert_id"], raw), self.history)
        user.last_ts = max(user.last_ts, int(alert["ts"]))
        return True

    def add_receipt(self, receipt: dict[str, Any], published_ms: int) -> list[str]:
        """An erasure receipt: forget the user it names (by its keyed hash) and anything
        of theirs read later but published before it. Returns the user ids forgotten."""
        subject = str(receipt["subject"])
        self.erased[subject] = max(self.erased.get(subject, 0), published_ms)
        found = self.by_subject.get(_subject_key(subject), ())
        candidates = (found,) if isinstance(found, str) else found
        gone = [user_id for user_id in candidates if self._subject(user_id) == subject]
        for user_id in gone:
            self.forget(user_id)
        return gone

    def forget(self, user_id: str) -> None:
        if self.users.pop(user_id, None) is None:
            return
        self.holds.pop(user_id, None)
        key = _subject_key(self._subject(user_id))
        found = self.by_subject.pop(key, ())
        others = tuple(u for u in ((found,) if isinstance(found, str) else found) if u != user_id)
        if others:
            self.by_subject[key] = others[0] if len(others) == 1 else others

    def expire(self) -> int:
        """Forget users whose newest decision is past the engine's state time to live,
        counted back from the newest decision seen; how many went."""
        horizon = self.newest_ts - self.ttl_ms
        stale = [user_id for user_id, user in self.users.items() if user.last_ts < horizon]
        for user_id in stale:
            self.forget(user_id)
        return len(stale)

    # ------------------------------------------------------------ asking

    def user(self, user_id: str) -> dict[str, Any] | None:
        """The user view: decisions and alerts newest first, the open hold; None if the
        index has nothing of the user."""
        user = self.users.get(user_id)
        if user is None:
            return None
        alerts = [orjson.loads(unpack(p[ID_LENGTH:])) for p in reversed(user.alerts or [])]
        for alert in alerts:
            alert["related_users"] = self._not_erased(alert.get("related_users") or [])
        hold = self.holds.get(user_id)
        return {
            "user_id": user_id,
            "decisions": [
                annotate(orjson.loads(unpack(p[ID_LENGTH:]))) for p in reversed(user.decisions)
            ],
            "alerts": alerts,
            "hold": None if hold is None else hold.decision_id,
        }

    def queue(self, now_ms: int, *, kinds: tuple[str, ...] = ("risk", "pending")) -> list[OpenHold]:
        """Open holds of the given kinds, oldest first."""
        found = [hold for hold in self.holds.values() if hold.kind in kinds]
        return sorted(found, key=lambda hold: (hold.ts, hold.decision_id))

    def mark_labelled(self, user_id: str, decision_id: str, verdict: str) -> OpenHold | None:
        """Note that a label for the user's hold ``decision_id`` is on its way, and return
        the hold; None if that hold is not open or a label for it was sent already (an
        analyst's second click, or another analyst's, must not send a second label)."""
        hold = self.holds.get(user_id)
        if hold is None or hold.decision_id != decision_id or hold.label_sent is not None:
            return None
        self.holds[user_id] = replace(hold, label_sent=verdict)
        return hold

    def unmark_labelled(self, user_id: str, decision_id: str) -> None:
        """The label could not be sent: the hold can be labelled again."""
        hold = self.holds.get(user_id)
        if hold is not None and hold.decision_id == decision_id:
            self.holds[user_id] = replace(hold, label_sent=None)

    # ------------------------------------------------------------ inside

    def _user_for(self, user_id: str, published_ms: int) -> _User | None:
        user = self.users.get(user_id)
        if user is not None:
            return user
        subject = self._subject(user_id)
        erased_at = self.erased.get(subject)
        if erased_at is not None and published_ms <= erased_at:
            return None  # the erased user's record, read after the receipt
        key = _subject_key(subject)
        sharing = self.by_subject.get(key)
        if sharing is None:
            self.by_subject[key] = user_id
        else:
            self.by_subject[key] = (*((sharing,) if isinstance(sharing, str) else sharing), user_id)
        user = self.users[user_id] = _User()
        return user

    def _track_hold(self, user_id: str, decision: dict[str, Any]) -> None:
        reasons = [str(r) for r in decision.get("reasons") or []]
        ended = hold_ended(reasons)
        open_hold = self.holds.get(user_id)
        if ended is not None and open_hold is not None and open_hold.decision_id == ended:
            del self.holds[user_id]
        if decision.get("status") == "held":
            self.holds[user_id] = self._hold_of(user_id, decision, reasons)

    def _hold_of(self, user_id: str, decision: dict[str, Any], reasons: list[str]) -> OpenHold:
        kind = str(decision.get("hold") or "risk")
        ts = int(decision["ts"])
        wait_ms = self.pending_ms if kind == "pending" and self.pending_ms else self.hold_for_ms
        return OpenHold(
            decision_id=str(decision["decision_id"]),
            user_id=user_id,
            reward=str(decision.get("action")),
            value=float(decision.get("value") or 0.0),
            cost=float(decision.get("cost") or 0.0),
            risk=float(decision.get("risk") or 0.0),
            kind=kind,
            ts=ts,
            deadline_ms=ts + wait_ms,
            factors=tuple(risk_factors(reasons)),
            explanation=str(decision.get("explanation", "")),
        )

    def _subject(self, user_id: str) -> str:
        return receipt_subject(user_id, self.receipt_key)

    def _not_erased(self, user_ids: list[str]) -> list[str]:
        if not self.erased:
            return user_ids
        return [u for u in user_ids if self._subject(u) not in self.erased]


def _subject_key(subject: str) -> int:
    return int(subject[:16], 16) if len(subject) >= 16 else hash(subject)


def _packed(record_id: object, raw: bytes) -> bytes:
    return str(record_id).encode().ljust(ID_LENGTH)[:ID_LENGTH] + pack(raw)


def _holds_id(packed: list[bytes], record_id: str) -> bool:
    prefix = record_id.encode().ljust(ID_LENGTH)[:ID_LENGTH]
    return any(p.startswith(prefix) for p in packed)


def _bounded(packed: list[bytes], new: bytes, history: int) -> list[bytes]:
    packed.append(new)
    return packed[-history:] if len(packed) > history else packed
