"""The engine's records are frozen: decoded rows are shared between batches
(app.rows.DecodedRows) and a copy made with ``replace`` shares its unchanged fields,
which is only safe if nobody can change a record in place.

They are also left out of the cyclic garbage collector (``gc=False``): a worker keeps
hundreds of thousands of them decoded, and with every one tracked, a full collection
took about 90 ms and the collector 13% of a drain's CPU (measured by hand with
``gc.callbacks``). Records built from values, frozen, can hold no reference cycle.
"""

from __future__ import annotations

import gc

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


@pytest.mark.parametrize("record", RECORDS, ids=lambda cls: cls.__name__)
def test_every_record_is_left_out_of_the_cycle_collector(record: type[msgspec.Struct]) -> None:
    assert record.__struct_config__.gc is False


def test_a_user_state_with_its_history_is_not_tracked() -> None:
    grant = Grant(ts=1, channel="web", cost=1.0, ref="r", reward="points")
    state = UserState(events=3, profile={"age": 30}, grants=(grant,))
    assert not gc.is_tracked(state)
    assert not gc.is_tracked(grant)


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
