"""The engine's records are frozen: decoded rows are shared between batches
(app.rows.DecodedRows) and a copy made with ``replace`` shares its unchanged fields,
which is only safe if nobody can change a record in place."""

from __future__ import annotations

import msgspec
import pytest
from msgspec.structs import replace

from app.contract.records import Decision, Event, SourcePosition
from app.decisioning.ledger import Ledger
from app.features.state import Grant, KindResponse, PendingOffer, UserState
from app.fraud.assess import Hold, RiskState
from app.fraud.links import LinkFacts, LinkState, Referral, Seen
from app.fraud.signals import Activity

# Everything a stored row decodes to, and the records handed from stage to stage.
RECORDS = (
    UserState,
    KindResponse,
    Grant,
    PendingOffer,
    RiskState,
    Hold,
    Activity,
    LinkState,
    Seen,
    Referral,
    LinkFacts,
    Ledger,
    Event,
    Decision,
    SourcePosition,
)


@pytest.mark.parametrize("record", RECORDS, ids=lambda cls: cls.__name__)
def test_every_record_refuses_changes_in_place(record: type[msgspec.Struct]) -> None:
    assert record.__struct_config__.frozen


def test_a_copy_with_changes_leaves_the_original_as_it_was() -> None:
    state = UserState(events=3, profile={"age": 30})
    copied = replace(state, events=4, repeats=1)
    assert (state.events, state.repeats) == (3, 0)
    assert (copied.events, copied.repeats, copied.profile) == (4, 1, {"age": 30})
    with pytest.raises(AttributeError):
        copied.events = 5  # type: ignore[misc]


def test_an_unknown_field_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="nope"):
        replace(UserState(), nope=1)
