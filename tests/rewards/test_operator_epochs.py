"""The operators' epoch service on the real localnet: close epochs from stored signed attestations, gossip-ready
signed manifests, pay in order, and two operators agree on the root."""

from __future__ import annotations


import pytest

from p2pnode.chain.emission import hour_emission
from p2pnode.chain.rewards_distribute import Distributor, approve_allowance
from p2pnode.chain.rewards_gossip import RewardsTopic
from p2pnode.chain.rewards_inputs import compute_allocation
from p2pnode.chain.rpc import ChainClient
from p2pnode.compute.attest import Attestation, record_attestation
from p2pnode.net.gossip import GossipMessage
from p2pnode.operator_epochs import EpochService
from p2pnode.store import Store
from p2pnode.wire import open_envelope

from .conftest import EPOCH_S, GENESIS, attest, params_for

async def test_service_closes_gossips_and_pays_epochs_in_order(world, h, tmp_path):
    w = world
    op, other_op, stranger = h.ident(500), h.ident(501), h.ident(502)
    params = params_for(w, [op, other_op], threshold=1)
    providers = [h.ident(i) for i in range(3)]
    store_a, store_b = Store(tmp_path / "a.db"), Store(tmp_path / "b.db")
    e0 = 3
    start = GENESIS + e0 * EPOCH_S
    raws = []
    for i, p in enumerate(providers):
        raws.append(attest(store_a, op, p, at=start + 1 + i, tflops=1.0 + i))
    raws.append(attest(store_a, op, providers[0], at=start + 5, passed=False))  # answered 1 of 2
    raws.append(attest(store_a, stranger, providers[1], at=start + 6, tflops=500.0))  # not an operator: ignored
    raws.append(attest(store_a, op, providers[2], at=start + EPOCH_S + 1))  # next epoch
    # the second operator saw the same gossip (different arrival order)
    for raw in reversed(raws):
        record_attestation(store_b, open_envelope(raw, Attestation))

    await approve_allowance(w.rpc, w.pool, w.distributor.pubkey(), 100 * hour_emission(0), w.operators[:2], w.payer)
    published = []

    async def publish(topic, data):
        published.append((topic, data))

    async with ChainClient(w.url) as client:
        dist = Distributor(w.rpc, store_a, w.distributor, w.pool)
        svc = EpochService(identity=op, params=params, store=store_a, client=client, distributor=dist,
                           publish=publish, first_epoch=e0, grace_s=0, now=lambda: GENESIS + (e0 + 2) * EPOCH_S)
        closed = await svc.catch_up()
        assert closed == [e0, e0 + 1]
        other = await compute_allocation(store_b, client, params, e0, carry_in=0)

    # every published manifest passes the network's validator (as gossiped by the signing operator)
    topic = RewardsTopic.for_network(params, Store(tmp_path / "c.db"))
    manifests = []
    for t, data in published:
        assert t == "/iog/rewards/1"
        signed = topic.validate(GossipMessage(topic=t, origin=op.peer_id, forwarder="x", data=data, msg_id=b"1"))
        topic.handle(signed, None)
        manifests.append(signed.message)
    m0, m1 = manifests
    assert m0.root == other.root  # the second operator computes the same root independently
    by = {e.address: e for e in m0.entries}
    assert set(by) == {p.address for p in providers}
    assert (by[providers[0].address].issued, by[providers[0].address].answered) == (2, 1)
    assert [e.address for e in m1.entries] == [providers[2].address]
    assert m1.carry_in == m0.carry_out == 0
    # paid on chain, in order, exactly the manifests' amounts
    from p2pnode.chain import token
    from p2pnode.chain.rewards_distribute import _accounts

    accs = await _accounts(w.rpc, [token.ata(p.solana_keypair().pubkey(), w.pool.mint) for p in providers])
    got = {p.address: token.parse_token_account(bytes(a.data)).amount for p, a in zip(providers, accs)}
    want = {p.address: sum(e.amount for m in manifests for e in m.entries if e.address == p.address)
            for p in providers}
    assert got == want
    assert dist.last_paid_epoch() == e0 + 1
    # a gossiped manifest whose origin is not its signer is rejected
    from p2pnode.chain.rewards_manifest import UnknownOperator

    with pytest.raises(UnknownOperator):
        topic.validate(GossipMessage(topic="/iog/rewards/1", origin=other_op.peer_id, forwarder="x",
                                     data=published[0][1], msg_id=b"2"))
    # restart: nothing is closed or paid twice
    async with ChainClient(w.url) as client:
        svc2 = EpochService(identity=op, params=params, store=store_a, client=client,
                            distributor=Distributor(w.rpc, store_a, w.distributor, w.pool), grace_s=0,
                            now=lambda: GENESIS + (e0 + 2) * EPOCH_S)
        assert await svc2.catch_up() == []
    accs = await _accounts(w.rpc, [token.ata(p.solana_keypair().pubkey(), w.pool.mint) for p in providers])
    assert {p.address: token.parse_token_account(bytes(a.data)).amount for p, a in zip(providers, accs)} == want


def test_challenge_times_are_inside_the_epoch(h):
    import random

    from types import SimpleNamespace

    params = SimpleNamespace(genesis_time=GENESIS, epoch_s=3600, operators=[], rewards_pool="")
    svc = EpochService(identity=h.ident(1), params=params, store=None, client=None, challenges_per_epoch=3)
    plan = svc.challenge_times(7, ["a", "b"], random.Random(1))
    start, end = svc.clock.bounds(7)
    assert len(plan) == 6 and all(start <= t < end - svc.grace_s for t, _ in plan)
    assert plan == sorted(plan)


async def test_verify_and_earnings_commands(world, h, tmp_path):
    """`p2pnode rewards verify` matches an honest manifest and flags one built from other attestations;
    `p2pnode rewards earnings` checks the provider's entry against root and balance."""
    import trio
    from typer.testing import CliRunner

    from p2pnode.chain.rewards_inputs import record_manifest
    from p2pnode.cli import app
    from p2pnode.cli import rewards as _  # noqa: F401  (registers the commands)

    w = world
    op = h.ident(600)
    params = params_for(w, [op], threshold=1)
    provider = h.ident(1)
    home = tmp_path / "home"
    home.mkdir()
    params.save(home / "network.json")
    (home / "config.toml").write_text(f'[chain]\nrpc_url = "{w.url}"\n')
    provider.save(home / "identity.json")
    op_store = Store(tmp_path / "op.db")
    node_store = Store(home / "node.db")
    start = GENESIS + 4 * EPOCH_S
    raw = attest(op_store, op, provider, at=start + 1)
    record_attestation(node_store, open_envelope(raw, Attestation))  # the provider's node saw the same gossip
    await approve_allowance(w.rpc, w.pool, w.distributor.pubkey(), 10 * hour_emission(4), w.operators[:2], w.payer)
    async with ChainClient(w.url) as client:
        svc = EpochService(identity=op, params=params, store=op_store, client=client,
                           distributor=Distributor(w.rpc, op_store, w.distributor, w.pool), first_epoch=4, grace_s=0,
                           now=lambda: GENESIS + 5 * EPOCH_S)
        await svc.catch_up()
    from p2pnode.chain.rewards_inputs import stored_manifest

    record_manifest(node_store, stored_manifest(op_store, 4))
    node_store.close()

    def cli(*args):
        return CliRunner().invoke(app, [*args, "--home", str(home)])

    res = await trio.to_thread.run_sync(cli, "rewards", "verify", "--epoch", "4")
    assert res.exit_code == 0, res.output
    assert "MATCH" in res.output and "MISMATCH" not in res.output
    res = await trio.to_thread.run_sync(cli, "rewards", "earnings", "--json")
    assert res.exit_code == 0, res.output
    import json

    rows = json.loads(res.output)
    assert rows[0]["epoch"] == 4 and rows[0]["amount"] == hour_emission(4) and rows[0]["proof_ok"]
    assert rows[-1]["balance"] == hour_emission(4) and rows[-1]["paid_check"] == "ok"
    # the entry is checked against the transfer on chain (memo: epoch 4 and the manifest's root, exact amount)
    assert rows[0]["onchain"] == "ok" and len(rows[0]["signatures"]) == 1
    assert rows[-1]["received"] == hour_emission(4)
    # bare `p2pnode rewards` on a provider is the same report
    res = await trio.to_thread.run_sync(cli, "rewards", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == rows

    # a valid operator-signed manifest for epoch 4 that is not what was paid: the chain check says so, exit 1
    from p2pnode.chain.rewards import RewardEntry, split
    from p2pnode.chain.rewards_manifest import sign_manifest

    other = split(4, emission=hour_emission(4), carry_in=0, inputs=[
        RewardEntry(address=provider.address, amount=0, cls=1, issued=1, answered=1, stake=0, required=0),
        RewardEntry(address=h.ident(3).address, amount=0, cls=1, issued=1, answered=1, stake=0, required=0)])
    s = Store(home / "node.db")
    s.db.execute("DELETE FROM reward_manifests WHERE epoch = 4")
    record_manifest(s, open_envelope(sign_manifest(other, op, pool=params.rewards_pool, epoch_s=EPOCH_S,
                                                   created_at=GENESIS), __import__(
        "p2pnode.chain.rewards_manifest", fromlist=["RewardsManifest"]).RewardsManifest))
    s.close()
    res = await trio.to_thread.run_sync(cli, "rewards", "earnings", "--json")
    assert res.exit_code == 1
    rows = json.loads(res.output)
    assert rows[0]["proof_ok"] and rows[0]["onchain"] == "paid under another root"
    res = await trio.to_thread.run_sync(cli, "rewards", "earnings")
    assert res.exit_code == 1 and "paid under another root" in res.output and "Traceback" not in res.output
    # restore the true manifest for the checks below
    s = Store(home / "node.db")
    s.db.execute("DELETE FROM reward_manifests WHERE epoch = 4")
    record_manifest(s, stored_manifest(op_store, 4))
    s.close()

    # the node saw a second passed attestation the operator never counted: recomputation disagrees
    s = Store(home / "node.db")
    attest(s, op, h.ident(2), at=start + 2)
    s.close()
    res = await trio.to_thread.run_sync(cli, "rewards", "verify", "--epoch", "4")
    assert res.exit_code == 1 and "MISMATCH" in res.output
    res = await trio.to_thread.run_sync(cli, "rewards", "verify", "--epoch", "9")
    assert res.exit_code != 0
