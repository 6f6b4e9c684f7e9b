"""Program-wide budgets and stock, split across partitions without coordination."""

from __future__ import annotations

import random

import pytest

from app.decisioning.ledger import RECENT_CHARGES, Ledger, Share, ledger_key

HOUR = 3_600_000


@pytest.mark.parametrize("partitions", [1, 3, 4, 7])
@pytest.mark.parametrize("stock", [0, 1, 10, 101])
def test_stock_shares_sum_to_the_stock_exactly(partitions: int, stock: int) -> None:
    shares = [Share(p, partitions).of_stock(stock) for p in range(partitions)]
    assert sum(shares) == stock
    assert max(shares) - min(shares) <= 1


def test_amount_shares_sum_to_the_amount() -> None:
    assert sum(Share(p, 6).of_amount(1000.0) for p in range(6)) == pytest.approx(1000.0)


def test_charge_counts_total_stock_and_window() -> None:
    ledger = Ledger()
    for i in range(5):
        ledger = ledger.charge(
            ts=i * HOUR, cost=2.0, reward_id="r", bucket_ms=HOUR, keep_ms=24 * HOUR
        )
    assert ledger.spent_total == 10.0
    assert ledger.stock_taken("r") == 5
    assert ledger.stock_taken("other") == 0
    # Window of 2 h ending at 4 h: buckets at 2 h, 3 h, 4 h overlap it (counted whole).
    assert ledger.spent_within(4 * HOUR, 2 * HOUR, HOUR) == 6.0


def test_window_never_undercounts_spend_inside_it() -> None:
    ledger = Ledger().charge(
        ts=HOUR + 59 * 60_000, cost=5.0, reward_id="r", bucket_ms=HOUR, keep_ms=24 * HOUR
    )
    # The grant at 1:59 is inside a window of 1 h ending at 2:30 and must be counted.
    assert ledger.spent_within(2 * HOUR + 30 * 60_000, HOUR, HOUR) == 5.0


def test_window_counts_exactly_the_buckets_it_overlaps_whatever_order_charges_came_in() -> None:
    rng = random.Random(5)
    ledger = Ledger()
    charged: list[tuple[int, float]] = []
    for _ in range(300):  # late charges among them: a bucket before the newest one
        ts = rng.randrange(0, 30 * 24 * HOUR)
        cost = rng.choice((0.5, 1.0, 2.5))
        ledger = ledger.charge(
            ts=ts, cost=cost, reward_id="r", bucket_ms=HOUR, keep_ms=60 * 24 * HOUR
        )
        charged.append((ts - ts % HOUR, cost))
    for _ in range(200):
        end, window = rng.randrange(0, 31 * 24 * HOUR), rng.choice((HOUR, 24 * HOUR, 7 * 24 * HOUR))
        inside = sum(cost for start, cost in charged if end - window - HOUR < start)
        assert ledger.spent_within(end, window, HOUR) == pytest.approx(inside)


def test_old_buckets_are_dropped_but_total_is_kept() -> None:
    ledger = Ledger()
    for day in range(10):
        ledger = ledger.charge(
            ts=day * 24 * HOUR, cost=1.0, reward_id="r", bucket_ms=HOUR, keep_ms=48 * HOUR
        )
    assert len(ledger.buckets) <= 3
    assert ledger.spent_total == 10.0


def test_round_trip_and_keys() -> None:
    ledger = Ledger().charge(ts=HOUR, cost=1.5, reward_id="r", bucket_ms=HOUR, keep_ms=HOUR)
    assert Ledger.from_bytes(ledger.to_bytes()) == ledger
    assert Ledger.from_bytes(None) == Ledger()
    assert ledger_key("p", 3) == b"p:3"


def test_the_same_decision_is_charged_once() -> None:
    ledger = Ledger()
    for _ in range(3):  # decided again after a crash: the same decision id
        ledger = ledger.charge(
            ts=HOUR, cost=4.0, reward_id="r", bucket_ms=HOUR, keep_ms=24 * HOUR, ref="abc"
        )
    assert (ledger.spent_total, ledger.stock_taken("r")) == (4.0, 1)
    restored = Ledger.from_bytes(ledger.to_bytes())
    assert restored.has_charged("abc")
    assert (
        restored.charge(
            ts=HOUR, cost=4.0, reward_id="r", bucket_ms=HOUR, keep_ms=24 * HOUR, ref="abc"
        )
        == restored
    )


def test_a_ledger_remembers_a_bounded_number_of_charges() -> None:
    ledger = Ledger()
    for i in range(RECENT_CHARGES + 10):
        ledger = ledger.charge(
            ts=i, cost=0.01, reward_id="r", bucket_ms=HOUR, keep_ms=HOUR, ref=f"d{i}"
        )
    assert len(ledger.charged) == RECENT_CHARGES
    assert not ledger.remembers(5)  # too old to know: never charged again
    assert ledger.remembers(RECENT_CHARGES + 9)


def test_a_row_written_with_the_charges_as_pairs_is_read_with_them() -> None:
    # Ledgers written before the charges were a mapping keep them as [ref, ts] pairs; a
    # worker upgraded over such a changelog must still refuse to charge them again.
    row = (
        b'{"spent_total":4.0,"buckets":[[0,4.0]],"stock_used":{"r":1},"charged":[["a",5],["b",7]]}'
    )
    ledger = Ledger.from_bytes(row)
    assert [ledger.has_charged(ref) for ref in "abc"] == [True, True, False]
    again = ledger.charge(ts=9, cost=4.0, reward_id="r", bucket_ms=HOUR, keep_ms=HOUR, ref="b")
    assert again == ledger
    assert Ledger.from_bytes(ledger.to_bytes()) == ledger
