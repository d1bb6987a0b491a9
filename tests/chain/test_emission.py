"""The emission schedule, checked exhaustively over every one of the 175,200 hours (pure integer math)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from p2pnode.chain import emission as em
from p2pnode.config import IO


def all_hours() -> list[int]:
    return [em.hour_emission(h) for h in range(em.TOTAL_HOURS)]


def test_constants():
    assert em.TOTAL_HOURS == 175_200 == 240 * 730
    assert em.POOL == 300_000_000 * 10**8 == 300_000_000 * IO


def test_sum_over_all_hours_is_exactly_the_pool():
    assert sum(all_hours()) == 300_000_000 * 10**8


def test_months_sum_exactly_and_match_hours():
    months = em.month_amounts()
    assert len(months) == 240
    assert sum(months) == em.POOL
    hours = all_hours()
    for m in range(240):
        assert sum(hours[m * 730:(m + 1) * 730]) == months[m]


def test_never_increasing():
    hours = all_hours()
    assert all(a >= b for a, b in zip(hours, hours[1:]))
    assert hours[0] > 0 and hours[-1] > 0


def test_zero_outside_the_schedule():
    for h in (-10**9, -1, em.TOTAL_HOURS, em.TOTAL_HOURS + 1, 10**12):
        assert em.hour_emission(h) == 0
    assert em.month_emission(-1) == 0 and em.month_emission(240) == 0


def test_each_month_is_0_9898_of_the_previous_within_rounding():
    months = em.month_amounts()
    for a, b in zip(months, months[1:]):
        # exact reals r_m satisfy r_{m+1} = 0.9898 r_m; each month is within 1 base unit of its real value
        assert abs(Fraction(b) - Fraction(9898, 10000) * a) <= 2
    # and the amounts are the exact-rational weights rounded: within 1 base unit of POOL * w_m / W
    w = [Fraction(9898, 10000) ** m for m in range(240)]
    total = sum(w)
    for m in (0, 1, 119, 239):
        assert abs(Fraction(months[m]) - em.POOL * w[m] / total) < 1


def test_within_month_distribution():
    for m in (0, 57, 239):
        q, r = divmod(em.month_emission(m), 730)
        hs = [em.hour_emission(m * 730 + k) for k in range(730)]
        assert hs.count(q + 1) == r and hs.count(q) == 730 - r
        assert hs[:r] == [q + 1] * r


def test_emitted_through_is_the_inclusive_prefix_sum():
    hours = all_hours()
    running = 0
    for h, e in enumerate(hours):
        running += e
        assert em.emitted_through(h) == running
    assert em.emitted_through(-1) == 0
    assert em.emitted_through(-5) == 0
    assert em.emitted_through(em.TOTAL_HOURS - 1) == em.POOL
    assert em.emitted_through(em.TOTAL_HOURS + 1000) == em.POOL
    assert em.emitted_before(0) == 0 and em.emitted_before(1) == hours[0]


def test_year_one_is_about_8_percent_of_launch_supply():
    y1 = em.year_emission(0)
    assert y1 == em.emitted_through(em.HOURS_PER_YEAR - 1)
    share = y1 / em.LAUNCH_SUPPLY
    assert 0.075 < share < 0.09, share


def test_yearly_table_is_consistent():
    rows = em.yearly_table()
    assert len(rows) == 20
    assert sum(r[1] for r in rows) == em.POOL
    assert rows[-1][2] == em.POOL and rows[-1][3] == 800_000_000 * IO
    assert all(a[1] > b[1] for a, b in zip(rows, rows[1:]))


@pytest.mark.parametrize("amount", [1, 12345, em.POOL // 3, em.POOL - 1, em.POOL])
def test_hour_reaching(amount):
    h = em.hour_reaching(amount)
    assert em.emitted_through(h) >= amount
    assert em.emitted_through(h - 1) < amount


def test_hour_at():
    assert em.hour_at(1000, 1000) == 0
    assert em.hour_at(1000 + 3599, 1000) == 0
    assert em.hour_at(1000 + 3600, 1000) == 1
    assert em.hour_at(999, 1000) == -1
