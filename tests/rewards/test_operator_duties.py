"""Operator duties around an epoch, on the real localnet: unanswered challenges count against uptime, only the
pool's delegate pays (and the quorum moves that duty by approving another operator), and an operator closes its
own manifest even when another operator's arrived first."""

from __future__ import annotations

import os

import trio

from p2pnode.chain import token
from p2pnode.chain.emission import hour_emission
from p2pnode.chain.network import NetworkParams
from p2pnode.chain.rewards_distribute import _accounts, approve_allowance
from p2pnode.chain.rewards_inputs import compute_allocation, own_manifest, record_manifest, stored_manifest
from p2pnode.chain.rpc import ChainClient
from p2pnode.compute.attest import Attestation, record_attestation, validate_attestation
from p2pnode.operator_epochs import EpochService
from p2pnode.store import Store
from p2pnode.wire import Device, open_envelope, seal

from .conftest import EPOCH_S, GENESIS, attest, params_for

async def io_of(w, idents):
    accs = await _accounts(w.rpc, [token.ata(i.solana_keypair().pubkey(), w.pool.mint) for i in idents])
    return [0 if a is None else token.parse_token_account(bytes(a.data)).amount for a in accs]


async def test_unanswered_challenges_count_as_issued_and_not_answered(world, h, tmp_path):
    w = world
    op = h.ident(700)
    params = params_for(w, [op, h.ident(701)], threshold=2)
    store = Store(tmp_path / "op.db")
    flaky, steady, gone = h.ident(10), h.ident(11), h.ident(12)
    e = 2
    t = GENESIS + e * EPOCH_S + 1
    published = []

    async def publish(topic, data):
        published.append((topic, data))

    async def challenge(peer_id):  # the attestation protocol, as the operator's net layer would run it
        if peer_id == gone.peer_id:
            raise ConnectionRefusedError("no route")
        if peer_id == flaky.peer_id and challenge.calls.setdefault(peer_id, 0) >= 1:
            await trio.sleep_forever()  # accepts the stream, never answers
        challenge.calls[peer_id] = challenge.calls.get(peer_id, 0) + 1
        attest(store, op, flaky if peer_id == flaky.peer_id else steady, at=t)

    challenge.calls = {}
    async with ChainClient(w.url) as client:
        svc = EpochService(identity=op, params=params, store=store, client=client, publish=publish,
                           challenge=challenge, challenge_timeout_s=0.3, now=lambda: t)
        for p in (flaky, steady, flaky, steady, gone):
            await svc._one_challenge(p.peer_id)
        alloc = await compute_allocation(store, client, params, e, carry_in=0)
    by = {x.address: x for x in alloc.entries}
    # flaky answered 1 of 2 (the second timed out), steady 2 of 2: same capacity, half the weight
    assert (by[flaky.address].issued, by[flaky.address].answered) == (2, 1)
    assert (by[steady.address].issued, by[steady.address].answered) == (2, 2)
    assert abs(2 * by[flaky.address].amount - by[steady.address].amount) <= 2
    # the one that never answered is listed as excluded for having no passed attestation, and gets nothing
    assert {x.address: x.reason for x in alloc.excluded} == {gone.address: "no_pass"}
    assert sum(x.amount for x in alloc.entries) == hour_emission(e)
    # the unanswered challenges are signed evidence on /iog/attest/1 that any node accepts and recomputes from
    assert sorted(svc.unreachable) == sorted([flaky.peer_id, gone.peer_id])
    assert [tp for tp, _ in published] == ["/iog/attest/1", "/iog/attest/1"]
    for _, raw in published:
        signed = validate_attestation(raw, origin=op.peer_id, now=t)
        assert not signed.message.passed and signed.message.reason.startswith("unreachable")


async def test_only_the_pools_delegate_pays_and_the_quorum_moves_the_duty(world, h, tmp_path):
    w = world
    op_a, op_b, outsider = h.ident(710), h.ident(711), h.ident(712)
    params = params_for(w, [op_a, op_b], threshold=2)
    providers = [h.ident(20), h.ident(21), h.ident(22)]
    stores = {o.address: Store(tmp_path / f"{o.address}.db") for o in (op_a, op_b)}
    for o in (op_a, op_b):  # both operators saw the same attestations (gossip), signed by op_a
        for i, p in enumerate(providers):
            for e in (1, 2):
                attest(stores[o.address], op_a, p, at=GENESIS + e * EPOCH_S + 1 + i, tflops=1.0 + i)
        await w.rpc.request_airdrop(o.solana_keypair().pubkey(), 10 * 10**9)
    await trio.sleep(0.5)

    async with ChainClient(w.url) as client:
        def svc(o, now_epoch):
            return EpochService.for_operator(o, params, stores[o.address], client, w.rpc, grace_s=0, first_epoch=1,
                                             now=lambda: GENESIS + now_epoch * EPOCH_S)

        assert EpochService.for_operator(outsider, params, Store(tmp_path / "x.db"), client, w.rpc) is None
        a, b = svc(op_a, 2), svc(op_b, 2)
        # op_a is the delegate: it pays epoch 1; op_b closes and signs epoch 1 too but pays nothing
        await approve_allowance(w.rpc, w.pool, op_a.solana_keypair().pubkey(), 10 * hour_emission(1),
                                w.operators[:2], w.payer)
        assert await a.is_delegate() and not await b.is_delegate()
        assert await b.catch_up() == [1]
        assert await io_of(w, providers) == [0, 0, 0]
        assert await a.catch_up() == [1]
        paid1 = await io_of(w, providers)
        assert sum(paid1) == hour_emission(1)
        assert own_manifest(stores[op_a.address], 1).message.root == own_manifest(stores[op_b.address], 1).message.root
        # the quorum approves op_b instead: op_b pays epoch 2 (and would catch up any epoch it has not paid)
        await approve_allowance(w.rpc, w.pool, op_b.solana_keypair().pubkey(), 10 * hour_emission(2),
                                w.operators[:2], w.payer)
        a, b = svc(op_a, 3), svc(op_b, 3)
        assert await a.catch_up() == [2]
        assert await io_of(w, providers) == paid1  # op_a is no longer the delegate
        # op_b closed epoch 1 too and never paid it itself: it finds op_a's transfers for epoch 1 (same root) on
        # chain and pays only epoch 2 — a handover never pays an epoch twice
        assert await b.catch_up() == [2]
        assert b.distributor.epoch_status(1) == "paid"
        paid2 = await io_of(w, providers)
        assert sum(paid2) - sum(paid1) == hour_emission(2)


async def test_an_operator_closes_its_own_manifest_even_if_anothers_arrived_first(world, h, tmp_path):
    w = world
    op_a, op_b = h.ident(720), h.ident(721)
    params = params_for(w, [op_a, op_b], threshold=2)
    p = h.ident(30)
    store_a, store_b = Store(tmp_path / "a.db"), Store(tmp_path / "b.db")
    attest(store_a, op_a, p, at=GENESIS + 5 * EPOCH_S + 1)
    async with ChainClient(w.url) as client:
        a = EpochService(identity=op_a, params=params, store=store_a, client=client, grace_s=0, first_epoch=5,
                         now=lambda: GENESIS + 6 * EPOCH_S)
        assert await a.catch_up() == [5]
        # op_a's manifest reaches op_b by gossip before op_b closes epoch 5; op_b never saw the attestation
        record_manifest(store_b, stored_manifest(store_a, 5))
        b = EpochService(identity=op_b, params=params, store=store_b, client=client, grace_s=0, first_epoch=5,
                         now=lambda: GENESIS + 6 * EPOCH_S)
        assert b.next_epoch_to_close() == 5  # a received manifest does not count as closed by us
        assert await b.catch_up() == [5]
    mine = own_manifest(store_b, 5)
    assert mine.signer == op_b.public_key and mine.message.entries == []  # computed from what b saw
    assert stored_manifest(store_b, 5).signer == op_a.public_key  # the first received one is still kept


async def test_unanswered_record_does_not_change_the_required_stake(h, tmp_path):
    """The unreachable placeholder (device 0, kind cpu) must not replace the GPU a provider passed with."""
    from types import SimpleNamespace

    from p2pnode.chain.rewards import EpochClock
    from p2pnode.chain.rewards_inputs import SeenDevice, observations

    op, p = h.ident(730), h.ident(40)
    params = SimpleNamespace(genesis_time=GENESIS, epoch_s=EPOCH_S, operators=[op.address], rewards_pool="")
    store = Store(tmp_path / "op.db")
    t = GENESIS + 3 * EPOCH_S + 1
    gpu = Device(kind="cuda", name="NVIDIA A100-SXM4-80GB", mem_bytes=80 * 2**30)
    att = Attestation(provider=p.peer_id, device=gpu, device_index=0, tflops=150.0, challenge=os.urandom(32),
                      passed=True, verifier=op.peer_id, time=t)
    record_attestation(store, open_envelope(seal(att, op), Attestation))
    svc = EpochService(identity=op, params=params, store=store, client=None, now=lambda: t + 1)
    for _ in range(4):  # several, so one of them sorts after the passed attestation whatever the hashes
        await svc.record_unanswered(p.peer_id, "unreachable: test")
    obs, devices = observations(store, EpochClock(GENESIS, EPOCH_S), 3, [op.address])
    assert devices == {p.address: {0: SeenDevice(name=gpu.name, kind="cuda")}}
    assert sorted(o.passed for o in obs) == [False] * 4 + [True]


async def test_the_chain_caps_a_rogue_distributor_at_the_allowance(world, h):
    """The trust the delegate design adds is bounded by SPL itself: a distributor bypassing this library (its own
    transfers, any destination) can move at most the approved allowance, and nothing after a revoke-by-reapproval."""
    import pytest
    from spl.token.constants import TOKEN_PROGRAM_ID
    from spl.token.instructions import transfer as spl_transfer
    from spl.token.models import TransferParams

    from p2pnode.chain.rewards_distribute import DistributionError, allowance, submit

    w = world
    thief = h.ident(740).solana_keypair()
    dest = token.ata(thief.pubkey(), w.pool.mint)
    await submit(w.rpc, w.payer, [token.create_ata(w.payer.pubkey(), thief.pubkey(), w.pool.mint)])
    await approve_allowance(w.rpc, w.pool, w.distributor.pubkey(), 100, w.operators[:2], w.payer)

    def steal(amount):
        return submit(w.rpc, w.distributor, [spl_transfer(TransferParams(
            program_id=TOKEN_PROGRAM_ID, source=w.pool.pool, dest=dest, owner=w.distributor.pubkey(), amount=amount))])

    with pytest.raises(DistributionError):
        await steal(101)
    await steal(100)
    with pytest.raises(DistributionError):
        await steal(1)
    # the quorum moves the allowance elsewhere: the old distributor can move nothing
    await approve_allowance(w.rpc, w.pool, w.payer.pubkey(), 50, w.operators[1:3], w.payer)
    assert await allowance(w.rpc, w.pool, w.distributor.pubkey()) == 0
    with pytest.raises(DistributionError):
        await steal(1)
    accs = await _accounts(w.rpc, [dest])
    assert token.parse_token_account(bytes(accs[0].data)).amount == 100


async def test_a_failed_payout_is_retried_soon_not_an_epoch_later(world, h, tmp_path):
    """Allowance too low when the epoch closes: once the quorum approves, the running service pays within seconds
    (hourly epochs: waiting for the next epoch would delay everyone's rewards by an hour)."""
    w = world
    op = h.ident(750)
    params = NetworkParams(cluster="localnet", rpc_url=w.url, genesis_time=GENESIS, mint=str(w.pool.mint),
                           operators=[op.address, h.ident(751).address], threshold=2, multisig=str(w.pool.multisig),
                           treasury=str(w.pool.pool), rewards_pool=str(w.pool.pool), deployer=str(w.payer.pubkey()),
                           stake_per_device=0, epoch_s=3600).validate()
    store = Store(tmp_path / "op.db")
    p = h.ident(50)
    attest(store, op, p, at=GENESIS + 3600 + 5)
    await w.rpc.request_airdrop(op.solana_keypair().pubkey(), 10 * 10**9)
    # the pool's delegate, but with an allowance far below one epoch's emission
    await approve_allowance(w.rpc, w.pool, op.solana_keypair().pubkey(), 1, w.operators[:2], w.payer)
    async with ChainClient(w.url) as client:
        svc = EpochService.for_operator(op, params, store, client, w.rpc, grace_s=0, first_epoch=1,
                                        now=lambda: GENESIS + 2 * 3600 + 10, retry_min_s=0.2, retry_max_s=0.5)
        async with trio.open_nursery() as nursery:
            await nursery.start(svc.run)
            with trio.fail_after(20):
                while svc.closed != [1]:
                    await trio.sleep(0.1)
            await trio.sleep(0.5)
            assert svc.distributor.epoch_status(1) != "paid"
            await approve_allowance(w.rpc, w.pool, op.solana_keypair().pubkey(), 10 * hour_emission(1),
                                    w.operators[:2], w.payer)
            with trio.fail_after(20):
                while svc.distributor.epoch_status(1) != "paid":
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    assert await io_of(w, [p]) == [hour_emission(1)]


async def test_an_epoch_nobody_earned_still_posts_its_root(world, h, tmp_path):
    """No payee: one memo-only batch in the pool's history carries the (empty-tree) root; nothing moves."""
    from p2pnode.chain.rewards import split
    from p2pnode.chain.rewards_distribute import Distributor, allowance
    from p2pnode.chain.rewards_onchain import parse_memo

    w = world
    await approve_allowance(w.rpc, w.pool, w.distributor.pubkey(), 1000, w.operators[:2], w.payer)
    alloc = split(7, emission=hour_emission(7), carry_in=0, inputs=[])
    assert alloc.entries == () and alloc.carry_out == hour_emission(7)
    (pool_acc,) = await _accounts(w.rpc, [w.pool.pool])
    before = token.parse_token_account(bytes(pool_acc.data)).amount
    d = Distributor(w.rpc, Store(tmp_path / "op.db"), w.distributor, w.pool)
    res = await d.pay(alloc)
    assert res.transactions == 1 and res.transfers == 0 and d.epoch_status(7) == "paid"
    assert (await d.pay(alloc)).transactions == 0  # once
    from solana.rpc.commitment import Confirmed

    sigs = (await w.rpc.get_signatures_for_address(w.pool.pool, commitment=Confirmed)).value
    memos = [parse_memo(s.memo) for s in sigs if parse_memo(s.memo)]
    assert memos == [(7, 0, 1, alloc.root)]
    (pool_acc,) = await _accounts(w.rpc, [w.pool.pool])
    assert token.parse_token_account(bytes(pool_acc.data)).amount == before
    assert await allowance(w.rpc, w.pool, w.distributor.pubkey()) == 1000
