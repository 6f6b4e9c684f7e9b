"""The aging tool (``python -m harness.bench.aging``): what its rows count.

It is read by hand to see what the engine's cost per event does as the state fills;
these tests check that each row counts the events, decisions and rows it says.
"""

from __future__ import annotations

import orjson
import pytest

from app.settings import Settings
from harness.bench.aging import chunks, main, markdown
from harness.bench.throughput import Traffic, history_events


def test_chunks_cover_every_event_once_and_count_its_decision() -> None:
    lines = [m.value for m in Traffic(40, 3).take(500)]
    rows = list(chunks(Settings(), lines, 200))
    assert [(c.first, c.events) for c in rows] == [(0, 200), (200, 200), (400, 100)]
    # The bench's traffic has no malformed event: one decision each.
    assert [c.decisions for c in rows] == [200, 200, 100]
    users = {orjson.loads(line)["user_id"] for line in lines}
    assert rows[-1].user_rows == len(users)
    assert all(c.cpu_us_per_event > 0 and c.user_row_bytes > 0 for c in rows)
    # Rows only grow here: every user's row holds at least what it held a chunk before.
    assert rows[0].user_row_bytes <= rows[-1].user_row_bytes


def test_traffic_spread_over_days_grants_and_says_so() -> None:
    lines = list(history_events(40, 3, days=10, events_per_user=20))
    rows = list(chunks(Settings(), lines, 400))
    granted = sum(c.granted for c in rows)
    assert 0 < granted < sum(c.decisions for c in rows)
    table = markdown(rows)
    assert len(table) == 2 + len(rows)
    share = rows[0].granted / rows[0].decisions
    assert f"| 0-400 | {rows[0].cpu_us_per_event:.1f} | {share:.3f} |" in table[2]


def test_days_must_divide_the_events_among_the_users() -> None:
    with pytest.raises(SystemExit):
        main(["--chunk", "7", "--chunks", "1", "--users", "2", "--days", "1"])
