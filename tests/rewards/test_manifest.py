"""The signed manifest and its validator: honest manifests pass, forged or inconsistent ones are rejected."""

from __future__ import annotations

import dataclasses

import pytest

from p2pnode.chain.rewards import allocate
from p2pnode.chain.rewards_manifest import (
    ManifestMismatch,
    ManifestValidator,
    RewardsManifest,
    UnknownOperator,
    sign_manifest,
)
from p2pnode.identity import Identity
from p2pnode.wire import BadSignature, SchemaError, open_envelope, pack, seal, unpack

POOL = "So11111111111111111111111111111111111111112"


@pytest.fixture
def setup(clock, h):
    op = h.ident(100)
    start, _ = clock.bounds(7)
    providers = [h.addr(i) for i in range(5)]
    observations = [h.obs(a, at=start + i) for i, a in enumerate(providers)]
    observations.append(h.obs(providers[0], at=start + 9, passed=False, n=1))
    alloc = allocate(7, clock=clock, observations=observations, stakes={a: h.STAKED for a in providers[:4]},
                     carry_in=3)
    raw = sign_manifest(alloc, op, pool=POOL, epoch_s=clock.epoch_s, created_at=clock.bounds(8)[0])
    return op, alloc, raw, ManifestValidator(operators=[op.public_key], pool=POOL)


def test_honest_manifest_round_trips_and_validates(setup):
    op, alloc, raw, validator = setup
    signed = validator.validate(raw)
    m = signed.message
    assert signed.signer == op.public_key
    assert m.root == alloc.root and m.allocation() == alloc
    assert sum(e.amount for e in m.entries) + m.carry_out == m.emission + m.carry_in
    assert [x.reason for x in m.excluded] == ["unstaked"]


def test_wrong_signer_rejected(setup, h):
    _, alloc, _, validator = setup
    raw = sign_manifest(alloc, h.ident(999), pool=POOL, epoch_s=3600, created_at=0)
    with pytest.raises(UnknownOperator):
        validator.validate(raw)


def _resign(raw: bytes, op: Identity, **changes) -> bytes:
    m = open_envelope(raw, RewardsManifest).message
    return seal(dataclasses.replace(m, **changes), op)


def test_altered_amount_rejected_even_when_resigned_by_an_operator(setup):
    op, _, raw, validator = setup
    m = open_envelope(raw, RewardsManifest).message
    entries = list(m.entries)
    entries[0] = dataclasses.replace(entries[0], amount=entries[0].amount + 1)
    entries[1] = dataclasses.replace(entries[1], amount=entries[1].amount - 1)  # still sums correctly
    with pytest.raises(ManifestMismatch):
        validator.validate(_resign(raw, op, entries=entries))


def test_altered_amount_breaks_the_signature(setup):
    _, _, raw, validator = setup
    env = unpack(raw, max_size=1 << 20)
    body = unpack(env["body"], max_size=1 << 20)
    body["entries"][0]["amount"] += 1
    env["body"] = pack(body)
    with pytest.raises(BadSignature):
        validator.validate(pack(env))


def test_inflated_weight_changes_amounts_so_root_check_fails(setup):
    op, _, raw, validator = setup
    m = open_envelope(raw, RewardsManifest).message
    entries = list(m.entries)
    entries[0] = dataclasses.replace(entries[0], cls=entries[0].cls * 8)  # inputs changed, amounts not
    with pytest.raises(ManifestMismatch):
        validator.validate(_resign(raw, op, entries=entries))


@pytest.mark.parametrize("change", [
    {"emission": 1},
    {"carry_out": 5},
    {"root": b"\x00" * 32},
    {"pool": "11111111111111111111111111111111"},
])
def test_inconsistent_totals_root_or_pool_rejected(setup, change):
    op, _, raw, validator = setup
    with pytest.raises(ManifestMismatch):
        validator.validate(_resign(raw, op, **change))


def test_carry_chain_checked_when_previous_epoch_known(setup):
    op, _, raw, _ = setup
    validator = ManifestValidator(operators=[op.public_key], pool=POOL, carry_of=lambda e: 4 if e == 6 else None)
    with pytest.raises(ManifestMismatch):
        validator.validate(raw)  # carry_in is 3, epoch 6 carried 4
    ok = ManifestValidator(operators=[op.public_key], pool=POOL, carry_of=lambda e: 3)
    ok.validate(raw)


def test_unsorted_or_duplicate_entries_are_schema_errors(setup):
    op, _, raw, validator = setup
    m = open_envelope(raw, RewardsManifest).message
    with pytest.raises(SchemaError):
        validator.validate(_resign(raw, op, entries=list(reversed(m.entries))))
    with pytest.raises(SchemaError):
        validator.validate(_resign(raw, op, entries=[m.entries[0], m.entries[0]]))


def test_garbage_is_a_typed_error(setup):
    *_, validator = setup
    from p2pnode.errors import ProtocolError

    for junk in (b"", b"\xc1", pack({"v": 1}), pack([1, 2, 3]), b"\x00" * 2_000_000):
        with pytest.raises(ProtocolError):
            validator.validate(junk)
