"""`rewardstream bench-console`: the console's user lookup with a million users in its index.

No broker: the index is fed synthetic decision records (shaped like the engine's,
about a kilobyte each, with reasons, a sentence and links) and a few fraud alerts,
as the console's reader would feed it. Then random users are looked up twice over:
in the process (the index's own work: inflate and decode the user's records) and
through the console's HTTP server on loopback (what the page waits for: the request,
the lookup under the lock, the JSON answer). Memory per user is the process's
resident memory grown while the index filled, divided by the users.

Target (issue 18): a user lookup answers in at most 1 s at p95 with a million users.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import random
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson

from app.console.service import Console
from app.console.web import ConsoleServer
from app.settings import Settings
from harness.bench.report import commit, machine

TARGET_P95_MS = 1000.0
REWARDS = ("welcome-points", "bonus-points", "free-shipping", "discount-10", "cashback")
HTTP_LOOKUPS = 2_000
ALERT_SHARE = 0.02
START_MS = 1_780_000_000_000


@dataclasses.dataclass(frozen=True)
class ConsolePlan:
    users: int = 1_000_000
    decisions: int = 3  # per user
    lookups: int = 20_000
    seed: int = 7


def run_console_bench(
    settings: Settings, plan: ConsolePlan, *, say: Callable[[str], None]
) -> dict[str, Any]:
    settings = dataclasses.replace(settings, console_host="127.0.0.1", console_port=0)
    console = Console(settings)
    rng = random.Random(plan.seed)
    say(f"Filling the index: {plan.users:,} users x {plan.decisions} decisions...")
    fill = _fill(console, plan, rng)
    say(
        f"  {fill['records']:,} records in {fill['seconds']:.0f} s, "
        f"{fill['bytes_per_user']:,.0f} bytes per user"
    )
    users = [_user_id(rng.randrange(plan.users)) for _ in range(plan.lookups)]
    say(f"Looking up {plan.lookups:,} random users in the process...")
    in_process = _timed(lambda user: orjson.dumps(console.user(user)), users)
    say(f"Looking up {HTTP_LOOKUPS:,} random users over HTTP on loopback...")
    server = ConsoleServer("127.0.0.1", 0, console).start()
    try:
        url = f"http://127.0.0.1:{server.port}/api/users/"
        over_http = _timed(lambda user: _get(url + user), users[:HTTP_LOOKUPS])
    finally:
        server.stop()
    return {
        "plan": dataclasses.asdict(plan),
        "history": settings.console_history,
        "fill": fill,
        "lookup_in_process_ms": in_process,
        "lookup_http_ms": over_http,
        "target_p95_ms": TARGET_P95_MS,
        "commit": commit(),
        "machine": machine(),
    }


def missed_target(report: dict[str, Any]) -> bool:
    return bool(report["lookup_http_ms"]["p95"] > report["target_p95_ms"])


def render_markdown(report: dict[str, Any]) -> str:
    plan, fill = report["plan"], report["fill"]
    rows = [
        f"`rewardstream bench-console --users {plan['users']} --decisions {plan['decisions']} "
        f"--lookups {plan['lookups']}` (`make bench-console`): no broker; the console's index "
        f"fed {fill['records']:,} synthetic decision records ({plan['decisions']} per user, "
        f"about {fill['mean_record_bytes']:,.0f} bytes of JSON each, shaped like the engine's) "
        f"and {fill['alerts']:,} fraud alerts, history {report['history']} per user; then "
        "random users looked up in the process and through the console's HTTP server on "
        "loopback (one client).",
        "",
        "| lookup | count | p50 | p95 | p99 | max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, key in (("in the process", "lookup_in_process_ms"), ("over HTTP", "lookup_http_ms")):
        f = report[key]
        rows.append(
            f"| {name} | {f['count']:,} | {f['p50']:.2f} ms | {f['p95']:.2f} ms | "
            f"{f['p99']:.2f} ms | {f['max']:.2f} ms |"
        )
    met = "yes" if not missed_target(report) else "no"
    rows += [
        "",
        "| figure | value |",
        "|---|---:|",
        f"| users in the index | {fill['users']:,} |",
        f"| resident memory per user | {fill['bytes_per_user']:,.0f} bytes |",
        f"| resident memory per decision kept (users' own overhead included) | "
        f"{fill['bytes_per_record']:,.0f} bytes |",
        f"| index filled at | {fill['records'] / fill['seconds']:,.0f} records/s |",
        f"| target: HTTP lookup p95 <= {report['target_p95_ms']:.0f} ms | {met} |",
    ]
    return "\n".join(rows)


# ---------------------------------------------------------------- inside


def _fill(console: Console, plan: ConsolePlan, rng: random.Random) -> dict[str, Any]:
    gc.collect()
    before = _resident_bytes()
    started = time.perf_counter()
    records = alerts = record_bytes = 0
    for n in range(plan.users):
        user_id = _user_id(n)
        for k in range(plan.decisions):
            decision = _decision(user_id, k, rng)
            raw = orjson.dumps(decision)
            record_bytes += len(raw)
            console.index.add_decision(raw, decision, START_MS + k)
            records += 1
        if rng.random() < ALERT_SHARE:
            alert = _alert(user_id, n)
            console.index.add_alert(orjson.dumps(alert), alert, START_MS)
            alerts += 1
    seconds = time.perf_counter() - started
    gc.collect()
    grown = _resident_bytes() - before
    return {
        "users": len(console.index),
        "records": records,
        "alerts": alerts,
        "seconds": seconds,
        "mean_record_bytes": record_bytes / max(records, 1),
        "bytes_per_user": grown / max(plan.users, 1),
        "bytes_per_record": grown / max(records, 1),
    }


def _user_id(n: int) -> str:
    return f"u-{n:07d}"


def _decision(user_id: str, k: int, rng: random.Random) -> dict[str, Any]:
    """A decision record as the engine writes one for a purchase: granted or not."""
    reward = rng.choice(REWARDS)
    granted = rng.random() < 0.4
    ts = START_MS + k * 3_600_000 + rng.randrange(3_600_000)
    skipped = [r for r in REWARDS if r != reward][:3]
    event_id = f"ev-{user_id}-{k}"
    return {
        "decision_id": f"d-{rng.getrandbits(128):032x}",
        "event_id": event_id,
        "user_id": user_id,
        "ts": ts,
        "action": reward if granted else None,
        "channel": "web" if granted else None,
        "value": round(rng.uniform(1, 10), 2) if granted else 0.0,
        "cost": round(rng.uniform(0.1, 5), 2) if granted else 0.0,
        "propensity": round(rng.random(), 6),
        "risk": round(rng.random() * 0.3, 4),
        "status": "granted" if granted else "none",
        "reasons": [
            "policy.exploit" if granted else "policy.nothing_eligible",
            *(["rule.once-a-day:passed", "budget:ok"] if granted else []),
            *(
                [f"budget.total_left:{rng.uniform(1e4, 2.5e4):.2f}", "budget.per_user_left:190.00"]
                if granted
                else []
            ),
            f"feature.engagement:{rng.uniform(-1, 1):+.2f}",
            *(f"skip.{r}:rule.has-purchased:failed" for r in skipped),
        ],
        "explanation": (
            f"Granted {reward} (worth 4.90 EUR) via web: highest priority among 2 eligible: "
            "propensity 0.150 x value 4.90 x lever 1.00 = 0.735; not offered: "
            + ", ".join(f"{r} (rule has-purchased failed)" for r in skipped)
            + "."
        ),
        "model_version": "retail-loyalty@077274ab/lr+3120",
        "program": "retail-loyalty",
        "kind": "decision",
        "links": [{"kind": "device", "accounts_24h": 1}],
        "hold": None,
        "related": [],
        "arm": None,
        "consent": {"personalization": True, "marketing": True},
    }


def _alert(user_id: str, n: int) -> dict[str, Any]:
    return {
        "kind": "fraud_alert",
        "alert_id": f"a-{n:032x}",
        "event_id": f"ev-{user_id}-0",
        "user_id": user_id,
        "ts": START_MS,
        "score": 0.87,
        "reasons": ["device.signups"],
        "evidence": {"device.signups": "4 accounts signed up on device dev-1 in 24 h"},
        "related_users": [_user_id(n + 1), _user_id(n + 2)],
        "program": "retail-loyalty",
    }


def _timed(lookup: Callable[[str], object], users: list[str]) -> dict[str, float]:
    times = []
    for user in users:
        started = time.perf_counter()
        lookup(user)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()

    def quantile(q: float) -> float:
        return times[min(int(q * len(times)), len(times) - 1)]

    return {
        "count": len(times),
        "p50": quantile(0.5),
        "p95": quantile(0.95),
        "p99": quantile(0.99),
        "max": times[-1],
    }


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


def _resident_bytes() -> int:
    """The process's resident memory, from /proc (Linux)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")
