"""Erasure (app.erasure): a user forgotten on request leaves no trace in any table, other
users keep theirs, one receipt names the user only by a keyed hash, and the topics and
snapshots are configured so Kafka and the disk let go of what was deleted in time."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from app import erasure as erasure_module
from app import pipeline as pipeline_module
from app.assembly import build_engine
from app.contract.records import SourcePosition
from app.contract.validate import parse_event
from app.erasure import (
    IDENTIFIER_CACHES,
    RECEIPT_KIND,
    EraseOrder,
    KeptIndex,
    KeyBuckets,
    RowIndex,
    bucket_keys,
    link_without,
    notes_without,
    receipt_subject,
)
from app.fraud.links import LinkState, Referral, Seen
from app.fraud.signals import RelatedNote
from app.fraud.view import DROP_STALE_EVERY_MS, LinkView, stored_states
from app.metrics import Metrics
from app.pipeline import (
    Output,
    Pipeline,
    Tables,
    links_by,
    note_given,
    notes_by,
    open_rows,
    read_indexes,
)
from app.rows import expand
from app.settings import Settings
from streams import snapshot
from topologies.rewards import erasure_configs, snapshot_max_age_s, topic_specs


def build_config(settings: Settings) -> Any:
    """The runtime's settings as the reward topology sets them."""
    from topologies.rewards import build

    pipeline = Pipeline(build_engine(settings), Metrics(CollectorRegistry()), max_event_bytes=1)
    return build(settings, pipeline)[1]


NOW = 1_769_860_800_000
DAY_S = 86_400.0
KEY = "a-deployment-secret"
ERASED, OTHER = "u-erased", "u-other"
# What must not survive the erasure: the user's id, a device and an address only they used.
ERASED_TRACES = (b"u-erased", b"dev-erased-only", b"203.0.113.7")


def _event(user: str, type_: str, n: int, **fields: Any) -> bytes:
    return orjson.dumps(
        {"event_id": f"{user}-{n}", "user_id": user, "type": type_, "ts": NOW + n * 1_000, **fields}
    )


def _pipeline() -> Pipeline:
    return Pipeline(
        build_engine(Settings()),
        Metrics(CollectorRegistry()),
        max_event_bytes=65_536,
        receipt_key=KEY,
    )


def _handle(pipeline: Pipeline, tables: Tables, value: bytes, n: int) -> list[Output]:
    return pipeline.handle(tables, SourcePosition("events", 0, n), value)


def _stored(tables: Tables) -> list[bytes]:
    """Every key and (expanded) value of every table."""
    found = []
    for name in ("users", "ledgers", "links", "shadow_users", "shadow_ledgers", "timers"):
        for key, value in getattr(tables, name).items():
            found.append(key)
            if value and name != "timers":  # a timer is all key (app.timers)
                found.append(expand(value))
    return found


def _traces(tables: Tables, needles: tuple[bytes, ...]) -> set[bytes]:
    stored = _stored(tables)
    return {needle for needle in needles if any(needle in blob for blob in stored)}


@pytest.fixture
def world() -> tuple[Pipeline, Tables]:
    """Two users who met on a shared device; the erased one also used a device and an
    address of their own, was referred by the other, and raised an alert that named the
    other (the other holds its note)."""
    pipeline, tables = _pipeline(), Tables(users={}, ledgers={})
    lines = [
        _event(OTHER, "signup", 1, device_id="dev-shared", ip="198.51.100.9"),
        _event(OTHER, "referral", 2, attributes={"referred_user_id": ERASED}),
        _event(ERASED, "signup", 3, device_id="dev-shared", ip="203.0.113.7"),
        _event(ERASED, "page_view", 4, device_id="dev-erased-only", ip="203.0.113.7"),
        _event(ERASED, "purchase", 5, amount=40.0, currency="EUR", device_id="dev-erased-only"),
    ]
    for n, line in enumerate(lines):
        _handle(pipeline, tables, line, n)
    note = RelatedNote("alert-1", ERASED, NOW + 6_000).to_json()
    pipeline.related(tables, OTHER.encode(), note, SourcePosition("rekeyed", 0, 99))
    pipeline.flush(tables)
    assert _traces(tables, ERASED_TRACES) == set(ERASED_TRACES)  # the world names them
    return pipeline, tables


def _request(n: int) -> bytes:
    # A request's id is kept as it is in the receipt: it must not be made of the user id.
    event = {"event_id": f"req-{n}", "user_id": ERASED, "type": "erasure_requested"}
    return orjson.dumps({**event, "ts": NOW + n * 1_000})


def _erase(pipeline: Pipeline, tables: Tables, n: int = 50) -> list[Output]:
    return _handle(pipeline, tables, _request(n), n)


def test_an_erased_user_leaves_no_trace_in_any_table(world: tuple[Pipeline, Tables]) -> None:
    pipeline, tables = world
    assert ERASED.encode() in tables.decoded["users"].values  # kept decoded for reuse
    _erase(pipeline, tables)
    assert _traces(tables, ERASED_TRACES) == set()
    assert ERASED.encode() not in tables.users
    assert ERASED.encode() not in tables.decoded["users"].values  # nor in memory


def test_no_identifier_kept_in_memory_names_an_erased_user(
    world: tuple[Pipeline, Tables],
) -> None:
    """The decide stage keeps the ids of the last events' decisions, each worked out from
    a user id, and the keys of devices and networks and the addresses it met lately: the
    request empties them all."""
    pipeline, tables = world
    assert all(cache.cache_info().currsize > 0 for cache in IDENTIFIER_CACHES)  # the world's
    _erase(pipeline, tables)
    assert [cache.cache_info().currsize for cache in IDENTIFIER_CACHES] == [0, 0, 0, 0]


@pytest.mark.parametrize("stage", ["links", "rekeyed"])
def test_an_erase_order_empties_the_caches_of_the_worker_that_reads_it(
    world: tuple[Pipeline, Tables], stage: str
) -> None:
    """Another worker met the user's device and address through the link copies (the
    link stage) or named the user in a note: the erase order it reads empties its
    caches too."""
    pipeline, tables = world
    assert all(cache.cache_info().currsize > 0 for cache in IDENTIFIER_CACHES)
    order = EraseOrder(ERASED, "req-1", NOW).to_json()
    read = pipeline.erase_links if stage == "links" else pipeline.erase_notes
    read(tables, order, SourcePosition(stage, 0, 7))
    assert [cache.cache_info().currsize for cache in IDENTIFIER_CACHES] == [0, 0, 0, 0]


def test_the_other_users_keep_their_own_data(world: tuple[Pipeline, Tables]) -> None:
    pipeline, tables = world
    _erase(pipeline, tables)
    assert _traces(tables, (b"u-other", b"dev-shared", b"198.51.100.9")) == {
        b"u-other",
        b"dev-shared",
        b"198.51.100.9",
    }
    other = open_rows(tables, "users").get(OTHER.encode())
    assert other.events == 2
    assert other.risk.related == ()  # the erased user's note went; the row stays
    shared = LinkState.from_bytes(tables.links[b"device:dev-shared"])
    assert [seen.user_id for seen in shared.accounts] == [OTHER]


def test_one_receipt_names_the_user_by_a_keyed_hash_only(world: tuple[Pipeline, Tables]) -> None:
    pipeline, tables = world
    published = _erase(pipeline, tables)
    assert [output.role for output in published] == ["erasures"]
    receipt = orjson.loads(published[0].value)
    assert receipt["kind"] == RECEIPT_KIND
    assert receipt["request_id"] == "req-50"
    assert receipt["subject"] == receipt_subject(ERASED, KEY)
    assert published[0].key == receipt_subject(ERASED, KEY).encode()
    assert receipt["removed"]["user_state"] is True
    assert receipt["ordered"] == {"links": 4, "rekeyed": 4}
    assert ERASED.encode() not in published[0].value
    assert receipt_subject(ERASED, "another-key") != receipt["subject"]


def test_the_worker_sends_an_erase_order_to_every_internal_partition(
    world: tuple[Pipeline, Tables],
) -> None:
    pipeline, tables = world
    view = LinkView(lambda key: LinkState())
    request = _event(ERASED, "erasure_requested", 50)
    outputs = pipeline.decide(tables, 0, SourcePosition("erasure-requests", 0, 7), request, view)
    orders = [(o.role, o.partition) for o in outputs if o.role in ("links", "rekeyed")]
    assert sorted(orders) == sorted((role, p) for role in ("links", "rekeyed") for p in range(4))
    # The key of an order names nobody: it stays in the topic until the bound.
    assert all(ERASED.encode() not in (o.key or b"") for o in outputs)


def test_a_second_request_finds_nothing_and_still_gets_its_receipt(
    world: tuple[Pipeline, Tables],
) -> None:
    pipeline, tables = world
    _erase(pipeline, tables, 50)
    again = _erase(pipeline, tables, 51)
    receipt = orjson.loads(again[0].value)
    assert receipt["request_id"] == "req-51"
    assert receipt["removed"]["user_state"] is False


def test_after_the_erasure_the_user_is_decided_as_new(world: tuple[Pipeline, Tables]) -> None:
    pipeline, tables = world
    _erase(pipeline, tables)
    (decision, *_) = _handle(pipeline, tables, _event(ERASED, "page_view", 60), 60)
    assert decision.role == "decisions"
    user = open_rows(tables, "users").get(ERASED.encode())
    assert (user.events, user.purchases, user.first_ts) == (1, 0, NOW + 60_000)


@pytest.mark.parametrize(
    ("role", "type_", "allowed"),
    [
        ("erasure-requests", "erasure_requested", True),
        ("events", "erasure_requested", False),
        ("fraud-labels", "erasure_requested", False),
        ("erasure-requests", "page_view", False),
    ],
)
def test_only_the_erasure_topic_may_ask_for_an_erasure(
    world: tuple[Pipeline, Tables], role: str, type_: str, allowed: bool
) -> None:
    pipeline, tables = world
    view = LinkView(lambda key: LinkState())
    outputs = pipeline.decide(
        tables, 0, SourcePosition(role, 0, 1), _event(ERASED, type_, 70), view, role=role
    )
    pipeline.flush(tables)
    roles = {output.role for output in outputs}
    if allowed:
        assert "erasures" in roles
        assert ERASED.encode() not in tables.users
    else:
        assert roles == {"dead-letter"}
        assert orjson.loads(outputs[0].value)["reason"] == "unauthorized"
        assert ERASED.encode() in tables.users


def test_an_erasure_request_may_not_carry_a_device_or_an_address() -> None:
    for extra in ({"device_id": "d-1"}, {"ip": "10.0.0.1"}):
        parsed = parse_event(_event(ERASED, "erasure_requested", 1, **extra), max_bytes=65_536)
        assert not hasattr(parsed, "user_id")


def test_the_view_forgets_the_user_it_laid_over_itself() -> None:
    clock = [NOW]
    view = LinkView(lambda key: LinkState(), now_ms=lambda: clock[0])
    for n, user in enumerate((ERASED, OTHER)):
        parsed = parse_event(_event(user, "page_view", n, device_id="dev-shared"), max_bytes=65_536)
        view.decided(parsed)  # type: ignore[arg-type]
    assert view.forget(ERASED) == 1
    laid = [event.user_id for recent in view.overlay.values() for _, event in recent]
    assert laid == [OTHER]
    assert view.forget(ERASED) == 0


def test_the_views_decoded_copy_of_a_rewritten_row_leaves_memory() -> None:
    """Every worker's view keeps decoded rows; one rewritten by an erase order (the new
    row arrives through the changelog) must not stay decoded until read again."""
    before = LinkState(accounts=(Seen(ERASED, 1, 2, ip="203.0.113.7"), Seen(OTHER, 1, 3)))
    rows: dict[bytes, bytes | None] = {b"device:d": before.to_bytes(), b"device:e": None}
    clock = [NOW]
    states = stored_states(rows)
    view = LinkView(states, now_ms=lambda: clock[0])
    assert states(b"device:d") == before
    states(b"device:e")
    rows[b"device:d"] = link_without(before, ERASED).to_bytes()  # the changelog's new value
    clock[0] += DROP_STALE_EVERY_MS
    view.prune()
    remembered = [state for _, state in states.values.values()]
    assert all(ERASED not in (seen.user_id for seen in s.accounts) for s in remembered)
    assert set(states.values) == {b"device:e"}  # an unchanged row stays decoded
    assert [seen.user_id for seen in states(b"device:d").accounts] == [OTHER]


def test_link_without_removes_accounts_and_referrals_either_way() -> None:
    state = LinkState(
        accounts=(Seen(ERASED, 1, 2, ip="203.0.113.7"), Seen(OTHER, 1, 3)),
        referrals=(Referral(ERASED, OTHER, 4), Referral(OTHER, ERASED, 5), Referral("x", "y", 6)),
    )
    cleaned = link_without(state, ERASED)
    assert [seen.user_id for seen in cleaned.accounts] == [OTHER]
    assert cleaned.referrals == (Referral("x", "y", 6),)
    assert link_without(cleaned, ERASED) is cleaned


def test_notes_without_keeps_other_alerts_notes(world: tuple[Pipeline, Tables]) -> None:
    _, tables = world
    other = open_rows(tables, "users").get(OTHER.encode())
    assert [note.by for note in other.risk.related] == [ERASED]
    assert notes_without(other, ERASED).risk.related == ()
    assert notes_without(other, "someone-else") is other


def _notes_of(tables: Tables, holder: str) -> list[str]:
    """Whose alerts the notes ``holder``'s row holds name."""
    return [note.by for note in open_rows(tables, "users").get(holder.encode()).risk.related]


def test_a_note_given_after_the_first_erasure_looked_is_found_by_the_next(
    world: tuple[Pipeline, Tables],
) -> None:
    """Erasures find notes through the keys of the rows that hold them, gathered when the
    first erasure looks: a note given after that must join them."""
    pipeline, tables = world
    nobody = {"event_id": "req-0", "user_id": "u-nobody", "type": "erasure_requested"}
    _handle(pipeline, tables, orjson.dumps({**nobody, "ts": NOW + 40_000}), 40)
    assert _notes_of(tables, OTHER) == [ERASED]  # that erasure was of somebody else
    third = "u-third"
    _handle(pipeline, tables, _event(third, "signup", 41), 41)
    note = RelatedNote("alert-2", ERASED, NOW + 42_000).to_json()
    pipeline.related(tables, third.encode(), note, SourcePosition("rekeyed", 0, 100))
    pipeline.flush(tables)
    assert _notes_of(tables, third) == [ERASED]
    _erase(pipeline, tables)
    assert _notes_of(tables, third) == []
    assert _notes_of(tables, OTHER) == []
    assert _traces(tables, ERASED_TRACES) == set()


def test_the_first_erasure_finds_a_note_its_batch_gave_and_did_not_write_yet() -> None:
    pipeline, tables = _pipeline(), Tables(users={}, ledgers={})
    _handle(pipeline, tables, _event(OTHER, "signup", 1), 1)
    del tables.memo["notes-by"]  # no index yet, as after an assignment
    note = RelatedNote("alert-1", ERASED, NOW + 2_000).to_json()
    pipeline.related(tables, OTHER.encode(), note, SourcePosition("rekeyed", 0, 2))
    stored = tables.users[OTHER.encode()]
    assert stored is not None
    assert ERASED.encode() not in expand(stored)  # the note is in the batch's rows only
    pipeline.handle(tables, SourcePosition("erasure-requests", 0, 3), _request(3))
    assert _notes_of(tables, OTHER) == []


def test_an_index_of_notes_grown_full_is_read_anew_from_the_rows(
    world: tuple[Pipeline, Tables], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Notes go at their holder's next event but stay in the index until their author is
    erased: an index that grew to twice what it was read with is read anew from the rows
    as they are, and serves erase orders until its replacement is whole."""
    monkeypatch.setattr(erasure_module, "NOTES_KEPT_AT_LEAST", 2)
    _, tables = world
    del tables.memo["notes-by"]  # read by the world's flushes, under the default bound
    index = notes_by(tables, now_s=0.0, max_age_s=DAY_S)
    assert index.rows_naming(ERASED) == [OTHER.encode()]
    for n in range(2):  # three entries are past twice the one it was read with
        note_given(tables, f"u-alerting-{n}", f"u-holder-{n}".encode())
    assert not index.usable(1.0)
    assert notes_by(tables, now_s=1.0, max_age_s=DAY_S) is index  # still the one in use
    read_indexes(tables, now_s=1.0, max_age_s=DAY_S)
    again = notes_by(tables, now_s=1.0, max_age_s=DAY_S)
    assert again is not index
    assert again.rows_naming(ERASED) == [OTHER.encode()]  # what the rows hold
    assert again.entries == 1


def test_an_index_is_read_anew_once_past_its_age(world: tuple[Pipeline, Tables]) -> None:
    _, tables = world
    del tables.memo["notes-by"], tables.memo["links-by"]  # read by the world's flushes
    notes = notes_by(tables, now_s=0.0, max_age_s=DAY_S)
    links = links_by(tables, now_s=0.0, max_age_s=DAY_S)
    read_indexes(tables, now_s=DAY_S - 1, max_age_s=DAY_S)
    assert notes_by(tables, now_s=DAY_S - 1, max_age_s=DAY_S) is notes
    assert links_by(tables, now_s=DAY_S - 1, max_age_s=DAY_S) is links
    read_indexes(tables, now_s=DAY_S, max_age_s=DAY_S)
    assert notes_by(tables, now_s=DAY_S, max_age_s=DAY_S) is not notes
    assert links_by(tables, now_s=DAY_S, max_age_s=DAY_S) is not links


class SteppedClock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.s = 1_000.0

    def now_ms(self) -> int:
        return NOW + int(self.s * 1000)

    def monotonic_s(self) -> float:
        return self.s


def test_an_erased_users_device_leaves_the_link_index_within_a_quarter_of_the_bound() -> None:
    """The link index lists row keys, a device's among them; the key of a row an erasure
    deleted may stay listed in other users' buckets until the index is read anew, which
    the first flush after a quarter of the erasure bound begins."""
    clock = SteppedClock()
    pipeline = Pipeline(
        build_engine(Settings()),
        Metrics(CollectorRegistry(), clock=clock),
        max_event_bytes=65_536,
        receipt_key=KEY,
        erasure_bound_ms=4 * 3_600_000,
    )
    tables = Tables(users={}, ledgers={})
    lines = [
        _event(ERASED, "signup", 1, device_id="dev-erased-only"),
        _event(OTHER, "signup", 2, device_id="dev-other"),
    ]
    for n, line in enumerate(lines):
        _handle(pipeline, tables, line, n)
    _erase(pipeline, tables)
    assert b"device:dev-erased-only" not in tables.links
    index = tables.memo["links-by"].current
    assert b"device:dev-erased-only" in _listed(index)  # the deleted row's key, still listed
    clock.s += 3_600 - 1
    _handle(pipeline, tables, _event(OTHER, "page_view", 3, device_id="dev-other"), 60)
    assert tables.memo["links-by"].current is index
    clock.s += 1
    _handle(pipeline, tables, _event(OTHER, "page_view", 4, device_id="dev-other"), 61)
    anew = tables.memo["links-by"].current
    assert anew is not index
    assert b"device:dev-erased-only" not in _listed(anew)
    assert b"device:dev-other" in _listed(anew)


def _listed(index: Any) -> set[bytes]:
    """Every row key a link index lists."""
    return {key for bucket in index.listed.buckets.values() for key in bucket_keys(bucket)}


def _in_use(kept: KeptIndex[Any]) -> RowIndex | None:
    """The index ``kept`` serves erase orders from now. (A call, so that the type checker
    does not take ``kept.current`` to stay None once an assert found it so: handling
    records changes it.)"""
    return kept.current


def test_indexes_are_read_a_slice_at_each_flush_and_an_erasure_reads_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Made in the background, an index stalls no batch; an erase order that finds one
    half read reads the rest before it looks, so it misses nothing."""
    monkeypatch.setattr(pipeline_module, "INDEX_ROWS_PER_FLUSH", 2)
    pipeline, tables = _pipeline(), Tables(users={}, ledgers={})
    for n in range(6):
        line = _event(f"u-{n}", "signup", n, device_id=f"dev-{n}")
        pipeline.handle(tables, SourcePosition("events", 0, n), line, flush=False)
    pipeline.flush(tables)  # six user rows and six device rows, two of each read
    kept = tables.memo["links-by"]
    assert _in_use(kept) is None  # nothing to serve yet
    links = kept.replacing
    assert len(links.unread) == 4
    pipeline.flush(tables)
    assert len(links.unread) == 2
    pipeline.handle(
        tables,
        SourcePosition("erasure-requests", 0, 9),
        orjson.dumps(
            {"event_id": "req-9", "user_id": "u-0", "type": "erasure_requested", "ts": NOW + 9_000}
        ),
    )
    assert b"device:dev-0" not in tables.links
    assert kept.current is links  # the erase order read the rest
    assert links.unread is None


def _erase_nobody(pipeline: Pipeline, tables: Tables, n: int = 40) -> None:
    """An erasure of a user nobody knows: it makes the indexes the next one reads."""
    nobody = {"event_id": f"req-{n}", "user_id": "u-nobody", "type": "erasure_requested"}
    _handle(pipeline, tables, orjson.dumps({**nobody, "ts": NOW + n * 1_000}), n)


def test_link_rows_that_name_the_user_after_the_first_erasure_looked_are_found_by_the_next(
    world: tuple[Pipeline, Tables],
) -> None:
    """Erasures find link rows through an index made when the first erasure looks: a
    device the user is first seen on later, and a referral of the user sent later from
    another user's device, must join it."""
    pipeline, tables = world
    _erase_nobody(pipeline, tables)
    assert _traces(tables, ERASED_TRACES) == set(ERASED_TRACES)
    later = _event(ERASED, "page_view", 41, device_id="dev-erased-later", ip="203.0.113.7")
    _handle(pipeline, tables, later, 41)
    referral = _event(
        "u-third", "referral", 42, device_id="dev-third", attributes={"referred_user_id": ERASED}
    )
    _handle(pipeline, tables, referral, 42)
    third = LinkState.from_bytes(tables.links[b"device:dev-third"])
    assert [r.referred for r in third.referrals] == [ERASED]
    _erase(pipeline, tables)
    assert _traces(tables, (*ERASED_TRACES, b"dev-erased-later")) == set()
    third = LinkState.from_bytes(tables.links[b"device:dev-third"])
    assert third.referrals == ()
    assert [seen.user_id for seen in third.accounts] == ["u-third"]


def test_the_first_erasure_finds_a_link_row_its_batch_changed_and_did_not_write_yet() -> None:
    pipeline, tables = _pipeline(), Tables(users={}, ledgers={})
    _handle(pipeline, tables, _event(OTHER, "signup", 1, device_id="dev-shared"), 1)
    del tables.memo["links-by"]  # no index yet, as after an assignment
    passed = orjson.dumps(
        {
            "event_id": "e-2",
            "user_id": ERASED,
            "type": "page_view",
            "ts": NOW + 2_000,
            "device_id": "dev-shared",
        }
    )
    pipeline.link(tables, b"device:dev-shared", passed, SourcePosition("links", 0, 2))
    stored = tables.links[b"device:dev-shared"]
    assert stored is not None
    assert ERASED.encode() not in expand(stored)  # passed in the batch's rows only
    pipeline.handle(tables, SourcePosition("erasure-requests", 0, 3), _request(3))
    shared = LinkState.from_bytes(tables.links[b"device:dev-shared"])
    assert [seen.user_id for seen in shared.accounts] == [OTHER]


def test_an_erasure_leaves_the_users_who_share_its_bucket_alone(
    world: tuple[Pipeline, Tables], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link index hashes users into buckets; with one bucket for everybody, the rows
    of every user are read and only the erased user's traces go."""
    monkeypatch.setattr(erasure_module, "BUCKETS_AT_LEAST", 1)
    pipeline, tables = world
    del tables.memo["links-by"]  # made by the world's flushes, with more buckets
    assert links_by(tables, now_s=0.0, max_age_s=DAY_S).listed.mask == 0
    _erase(pipeline, tables)
    assert _traces(tables, ERASED_TRACES) == set()
    assert _traces(tables, (b"u-other", b"dev-shared", b"198.51.100.9")) == {
        b"u-other",
        b"dev-shared",
        b"198.51.100.9",
    }


def test_a_name_given_while_an_index_is_read_anew_is_in_the_new_one(
    world: tuple[Pipeline, Tables], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row that gains a name while the replacement of an index is being read (a row it
    has read already, or one it never will: a new device) is in the replacement when it
    takes over."""
    monkeypatch.setattr(pipeline_module, "INDEX_ROWS_PER_FLUSH", 1)
    pipeline, tables = world
    kept = tables.memo["links-by"]
    due_s = kept.current.until_s  # past its age from then on: read anew, a row a flush
    read_indexes(tables, now_s=due_s, max_age_s=DAY_S)
    assert kept.replacing is not None
    later = _event(ERASED, "page_view", 41, device_id="dev-erased-later")
    pipeline.handle(tables, SourcePosition("events", 0, 41), later, flush=False)
    while kept.replacing is not None:
        read_indexes(tables, now_s=due_s, max_age_s=DAY_S)
    pipeline.flush(tables)
    _erase(pipeline, tables)
    assert _traces(tables, (*ERASED_TRACES, b"dev-erased-later")) == set()


def test_a_link_index_grown_full_is_read_anew_from_the_rows(
    world: tuple[Pipeline, Tables], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(erasure_module, "LINKS_KEPT_AT_LEAST", 1)
    pipeline, tables = world
    del tables.memo["links-by"]  # read by the world's flushes, under the default bound
    _erase_nobody(pipeline, tables)
    kept = tables.memo["links-by"]
    index = kept.current
    made_with = index.entries
    for n in range(made_with + 2):  # new accounts on a new device: past twice as many
        seen = _event(f"u-new-{n}", "page_view", 60 + n, device_id="dev-busy")
        _handle(pipeline, tables, seen, 60 + n)
    again = kept.current  # read anew, from the rows, at the flush that found it full
    assert again is not index
    assert again.rows_naming(ERASED)
    assert b"device:dev-busy" in again.rows_naming("u-new-0")


def test_a_deleted_row_reads_as_new_until_written_again() -> None:
    table: dict[bytes, bytes | None] = {}
    pipeline, tables = _pipeline(), Tables(users=table, ledgers={})
    _handle(pipeline, tables, _event(ERASED, "page_view", 1), 1)
    rows = open_rows(tables, "users")
    assert rows.delete(ERASED.encode()) is True
    assert rows.get(ERASED.encode()).events == 0
    assert rows.delete(ERASED.encode()) is False  # already gone in this batch
    pipeline.flush(tables)
    assert ERASED.encode() not in table
    _handle(pipeline, tables, _event(ERASED, "page_view", 2), 2)
    assert ERASED.encode() in table


def test_an_event_sent_before_the_request_but_read_after_it_is_not_decided() -> None:
    """The request's topic had a shorter backlog than the events': the user's older event
    must not bring the user back; an event sent after the request is a new user's."""
    pipeline, tables = _pipeline(), Tables(users={}, ledgers={})
    view = LinkView(lambda key: LinkState())

    def read(value: bytes, topic: str, produced_ms: int, offset: int) -> list[Output]:
        source = SourcePosition(topic, 0, offset, ERASED.encode(), produced_ms)
        outputs = pipeline.decide(tables, 0, source, value, view, role=topic)
        pipeline.flush(tables)
        return outputs

    read(_event(ERASED, "signup", 1, device_id="dev-erased-only"), "events", 1_000, 0)
    read(_request(2), "erasure-requests", 5_000, 0)
    late = read(_event(ERASED, "purchase", 3, amount=9.5, currency="EUR"), "events", 4_000, 1)
    assert [output.role for output in late] == ["dead-letter"]
    letter = orjson.loads(late[0].value)
    assert letter["reason"] == "erased"
    assert (letter["event_id"], letter["source"]["key_base64"], letter["payload_bytes"]) == (
        None,
        None,
        0,
    )
    assert ERASED.encode() not in tables.users
    after = read(_event(ERASED, "page_view", 4), "events", 6_000, 2)
    assert after[0].role == "decisions"
    assert open_rows(tables, "users").get(ERASED.encode()).events == 1
    # The mark names the user only by the keyed hash, and goes after the bound.
    (mark_key,) = tables.erased
    assert mark_key == receipt_subject(ERASED, KEY).encode()
    mark = tables.erased[mark_key]
    assert mark is not None
    assert ERASED.encode() not in mark
    bound = pipeline.erasure_bound_ms
    assert not pipeline.stale("erased", tables.erased[mark_key], 5_000 + bound)
    assert pipeline.stale("erased", tables.erased[mark_key], 5_001 + bound)


# ---------------------------------------------------------------- how long Kafka keeps it

BOUND_S = 86_400


def _ms(configs: dict[str, str], name: str) -> int:
    return int(configs[name])


def test_every_topic_lets_go_of_a_record_within_the_bound() -> None:
    bound_ms = BOUND_S * 1000
    settings = Settings(erasure_bound_s=BOUND_S)
    roll_ms = build_config(settings).changelog_roll_s * 1000
    for spec in topic_specs(settings):
        configs = spec.configs
        segment = _ms(configs, "segment.ms")
        if spec.role == "erasures":
            assert configs["retention.ms"] == "-1"  # receipts: the proof, naming nobody
        elif spec.compacted:
            closed = segment + roll_ms  # the next append after segment.ms: the roll's
            cleaned = closed + _ms(configs, "max.compaction.lag.ms")
            next_cleaning = segment + roll_ms + _ms(configs, "max.compaction.lag.ms")
            tombstone_gone = cleaned + _ms(configs, "delete.retention.ms") + next_cleaning
            assert tombstone_gone <= bound_ms, spec.name
        else:
            assert segment + _ms(configs, "retention.ms") < bound_ms, spec.name


def test_a_snapshot_is_trusted_only_while_the_changelog_still_holds_its_deletes() -> None:
    delete_retention_s = _ms(erasure_configs(BOUND_S * 1000, compacted=True), "delete.retention.ms")
    assert snapshot_max_age_s(BOUND_S) * 1000 <= delete_retention_s


def test_snapshots_past_their_age_are_deleted(tmp_path: Path) -> None:
    old, fresh = tmp_path / "t-0.snapshot", tmp_path / "t-1.snapshot"
    for path in (old, fresh):
        path.write_bytes(b"rows")
    now = time.time()
    os.utime(old, (now - 100, now - 100))
    assert snapshot.prune(tmp_path, max_age_s=60, now_s=now) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t-1.snapshot"]


def test_key_buckets_list_each_key_once_however_keys_end() -> None:
    """Entries are read back from a bucket's end by their lengths: a key that ends
    another key, or ends in what reads as a length, is still its own entry, and only the
    bucket's last entry is not listed twice in a row."""
    listed = KeyBuckets(rows=0)
    listed.mask = 0  # one bucket: every name lands in it
    tricky = [b"device:abc", b"abc", b"x\x00\x03abc", b"", b"abc", b"device:abc"]
    added = [listed.add(f"user-{n}", key) for n, key in enumerate(tricky)]
    assert added == [True] * 6
    assert listed.add("user-9", b"device:abc") is False  # its bucket's last entry already
    assert listed.keys("anyone") == [b"device:abc", b"abc", b"", b"x\x00\x03abc"]
    assert bucket_keys(bytearray()) == []


def test_key_buckets_keep_users_apart_and_size_by_rows() -> None:
    listed = KeyBuckets(rows=1_000_000)
    assert listed.mask + 1 >= 1_000_000 // erasure_module.ROWS_PER_BUCKET
    listed.add("u-1", b"device:d1")
    listed.add("u-1", b"net:n1")
    assert set(listed.keys("u-1")) == {b"device:d1", b"net:n1"}
    others = [
        f"u-{n}" for n in range(2, 200) if hash(f"u-{n}") & listed.mask != hash("u-1") & listed.mask
    ]
    assert others
    assert all(listed.keys(name) == [] for name in others)
