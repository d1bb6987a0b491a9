"""Allocation: eligibility, exact conservation, largest remainder, determinism, Merkle proofs."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.chain.emission import hour_emission
from p2pnode.chain.rewards import (
    NO_PASS,
    SLASHED,
    UNSTAKED,
    EpochClock,
    Observation,
    StakeState,
    address_key,
    allocate,
    capacity_class,
    largest_remainder,
    merkle_proof,
    merkle_root,
    verify_proof,
)


def test_unstaked_failed_and_slashed_get_nothing(clock, h):
    start, _ = clock.bounds(5)
    good, unstaked, failed, slashed = (h.addr(i) for i in range(4))
    observations = [
        h.obs(good, at=start + 10),
        h.obs(unstaked, at=start + 20),
        h.obs(failed, at=start + 30, passed=False),
        h.obs(slashed, at=start + 40),
    ]
    stakes = {good: h.STAKED, unstaked: StakeState(stake=199 * 10**8, required=200 * 10**8),
              failed: h.STAKED, slashed: h.STAKED}
    alloc = allocate(5, clock=clock, observations=observations, stakes=stakes, slashed=[slashed])
    assert [e.address for e in alloc.entries] == [good]
    assert alloc.entries[0].amount == hour_emission(5)
    reasons = {x.address: x.reason for x in alloc.excluded}
    assert reasons == {unstaked: UNSTAKED, failed: NO_PASS, slashed: SLASHED}
    assert alloc.carry_out == 0


def test_no_stake_record_is_unstaked(clock, h):
    start, _ = clock.bounds(0)
    a = h.addr(1)
    alloc = allocate(0, clock=clock, observations=[h.obs(a, at=start)], stakes={})
    assert alloc.entries == () and alloc.excluded[0].reason == UNSTAKED
    assert alloc.carry_out == hour_emission(0)


def test_empty_hour_carries_everything_and_next_hour_pays_it(clock, h):
    a = h.addr(7)
    empty = allocate(3, clock=clock, observations=[], stakes={}, carry_in=11)
    assert empty.entries == () and empty.carry_out == hour_emission(3) + 11
    start, _ = clock.bounds(4)
    nxt = allocate(4, clock=clock, observations=[h.obs(a, at=start + 1)], stakes={a: h.STAKED},
                   carry_in=empty.carry_out)
    assert nxt.entries[0].amount == hour_emission(4) + hour_emission(3) + 11 and nxt.carry_out == 0


def test_observations_outside_the_epoch_and_replays_do_not_count(clock, h):
    a, b = h.addr(1), h.addr(2)
    start, end = clock.bounds(2)
    o = h.obs(a, at=start + 5)
    observations = [o, o, o,  # the same attestation re-gossiped three times
                    h.obs(b, at=start + 5), h.obs(b, at=start + 6, passed=False, n=1),
                    h.obs(a, at=end), h.obs(b, at=start - 1)]
    alloc = allocate(2, clock=clock, observations=observations, stakes={a: h.STAKED, b: h.STAKED})
    by = {e.address: e for e in alloc.entries}
    assert (by[a].issued, by[a].answered) == (1, 1)
    assert (by[b].issued, by[b].answered) == (2, 1)
    # a answered everything, b half: a's weight is twice b's, and so is its share (within one base unit)
    assert by[a].weight == 2 * by[b].weight
    assert abs(by[a].amount - 2 * by[b].amount) <= 2


def test_capacity_class_doubles_and_sums_over_devices(clock, h):
    assert [capacity_class(m) for m in (0, 124, 125, 249, 250, 500, 1000)] == [1, 1, 2, 2, 4, 8, 16]
    a = h.addr(1)
    start, _ = clock.bounds(0)
    observations = [h.obs(a, at=start, tflops_milli=1000, device="gpu0"),
                    h.obs(a, at=start + 1, tflops_milli=600, device="gpu0"),  # worse run: best counts
                    h.obs(a, at=start + 2, tflops_milli=260, device="gpu1")]
    alloc = allocate(0, clock=clock, observations=observations, stakes={a: h.STAKED})
    assert alloc.entries[0].cls == 16 + 4


def test_largest_remainder_ties_broken_by_key():
    # 10 units over three equal weights: one unit left, goes to the smallest key
    keys = [b"\x03" * 32, b"\x01" * 32, b"\x02" * 32]
    shares = largest_remainder(10, [(k, 1) for k in keys])
    assert shares == [3, 4, 3]


def test_epoch_length_changes_wall_time_not_hour_index(h):
    fast = EpochClock(genesis_time=1000, epoch_s=5)
    slow = EpochClock(genesis_time=1000, epoch_s=3600)
    assert fast.epoch_at(1000 + 5 * 42 + 3) == 42 and slow.epoch_at(1000 + 3600 * 42 + 3) == 42
    assert fast.emission(42) == slow.emission(42) == hour_emission(42)
    a = h.addr(1)
    af = allocate(42, clock=fast, observations=[h.obs(a, at=fast.bounds(42)[0])], stakes={a: h.STAKED})
    aslow = allocate(42, clock=slow, observations=[h.obs(a, at=slow.bounds(42)[0])], stakes={a: h.STAKED})
    assert af.root == aslow.root


def _random_epoch(seed: int, n: int, clock: EpochClock, h):
    rng = random.Random(seed)
    start, _ = clock.bounds(9)
    observations, stakes, slashed = [], {}, []
    for i in range(n):
        a = h.addr(i)
        for j in range(rng.randint(1, 4)):
            observations.append(h.obs(a, at=start + rng.randrange(3600), passed=rng.random() < 0.8,
                                      tflops_milli=rng.randrange(0, 500_000), device=f"d{rng.randrange(3)}", n=j))
        stakes[a] = StakeState(stake=rng.choice([0, 100, 200]), required=rng.choice([0, 200]))
        if rng.random() < 0.05:
            slashed.append(a)
    return observations, stakes, slashed


def test_two_operators_same_root_regardless_of_input_order(clock, h):
    observations, stakes, slashed = _random_epoch(1, 200, clock, h)
    a = allocate(9, clock=clock, observations=observations, stakes=stakes, slashed=slashed, carry_in=5)
    shuffled = list(observations)
    random.Random(2).shuffle(shuffled)
    stakes2 = dict(reversed(list(stakes.items())))
    b = allocate(9, clock=clock, observations=shuffled, stakes=stakes2, slashed=list(reversed(slashed)), carry_in=5)
    assert a.root == b.root and a.entries == b.entries and a.excluded == b.excluded
    assert len(a.entries) > 10


@settings(max_examples=60, deadline=None)
@given(weights=st.lists(st.integers(min_value=1, max_value=2**50), min_size=1, max_size=40),
       pool=st.integers(min_value=0, max_value=2**63))
def test_largest_remainder_conserves_and_is_fair(weights, pool):
    keys = [i.to_bytes(32, "big") for i in range(len(weights))]
    shares = largest_remainder(pool, list(zip(keys, weights)))
    assert sum(shares) == pool
    total = sum(weights)
    for w, s in zip(weights, shares):
        exact_floor = pool * w // total
        assert exact_floor <= s <= exact_floor + 1


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32), n=st.integers(min_value=0, max_value=60),
       epoch=st.integers(min_value=0, max_value=175_300), carry=st.integers(min_value=0, max_value=10**12))
def test_conservation_to_the_base_unit(seed, n, epoch, carry, h):
    clock = EpochClock(genesis_time=0, epoch_s=3600)
    rng = random.Random(seed)
    start, _ = clock.bounds(epoch)
    observations = [h.obs(h.addr(i % max(n, 1)), at=start + rng.randrange(3600), passed=rng.random() < 0.7,
                          tflops_milli=rng.randrange(10**6), n=i) for i in range(n * 2)]
    stakes = {h.addr(i): StakeState(stake=rng.randrange(3), required=1) for i in range(n)}
    alloc = allocate(epoch, clock=clock, observations=observations, stakes=stakes, carry_in=carry)
    assert alloc.paid + alloc.carry_out == hour_emission(epoch) + carry
    assert all(e.amount >= 0 for e in alloc.entries)
    # paid providers take the whole pool; with none, the whole pool carries (also when it is 0 past the schedule)
    assert alloc.carry_out == (0 if alloc.entries else hour_emission(epoch) + carry)


def test_merkle_proofs_verify_and_reject_tampering(clock, h):
    leaves = [(address_key(h.addr(i)), 1000 + i) for i in range(13)]  # odd sizes exercise promotion
    root = merkle_root(4, leaves)
    for key, amount in leaves:
        proof = merkle_proof(4, leaves, key)
        assert verify_proof(4, key, amount, proof, root)
        assert not verify_proof(4, key, amount + 1, proof, root)
        assert not verify_proof(5, key, amount, proof, root)  # the epoch is inside the leaf
    assert merkle_root(4, []) != merkle_root(5, [])
    assert merkle_root(4, leaves[:1]) != merkle_root(4, leaves[:2])


def test_bad_address_is_a_schema_error(clock):
    import pytest

    from p2pnode.wire import SchemaError

    bad = Observation(provider="not-an-address!", device="d", passed=True, tflops_milli=1, at=clock.genesis_time,
                      challenge=b"x")
    with pytest.raises(SchemaError):
        allocate(0, clock=clock, observations=[bad], stakes={})
