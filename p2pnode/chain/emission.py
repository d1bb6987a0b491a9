"""The 20-year IO rewards emission schedule, in exact integer base units (no floats anywhere).

Why integers: every operator, provider and auditor must compute the very same number for every hour, on any
machine, forever; floating point rounding would make the Merkle roots of reward manifests disagree.

The schedule (DESIGN.md "Emission"):

* 240 months x 730 hours = :data:`TOTAL_HOURS` = 175,200 hours; hour 0 is the first hour after genesis.
* Month ``m`` (0-based) has the exact rational weight ``0.9898**m = 9898**m / 10000**m``; we use the integer
  weights ``w_m = 9898**m * 10000**(239-m)`` (same ratios, common denominator). Month amounts are
  ``floor(POOL * w_m / W)`` plus one base unit for the months with the largest remainders (ties: earlier month
  first) so that ``sum(M) == POOL`` = 300,000,000 IO = 3 * 10**16 base units exactly.
* Hour ``k`` (0..729) of month ``m`` gets ``M(m) // 730``, plus one base unit if ``k < M(m) % 730``.
  Hence the hourly series never increases and sums to ``POOL`` exactly; any hour outside [0, TOTAL_HOURS) emits 0.

Convention for :func:`emitted_through`: it is **inclusive** — ``emitted_through(h)`` is the total of hours
``0..h``; ``emitted_through(-1) == 0`` and ``emitted_through(TOTAL_HOURS - 1) == POOL``.
"""

from __future__ import annotations

from bisect import bisect_right
from fractions import Fraction
from functools import lru_cache
from itertools import accumulate

from ..config import IO

MONTHS = 240
HOURS_PER_MONTH = 730
TOTAL_HOURS = MONTHS * HOURS_PER_MONTH  # 175_200
MONTHS_PER_YEAR = 12
HOURS_PER_YEAR = MONTHS_PER_YEAR * HOURS_PER_MONTH  # 8_760
YEARS = MONTHS // MONTHS_PER_YEAR  # 20
DECAY = Fraction(9898, 10000)  # monthly factor 0.9898 (1.02 % decay)
POOL = 300_000_000 * IO  # the rewards pool in base units
LAUNCH_SUPPLY = 500_000_000 * IO  # minted to the launch treasury at genesis (not emitted)
TOTAL_SUPPLY = LAUNCH_SUPPLY + POOL


def _compute_months() -> tuple[int, ...]:
    num, den = DECAY.numerator, DECAY.denominator
    weights = [num**m * den ** (MONTHS - 1 - m) for m in range(MONTHS)]
    total = sum(weights)
    floors = []
    remainders = []
    for m, w in enumerate(weights):
        q, r = divmod(POOL * w, total)
        floors.append(q)
        remainders.append((r, -m))  # larger remainder first; on a tie the earlier month first
    missing = POOL - sum(floors)
    for _, neg_m in sorted(remainders, reverse=True)[:missing]:
        floors[-neg_m] += 1
    assert sum(floors) == POOL
    return tuple(floors)


_MONTHS: tuple[int, ...] = _compute_months()
# _CUM[m] = total emitted by all months before month m (len MONTHS + 1).
_CUM: tuple[int, ...] = (0, *accumulate(_MONTHS))


def month_emission(m: int) -> int:
    """Base units emitted in month `m` (0-based); 0 outside [0, 240)."""
    if m < 0 or m >= MONTHS:
        return 0
    return _MONTHS[m]


def month_amounts() -> tuple[int, ...]:
    """All 240 month amounts (a cached tuple; cheap to call)."""
    return _MONTHS


def hour_emission(h: int) -> int:
    """Base units emitted in hour `h` since genesis (0-based); 0 for h < 0 or h >= TOTAL_HOURS."""
    if h < 0 or h >= TOTAL_HOURS:
        return 0
    m, k = divmod(h, HOURS_PER_MONTH)
    q, r = divmod(_MONTHS[m], HOURS_PER_MONTH)
    return q + (1 if k < r else 0)


def emitted_through(h: int) -> int:
    """Cumulative base units of hours 0..h **inclusive** (0 for h < 0, POOL for h >= TOTAL_HOURS - 1)."""
    if h < 0:
        return 0
    if h >= TOTAL_HOURS:
        return POOL
    m, k = divmod(h, HOURS_PER_MONTH)
    q, r = divmod(_MONTHS[m], HOURS_PER_MONTH)
    n = k + 1  # hours of month m included
    return _CUM[m] + n * q + min(n, r)


def emitted_before(h: int) -> int:
    """Cumulative base units of hours 0..h-1 (exclusive form, handy for carry computations)."""
    return emitted_through(h - 1)


def year_emission(y: int) -> int:
    """Base units emitted in year `y` (0-based, 12 months of 730 h); 0 outside [0, 20)."""
    if y < 0 or y >= YEARS:
        return 0
    return _CUM[(y + 1) * MONTHS_PER_YEAR] - _CUM[y * MONTHS_PER_YEAR]


@lru_cache(maxsize=1)
def yearly_table() -> tuple[tuple[int, int, int, int], ...]:
    """Per year: (year 1-based, emitted that year, cumulative emitted, circulating supply incl. the 500M launch)."""
    rows = []
    cum = 0
    for y in range(YEARS):
        e = year_emission(y)
        cum += e
        rows.append((y + 1, e, cum, LAUNCH_SUPPLY + cum))
    return tuple(rows)


def hour_of_month(m: int) -> int:
    """First hour of month `m`."""
    return m * HOURS_PER_MONTH


def month_of_hour(h: int) -> int:
    """The month hour `h` belongs to (may be outside [0, 240) for hours outside the schedule)."""
    return h // HOURS_PER_MONTH


def hour_at(unix_time: int, genesis_time: int) -> int:
    """The schedule hour a unix timestamp falls in, given the genesis timestamp (negative before genesis)."""
    return (unix_time - genesis_time) // 3600


def hour_reaching(amount: int) -> int:
    """The first hour h with emitted_through(h) >= amount (TOTAL_HOURS if amount > POOL). For audits/tests."""
    if amount <= 0:
        return 0
    if amount > POOL:
        return TOTAL_HOURS
    m = bisect_right(_CUM, amount - 1) - 1  # month where the cumulative crosses `amount`
    lo, hi = m * HOURS_PER_MONTH, (m + 1) * HOURS_PER_MONTH - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if emitted_through(mid) >= amount:
            hi = mid
        else:
            lo = mid + 1
    return lo


__all__ = [
    "DECAY", "HOURS_PER_MONTH", "HOURS_PER_YEAR", "LAUNCH_SUPPLY", "MONTHS", "POOL", "TOTAL_HOURS",
    "TOTAL_SUPPLY", "YEARS", "emitted_before", "emitted_through", "hour_at", "hour_emission", "hour_of_month",
    "hour_reaching", "month_amounts", "month_emission", "month_of_hour", "year_emission", "yearly_table",
]
