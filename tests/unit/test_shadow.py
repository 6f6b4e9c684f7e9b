"""A shadow program beside the live one (app.shadow): the live decisions do not change,
the shadow grants nothing, spends nothing, learns only from what users saw, and its
log can be valued on the live answers (`rewardstream evaluate --shadow`)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
import pytest
from prometheus_client import CollectorRegistry

from app import cli
from app.assembly import load_program_setting
from app.contract.records import SourcePosition, decision_id_for
from app.contract.schemas import load_schema
from app.decisioning.engine import Engine
from app.evaluation import Valued
from app.evaluation.offline import evaluate_events, shadow_choices
from app.features import UserState
from app.metrics import Metrics
from app.pipeline import Pipeline, Tables
from app.programs import Program
from app.replay import replay
from app.settings import Settings
from app.shadow import SHADOW_KIND, Shadow
from harness.challenger import write_challenger
from harness.simulation.logged import LoggedRun, logged_closed_loop

SEED = 7
check_decision = fastjsonschema.compile(load_schema("decision"))


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="module")
def live(settings: Settings) -> Program:
    return load_program_setting(settings.program)


def _logged(settings: Settings, program: Program) -> LoggedRun:
    """A closed loop's log: 3,000 events of 300 simulated users over 3 days, with the
    answers the simulated users gave to what ``program`` granted."""
    return logged_closed_loop(
        program,
        events=3_000,
        users=300,
        seed=SEED,
        days=3,
        partitions=settings.partitions,
        max_event_bytes=settings.max_event_bytes,
        state_ttl_ms=settings.state_ttl_ms,
    )


@pytest.fixture(scope="module")
def run(settings: Settings, live: Program) -> LoggedRun:
    """The live program's log (:func:`_logged`)."""
    return _logged(settings, live)


@pytest.fixture(scope="module")
def challenger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The live program under another id, choosing by softmax."""
    return write_challenger("retail-loyalty", tmp_path_factory.mktemp("programs"))


def _engine(program: Program, settings: Settings) -> Engine:
    return Engine(program, seed=SEED, partitions=settings.partitions)


def _replay(
    settings: Settings, lines: list[bytes], live: Engine, shadow: Engine | None
) -> list[bytes]:
    return list(
        replay(
            live,
            lines,
            source_name="events",
            max_event_bytes=settings.max_event_bytes,
            state_ttl_ms=settings.state_ttl_ms,
            shadow=shadow,
        )
    )


def _split(records: list[bytes]) -> tuple[list[bytes], list[dict[str, Any]]]:
    live, shadow = [], []
    for record in records:
        document = orjson.loads(record)
        (shadow.append(document) if document["kind"] == SHADOW_KIND else live.append(record))
    return live, shadow


def _same_id(program: Program) -> Program:
    return dataclasses.replace(program, id=f"{program.id}-again")


def test_the_live_records_are_byte_for_byte_what_they_are_without_a_shadow(
    settings: Settings, live: Program, run: LoggedRun, challenger: Path
) -> None:
    alone = _replay(settings, run.lines, _engine(live, settings), None)
    shadow_engine = _engine(load_program_setting(str(challenger)), settings)
    beside, shadow = _split(_replay(settings, run.lines, _engine(live, settings), shadow_engine))
    assert beside == alone
    assert shadow, "the shadow decided nothing"
    live_ids = {orjson.loads(r).get("decision_id") for r in alone}
    for decision in shadow:
        check_decision(decision)
        assert decision["program"] == "retail-loyalty-challenger"
        assert decision["decision_id"] not in live_ids
        assert decision["decision_id"] == decision_id_for(
            "retail-loyalty-challenger", str(decision["user_id"]), str(decision["event_id"])
        )
    # Every trigger event the live program decided, the shadow decided too.
    triggers = {
        orjson.loads(r)["event_id"]
        for r in alone
        if orjson.loads(r).get("kind") == "decision"
        and not orjson.loads(r)["reasons"][0].startswith(("trigger.", "outcome."))
    }
    assert triggers <= {d["event_id"] for d in shadow}


def test_a_shadow_of_the_same_program_chooses_as_the_live_one_but_for_its_own_draws(
    settings: Settings, live: Program, run: LoggedRun
) -> None:
    """Same gates, scores and state until one of them explores (the draws are fixed by
    each decision's own id): the first choice that differs is an exploration; after it,
    their states and models part ways, as two programs' would."""
    live_engine, shadow_engine = _engine(live, settings), _engine(_same_id(live), settings)
    records, shadow = _split(_replay(settings, run.lines, live_engine, shadow_engine))
    live_by_event = {
        d["event_id"]: d for d in map(orjson.loads, records) if d.get("kind") == "decision"
    }
    differing = [
        (live_by_event[d["event_id"]], d)
        for d in shadow
        if live_by_event[d["event_id"]]["action"] != d["action"]
    ]
    assert differing, "no exploration in 3,000 events: the test says nothing"
    first_live, first_shadow = differing[0]
    assert "policy.explore" in (*first_live["reasons"], *first_shadow["reasons"])
    assert len(differing) < 0.2 * len(shadow)
    # It learned from the answers to the rewards both granted, and from nothing else.
    assert (
        0.8 * live_engine.models.updates
        <= shadow_engine.models.updates
        <= live_engine.models.updates
    )


def test_a_shadow_learns_only_from_answers_to_rewards_the_users_saw(
    settings: Settings, live: Program, run: LoggedRun
) -> None:
    """A uniform shadow grants other rewards than the live program most of the time:
    its offers the users never saw must teach it nothing, neither an answer nor a
    silence. Every offer left open in its state that may learn is one the live program
    granted too, at the same event."""
    uniform = dataclasses.replace(
        _same_id(live), learning=dataclasses.replace(live.learning, exploration="uniform")
    )
    shadow_engine = _engine(uniform, settings)
    pipeline = Pipeline(
        _engine(live, settings),
        Metrics(CollectorRegistry()),
        max_event_bytes=settings.max_event_bytes,
        shadow=shadow_engine,
    )
    tables = Tables(users={}, ledgers={})
    live_grants, shadow_grants = set(), {}
    for number, line in enumerate(run.lines):
        for output in pipeline.handle(tables, SourcePosition("events", 0, number), line):
            document = orjson.loads(output.value)
            if document.get("status") != "granted":
                continue
            if output.role == "decisions":
                live_grants.add((document["event_id"], document["action"]))
            elif output.role == "shadow-decisions":
                shadow_grants[document["decision_id"]] = (document["event_id"], document["action"])
    seen = {d for d, grant in shadow_grants.items() if grant in live_grants}
    assert len(shadow_grants) - len(seen) > 100  # else the checks below say nothing
    assert seen
    offers = [
        offer
        for raw in tables.shadow_users.values()
        if raw is not None
        for offer in UserState.from_bytes(raw).pending
    ]
    assert any(not offer.learn for offer in offers)
    assert all(offer.decision_id in seen for offer in offers if offer.learn)
    # One learning step per offer at most (its answer or its silence).
    assert 0 < shadow_engine.models.updates <= len(seen)


def test_a_failing_shadow_costs_a_counted_failure_never_a_live_decision(
    settings: Settings, live: Program, run: LoggedRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = _replay(settings, run.lines[:500], _engine(live, settings), None)
    broken = _engine(_same_id(live), settings)

    def explode(*args: object, **kwargs: object) -> Iterator[object]:
        raise RuntimeError("a bug in the challenger")

    monkeypatch.setattr(broken, "process", explode)
    beside, shadow = _split(_replay(settings, run.lines[:500], _engine(live, settings), broken))
    assert beside == alone
    assert shadow == []


def test_a_shadow_with_the_live_programs_id_is_refused(live: Program, settings: Settings) -> None:
    with pytest.raises(ValueError, match="live program's id"):
        Shadow(
            _engine(live, settings),
            live_program_id=live.id,
            expired=lambda last_ts, ts: False,
            count=lambda status: None,
        )


def test_a_shadow_spends_nothing_of_the_live_budgets(
    settings: Settings, live: Program, run: LoggedRun, challenger: Path
) -> None:
    """The live ledgers end the same with or without a shadow; the shadow keeps its own."""

    def ledgers(shadow: Engine | None) -> Tables:
        pipeline = Pipeline(
            _engine(live, settings),
            Metrics(CollectorRegistry()),
            max_event_bytes=settings.max_event_bytes,
            shadow=shadow,
        )
        tables = Tables(users={}, ledgers={})
        for number, line in enumerate(run.lines):
            pipeline.handle(tables, SourcePosition("events", 0, number), line)
        return tables

    alone = ledgers(None)
    beside = ledgers(_engine(load_program_setting(str(challenger)), settings))
    assert beside.ledgers == alone.ledgers
    assert beside.users == alone.users
    assert beside.shadow_ledgers
    assert beside.shadow_users


@pytest.fixture(scope="module")
def ungated_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shipped = Path(cli.__file__).parent / "programs" / "shipped" / "retail-loyalty.yaml"
    text = shipped.read_text(encoding="utf-8")
    assert text.count("min_priority: 0.25") == 1
    path = tmp_path_factory.mktemp("programs") / "ungated.yaml"
    path.write_text(text.replace("min_priority: 0.25", "min_priority: 0"), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ungated(ungated_file: Path) -> Program:
    """The live program granting whenever a reward is eligible (no minimum priority).
    With one, a copy of the program learning apart grants where the live one granted
    nothing, or the reverse, once their estimates near the minimum differ: choices the
    live log gives no probability to, which evaluate rightly refuses to value. Without
    one, every choice the copy makes is one the live program's exploration makes too."""
    program = load_program_setting(str(ungated_file))
    assert program.learning.min_priority == 0
    return program


def test_evaluate_values_a_shadow_log_on_the_live_answers(
    settings: Settings,
    ungated: Program,
    ungated_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A shadow of the same program (its own draws) is worth what the live program
    observed: the interval of its doubly robust estimate covers that."""
    run = _logged(settings, ungated)
    live = ungated
    _, shadow = _split(
        _replay(settings, run.lines, _engine(live, settings), _engine(_same_id(live), settings))
    )
    options = {
        "seed": SEED,
        "partitions": settings.partitions,
        "max_event_bytes": settings.max_event_bytes,
        "state_ttl_ms": settings.state_ttl_ms,
    }
    evaluation, _ = evaluate_events(live, run.lines, [], shadow=shadow, **options)  # type: ignore[arg-type]
    (_, named) = evaluation.candidates
    assert named.name == "shadow retail-loyalty-again"
    assert isinstance(named.redemption, Valued)
    assert named.redemption.overlap.support >= 0.95
    dr = named.redemption.dr
    assert dr is not None
    assert dr.low <= evaluation.observed_redemption <= dr.high

    # The same from the command line, from files.
    events, log = tmp_path / "events.jsonl", tmp_path / "shadow.jsonl"
    events.write_bytes(b"\n".join(run.lines) + b"\n")
    log.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in shadow))
    command = ["evaluate", "--in", str(events), "--shadow", str(log)]
    assert cli.main([*command, "--program", str(ungated_file)]) == 0
    printed = capsys.readouterr().out
    assert "shadow retail-loyalty-again" in printed
    assert "live choices without a shadow decision" in printed


def test_a_shadow_log_must_hold_shadow_decisions_of_one_other_program(live: Program) -> None:
    record = {"kind": SHADOW_KIND, "program": "other", "user_id": "u", "event_id": "e"}
    assert shadow_choices([record], live_program=live.id).program == "other"
    with pytest.raises(ValueError, match="kind 'decision'"):
        shadow_choices([{**record, "kind": "decision"}], live_program=live.id)
    with pytest.raises(ValueError, match="mixes programs"):
        shadow_choices([record, {**record, "program": "third"}], live_program=live.id)
    with pytest.raises(ValueError, match="live program's own"):
        shadow_choices([{**record, "program": live.id}], live_program=live.id)
    with pytest.raises(ValueError, match="no decisions"):
        shadow_choices([], live_program=live.id)


def test_shadow_decisions_by_status_are_counted(
    settings: Settings, live: Program, run: LoggedRun
) -> None:
    registry = CollectorRegistry()
    pipeline = Pipeline(
        _engine(live, settings),
        Metrics(registry),
        max_event_bytes=settings.max_event_bytes,
        shadow=_engine(_same_id(live), settings),
    )
    tables = Tables(users={}, ledgers={})
    statuses: Counter[str] = Counter()
    for number, line in enumerate(run.lines[:1000]):
        for output in pipeline.handle(tables, SourcePosition("events", 0, number), line):
            if output.role == "shadow-decisions":
                statuses[orjson.loads(output.value)["status"]] += 1
    for status, count in statuses.items():
        counted = registry.get_sample_value(
            "rewardstream_shadow_decisions_total",
            {"program": "retail-loyalty-again", "status": status},
        )
        assert counted == count
