"""Rewards epochs on running nodes: operators challenge providers over /iog/attest/1.0.0, gossip the verdicts and
manifests, and the pool's delegate pays — on a devnet of real processes and a real local chain.

The first tests run real in-process libp2p nodes on loopback (no chain): the provider's challenge server answers
an operator, refuses a peer that is not an operator with a typed error, answers one challenge at a time per device
(a second, concurrent one is told "busy" and retried), and survives garbage on the stream. The last one is the
whole loop on ``p2pnode.market.devnet`` (localnet + 2 operators + 2 providers as child processes).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path

import pytest
import trio

from p2pnode.compute.attest import PROTOCOL_ID
from p2pnode.compute.attest_service import (
    ChallengePolicy,
    Challenger,
    DeviceProver,
    NotAnOperator,
    ProverBusy,
    operator_peer_ids,
)
from p2pnode.config import NetConfig, NodeConfig, OfferConfig
from p2pnode.identity import Identity
from p2pnode.operator import BootstrapNode
from p2pnode.provider import ProviderNode
from p2pnode.store import Store
from p2pnode.wire import Device, open_envelope

from ..net.conftest import eventually, start

log = logging.getLogger(__name__)

CPU = [Device(kind="cpu", name="test cpu", mem_bytes=8 << 30)]
EPOCH_S = 10
# in-process tests run five nodes in one interpreter (one GIL) on a shared machine: claim a very slow CPU so the
# deadline (~10 s) tests the wiring, not the machine's load; the verdict still carries the measured speed
LENIENT = ChallengePolicy(target_s=0.2, n=256, b=128, opened=4, floor_tflops={"cpu": 0.00002})


# --- in-process nodes on loopback -----------------------------------------------------------------------------


def _cfg(home: Path, bootstrap: list[str] | None = None) -> NodeConfig:
    cfg = NodeConfig(home=home)
    cfg.net = NetConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=list(bootstrap or []), heartbeat_s=0.5,
                        dial_timeout_s=5.0)
    cfg.offer = OfferConfig(price=100, ttl_s=600, republish_s=60.0, min_s=1, max_s=3600)
    return cfg


def _home(tmp_path: Path, name: str) -> tuple[Path, Identity]:
    home = tmp_path / name
    ident = Identity.generate()
    ident.save(home / "identity.json")
    return home, ident


def _network_json(home: Path, operators: list[Identity]) -> None:
    """A network.json naming `operators` (no chain behind it: the provider only reads who may challenge it)."""
    from p2pnode.chain.network import NetworkParams

    filler = Identity.generate().address
    NetworkParams(cluster="localnet", rpc_url="http://127.0.0.1:9", genesis_time=int(time.time()), mint=filler,
                  operators=[o.address for o in operators], threshold=1, multisig=filler, treasury=filler,
                  rewards_pool=filler, deployer=filler, epoch_s=EPOCH_S).save(home / "network.json")


async def test_provider_serves_operator_refuses_stranger_one_at_a_time_and_survives_garbage(tmp_path):
    """Provider with a network.json: an operator's challenges pass (two at once: one is told busy, retried); a
    stranger gets NotAnOperator; garbage on the stream is dropped; verdicts reach the provider's store by gossip."""
    seed_home, seed_id = _home(tmp_path, "seed")
    op_id, stranger_id = Identity.generate(), Identity.generate()
    prov_home, prov_id = _home(tmp_path, "provider")
    _network_json(prov_home, [op_id])
    async with trio.open_nursery() as nursery:
        seed = (await start(nursery, BootstrapNode(_cfg(seed_home), identity=seed_id))).node
        addr = seed.addrs()[0]
        prov = (await start(nursery, ProviderNode(_cfg(prov_home, [addr]), identity=prov_id, devices=CPU,
                                                         jobs=False))).node
        assert prov.attest.operators == operator_peer_ids(prov.params)
        with trio.fail_after(60):
            await prov.attest.warmed.wait()  # torch imported: a challenge's deadline is not for imports
        op_home, _ = _home(tmp_path, "op")
        op = (await start(nursery, BootstrapNode(_cfg(op_home, [addr]), identity=op_id))).node
        st_home, _ = _home(tmp_path, "stranger")
        stranger = (await start(nursery, BootstrapNode(_cfg(st_home, [addr]), identity=stranger_id))).node
        assert await eventually(lambda: op.book.get(prov_id.peer_id) is not None
                                 and stranger.book.get(prov_id.peer_id) is not None, 30)
        policy = LENIENT
        op_store = Store(tmp_path / "op-duties.db")
        challenger = Challenger(op.net, op_id, op_store, publish=op._publish, policy=policy, busy_wait_s=20)
        assert challenger.providers() == [prov_id.peer_id]

        # a stranger is refused with a typed error, before anything runs on the device
        other = Challenger(stranger.net, stranger_id, Store(tmp_path / "stranger.db"), policy=policy)
        with pytest.raises(NotAnOperator):
            await other.challenge(prov_id.peer_id)
        assert prov.attest.stats.refused["not_operator"] == 1

        # garbage frames: the stream is dropped, the node keeps serving
        from libp2p.peer.id import ID

        from p2pnode.wire import frame

        from p2pnode.net.host import peer_info

        with trio.fail_after(10):  # the book knows the provider; the peerstore may not have its address yet
            await op.net.host.connect(peer_info(prov.addrs()[0]))
            stream = await op.net.host.new_stream(ID.from_base58(prov_id.peer_id), [PROTOCOL_ID])
        await stream.write(frame(b"\x93not an envelope"))
        with trio.move_on_after(5):
            try:
                while await stream.read(1024):
                    pass
            except Exception:  # StreamEOF: the provider closed it
                pass
        with trio.move_on_after(1):
            await stream.close()
        assert await eventually(lambda: sum(prov.attest.stats.errors.values()) == 1, 5), prov.attest.stats

        # two challenges at the same instant: one device, one at a time — the second is told busy and retries
        async with trio.open_nursery() as n:
            n.start_soon(challenger.challenge, prov_id.peer_id)
            n.start_soon(challenger.challenge, prov_id.peer_id)
        assert [o.attestation.passed for o in challenger.outcomes] == [True, True], \
            [o.attestation.reason for o in challenger.outcomes]
        assert prov.attest.stats.refused["busy"] >= 1 and challenger.busy_retries >= 1, prov.attest.stats
        # the provider reads each verdict after the verifier sent it: it may trail the challenger by a moment
        assert await eventually(lambda: prov.attest.stats.passed == 2 and not prov.attest.busy, 10), \
            prov.attest.stats
        # recorded by the operator and, through the verdict and /iog/attest/1 gossip, by the provider
        assert len(op_store.query("SELECT 1 FROM attestations WHERE passed = 1")) == 2
        assert await eventually(lambda: len(prov.store.query("SELECT 1 FROM attestations")) == 2, 10)
        assert len(seed.net.gossip.topic_peers("/iog/attest/1")) >= 2  # every role subscribed
        nursery.cancel_scope.cancel()


class _SlowSetup(DeviceProver):
    """Holds the device a little longer (inside the deadline), so concurrent challenges surely overlap."""

    def setup(self, ch):
        time.sleep(1.5)
        super().setup(ch)


async def test_busy_refusal_carries_proof_and_is_typed_when_unproven(tmp_path):
    """A verifier that will not wait is told "busy", with the challenge the device is answering as proof: signed by
    an operator, it drops its own challenge uncounted; by anyone else, ProverBusy is raised (the epoch service then
    records the challenge as not answered). A provider without network.json serves anyone, as before."""
    seed_home, seed_id = _home(tmp_path, "seed")
    prov_home, prov_id = _home(tmp_path, "provider")  # no network.json: anyone may challenge
    async with trio.open_nursery() as nursery:
        seed = (await start(nursery, BootstrapNode(_cfg(seed_home), identity=seed_id))).node
        prov = (await start(nursery, ProviderNode(_cfg(prov_home, [seed.addrs()[0]]), identity=prov_id,
                                                         devices=CPU, attest_prover=_SlowSetup))).node
        assert prov.attest.operators is None and prov.jobs is None
        with trio.fail_after(60):
            await prov.attest.warm()  # a network-less node warms on demand
        assert await eventually(lambda: seed.book.get(prov_id.peer_id) is not None, 30)
        patient = Challenger(seed.net, seed_id, Store(tmp_path / "a.db"), policy=LENIENT)
        trusting = Challenger(seed.net, seed_id, Store(tmp_path / "b.db"), policy=LENIENT, busy_wait_s=0,
                              operators={seed_id.peer_id})
        strict = Challenger(seed.net, seed_id, Store(tmp_path / "c.db"), policy=LENIENT, busy_wait_s=0,
                            operators={Identity.generate().peer_id})
        results = {}

        async def run(name, ch):
            try:
                await ch.challenge(prov_id.peer_id)
                results[name] = "ok"
            except ProverBusy as exc:
                results[name] = exc

        async with trio.open_nursery() as n:
            n.start_soon(run, "patient", patient)
            assert await eventually(lambda: 0 in prov.attest.busy, 10)  # the patient one holds the device
            n.start_soon(run, "trusting", trusting)
            n.start_soon(run, "strict", strict)
        assert results["patient"] == "ok" and patient.outcomes[0].attestation.passed
        # proven busy: returned without a verdict, nothing recorded for that challenge
        assert results["trusting"] == "ok" and trusting.busy_skipped == 1 and not trusting.outcomes, \
            (results, trusting.outcomes, prov.attest.stats, trusting.busy_retries)
        assert trusting.store.query("SELECT COUNT(*) FROM attestations")[0][0] == 0
        # unproven (signer is not an operator it knows): a typed error carrying the proof it could not accept
        busy = results["strict"]
        assert isinstance(busy, ProverBusy) and busy.proof and busy.retry_after_s > 0
        assert trusting.busy_proven(prov_id.peer_id, 0, busy)
        assert not trusting.busy_proven(prov_id.peer_id, 1, busy)  # another device
        assert not trusting.busy_proven(seed_id.peer_id, 0, busy)  # another provider
        assert not trusting.busy_proven(prov_id.peer_id, 0, busy, now=time.time() + 3600)  # stale
        assert not trusting.busy_proven(prov_id.peer_id, 0, ProverBusy("no proof"))
        nursery.cancel_scope.cancel()


# --- the whole loop on a devnet -------------------------------------------------------------------------------


def _ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


def _paid_epochs(db: Path) -> dict[int, dict[str, int]]:
    """The delegate's durable payout record: epoch -> {payee address: amount}, for epochs fully paid."""
    if not db.exists():
        return {}
    con = _ro(db)
    try:
        rows = con.execute("SELECT t.epoch, t.address, t.amount FROM reward_transfers t JOIN reward_epochs e "
                           "ON e.epoch = t.epoch WHERE e.status = 'paid'").fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return {}
    finally:
        con.close()
    out: dict[int, dict[str, int]] = {}
    for epoch, address, amount in rows:
        out.setdefault(epoch, {})[address] = amount
    return out


@pytest.mark.timeout(150)
async def test_devnet_epoch_challenges_attests_allocates_and_pays(tmp_path):
    from solana.rpc.async_api import AsyncClient

    from p2pnode.chain.emission import hour_emission
    from p2pnode.chain.rewards_distribute import Pool, approve_allowance
    from p2pnode.chain.rewards_manifest import RewardsManifest
    from p2pnode.chain.rpc import ChainClient
    from p2pnode.chain.stake import required_stake
    from p2pnode.market.devnet import PROVIDER_IO, Devnet, io_balance

    t0 = time.monotonic()
    (tmp_path / "devnet").mkdir()
    net = Devnet(tmp_path / "devnet", providers=2, say=log.info)
    try:
        await net.start_chain()
        async with ChainClient(net.rpc_url, timeout_s=20) as client:
            await net.genesis(client)
            net.params.epoch_s = EPOCH_S  # devnet time: 10-second epochs, same hour index arithmetic
            net.params.save(net.root / "network.json")
            # the quorum makes operator-1 the rewards pool's delegate (the allowance covers many epochs)
            rpc = AsyncClient(net.rpc_url, timeout=30)
            try:
                ops = [o.solana_keypair() for o in net.ops]
                await approve_allowance(rpc, Pool.from_network(net.params), ops[0].pubkey(),
                                        1000 * hour_emission(0), ops[: net.params.threshold], ops[0])
            finally:
                await rpc.close()
            await net.start_operators()
            net.start_providers()
            await net.fund_and_stake(client)
            stake = required_stake(net.params, ["cpu"])
            providers = {p.address: p for p in net.provider_ids}
            op_db = net.home("operator-1") / "node.db"

            # wait for an epoch that paid both providers
            both = None
            with trio.move_on_after(75):
                while both is None:
                    await trio.sleep(0.5)
                    both = next((e for e, pay in sorted(_paid_epochs(op_db).items())
                                 if set(providers) <= set(pay)), None)
            assert both is not None, (f"no epoch paid both providers; operator-1 log:\n"
                                      f"{net.child('operator-1').tail(3000)}")
            # stop the delegate between payouts (the next is an epoch away) so the record and the chain agree
            net.child("operator-1").stop()
            t_paid = time.monotonic() - t0

            con = _ro(op_db)
            try:
                assert con.execute("SELECT COUNT(*) FROM reward_batches WHERE status != 'done'").fetchone()[0] == 0
                own = {e: open_envelope(bytes(raw), RewardsManifest).message
                       for e, raw in con.execute("SELECT epoch, envelope FROM reward_own_manifests")}
                attested = {r[0] for r in con.execute("SELECT provider FROM attestations WHERE passed = 1")}
            finally:
                con.close()
            paid = _paid_epochs(op_db)
            # challenged and attested (passed verdicts signed by an operator), allocated in the manifest
            assert {p.peer_id for p in providers.values()} <= attested
            m = own[both]
            assert {e.address for e in m.entries} == set(providers)
            assert all(e.answered >= 1 and e.stake >= stake for e in m.entries)
            # every paid epoch paid exactly its own manifest's amounts, and balances moved by exactly that
            for epoch, pay in paid.items():
                assert pay == {e.address: e.amount for e in own[epoch].entries}
            earned = {a: sum(pay.get(a, 0) for pay in paid.values()) for a in providers}
            for a in providers:
                assert earned[a] > 0
                assert await io_balance(client, a, net.params.mint) == PROVIDER_IO - stake + earned[a]

        # a provider's own home (gossip it stored) recomputes the epoch and checks its entry and balance
        from typer.testing import CliRunner

        from p2pnode.cli import app
        from p2pnode.cli import rewards as _  # noqa: F401  (registers the commands)

        prov_addr = net.provider_ids[0].address
        home = net.home("provider-1")

        def cli(*args):
            return CliRunner().invoke(app, [*args, "--home", str(home), "--json"])

        res = await trio.to_thread.run_sync(cli, "rewards", "verify", "--epoch", str(both))
        assert res.exit_code == 0, res.output
        verdict = json.loads(res.output)
        assert verdict["match"] and verdict["manifest_root"] == m.root.hex()
        res = await trio.to_thread.run_sync(cli, "rewards", "earnings")
        assert res.exit_code == 0, res.output
        rows = json.loads(res.output)
        mine = next(r for r in rows if r.get("epoch") == both)
        assert mine["amount"] == m.entry_for(prov_addr).amount and mine["proof_ok"]
        assert rows[-1]["paid_check"] == "ok"
        log.info("devnet epoch loop: first epoch paying both providers confirmed %.1f s after start", t_paid)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(net.stop)
