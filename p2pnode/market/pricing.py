"""Job prices in IO base units: what a job costs for some seconds of a device, what the renter must escrow.

Integer math only (both sides compute the same numbers). Prices are per device-hour (the offer's ``price``); a job
is billed by the second, rounded up, never below the quote's ``min_s`` and never above its ``max_s``. The deposit
covers the whole ``max_s`` plus the network fee (burned on settlement, paid by the renter on top).
"""

from __future__ import annotations

from ..chain.escrow import BPS, fee_of

HOUR_S = 3600


def cost(price_per_hour: int, seconds: float) -> int:
    """Base units for `seconds` of one device at `price_per_hour`, rounded up to the base unit."""
    if price_per_hour < 0 or seconds < 0:
        raise ValueError("price and seconds must be non-negative")
    millis = int(-(-seconds * 1000 // 1))  # ceil to whole milliseconds, then integer math
    return -(-price_per_hour * millis // (HOUR_S * 1000))


def billed_seconds(seconds: float, min_s: int, max_s: int) -> float:
    return min(max(seconds, float(min_s)), float(max_s))


def charge(price_per_hour: int, seconds: float, min_s: int, max_s: int) -> int:
    """What a finished job of `seconds` costs under a quote (min_s <= billed <= max_s)."""
    return cost(price_per_hour, billed_seconds(seconds, min_s, max_s))


def running_charge(price_per_hour: int, seconds: float, max_s: int) -> int:
    """Voucher amount while the job runs: the work so far, without the minimum (that applies at the end)."""
    return cost(price_per_hour, min(max(seconds, 0.0), float(max_s)))


def deposit_for(price_per_hour: int, max_s: int, fee_bps: int) -> int:
    """Escrow that covers the longest job plus its fee: cumulative + fee_of(cumulative) <= deposit always holds."""
    full = cost(price_per_hour, max_s)
    return max(full + -(-full * fee_bps // BPS), 1)


def fee(cumulative: int, fee_bps: int) -> int:
    return fee_of(cumulative, fee_bps)


__all__ = ["HOUR_S", "billed_seconds", "charge", "cost", "deposit_for", "fee", "running_charge"]
