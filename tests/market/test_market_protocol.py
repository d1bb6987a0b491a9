"""Adversarial renters and a cheating provider, against real provider processes and real arbiters.

Malformed, oversized, out-of-order, replayed and forged negotiation frames each get a typed refusal, change no
state (no agreement stored, no slot held, no nonce leased) and the provider keeps serving. A provider that
returns a wrong result is caught by the renter's verifier, loses the job's payment, is reported with signed
evidence (gossiped and sent to the arbiter) and is slashed by the operators' quorum.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace

import numpy as np
import pytest
import trio
from libp2p.peer.id import ID

from p2pnode.chain import escrow
from p2pnode.chain.rpc import ChainClient
from p2pnode.chain.stake import deposit, required_stake, stake_of
from p2pnode.compute.blobs import BlobRef
from p2pnode.compute.jobs import JobSpec
from p2pnode.config import IO, load_config
from p2pnode.identity import Identity, public_key_from_peer_id
from p2pnode.market.devnet import give_io, matmul_job
from p2pnode.market.evidence import EvidenceTopic
from p2pnode.market.negotiation import (JOB_PROTOCOL, JobAccept, JobQuote, JobRequest, JobStream, Refused)
from p2pnode.market.renter_jobs import NoProvider, _quote_of
from p2pnode.market.reputation import Wanted
from p2pnode.net.host import peer_info
from p2pnode.provider import ProviderNode
from p2pnode.renter import LightClient
from p2pnode.wire import Device, pack, signing_payload

from ..net.conftest import start  # a node run in its own task, stopped with the test
from .conftest import new_renter, provider_jobs, provider_peer

WANT = Wanted(max_s=60)


async def open_job_stream(renter, offer) -> JobStream:
    host = renter.light.net.host
    addr = offer.addrs[0] if "/p2p/" in offer.addrs[0] else f"{offer.addrs[0]}/p2p/{offer.peer_id}"
    with trio.fail_after(10):
        await host.connect(peer_info(addr))
        stream = await host.new_stream(ID.from_base58(offer.peer_id), [JOB_PROTOCOL])
    return JobStream(stream, renter.identity, peer_key=public_key_from_peer_id(offer.peer_id), timeout_s=10)


def request(renter, arbiter: str, spec: JobSpec | None = None, **kw) -> JobRequest:
    fields = dict(req_id=os.urandom(16), spec=spec or matmul_job(64), max_price=10**12, max_s=60, arbiter=arbiter,
                  payout=renter.address, device="")
    fields.update(kw)
    return JobRequest(**fields)


def signed_raw(ident: Identity, t: str, body_obj) -> bytes:
    body = pack(body_obj)
    return pack({"v": 1, "t": t, "body": body, "signer": ident.public_key,
                 "sig": ident.sign(signing_payload(t, body))})


async def expect_refusal(js: JobStream, reason: str) -> str:
    with pytest.raises(Refused) as info:
        await js.recv(JobQuote)
    assert info.value.reason == reason, info.value
    await js.close()
    return info.value.detail


async def test_malformed_out_of_order_replayed_and_forged_frames(market_net):
    net = market_net
    renter = await new_renter(net, "renter-adv")
    arbiter = net.params.arbiter_keys[0]
    rows_before = len(provider_jobs(net, 1))
    async with renter.running(background_refunds=False):
        offers = await renter.wait_for_offers(WANT, count=2, timeout=30)
        offer = next(o for o in offers if o.peer_id == provider_peer(net, 1))

        js = await open_job_stream(renter, offer)  # random bytes instead of a request
        await js.send_raw(os.urandom(300))
        await expect_refusal(js, "bad_request")

        js = await open_job_stream(renter, offer)  # valid msgpack, not an envelope
        await js.send_raw(pack([1, 2, 3]))
        await expect_refusal(js, "bad_request")

        js = await open_job_stream(renter, offer)  # out of order: an accept before any request
        await js.send(JobAccept(quote=b"\x00" * 64))
        await expect_refusal(js, "bad_request")

        js = await open_job_stream(renter, offer)  # a frame claiming 64 MiB: refused before it is read
        await js.send_raw(b"")  # (an empty frame is fine to send; the next is the oversize header)
        await js.stream.write(bytes([0x80, 0x80, 0x80, 0x20]))
        await expect_refusal(js, "bad_request")

        js = await open_job_stream(renter, offer)  # forged: the signature does not match the body
        good = request(renter, arbiter)
        raw = signed_raw(renter.identity, "job_request", good.to_wire())
        env = __import__("msgpack").unpackb(raw)
        env["sig"] = bytes(64)
        await js.send_raw(pack(env))
        await expect_refusal(js, "bad_request")

        js = await open_job_stream(renter, offer)  # an unknown job kind: no code of a renter's is ever run
        body = request(renter, arbiter).to_wire()
        body["spec"]["kind"] = "shell"
        await js.send_raw(signed_raw(renter.identity, "job_request", body))
        assert "not served" in await expect_refusal(js, "kind")

        js = await open_job_stream(renter, offer)  # oversized input: refused before a byte is uploaded
        huge = JobSpec(kind="matmul", params=matmul_job(64).params,
                       inputs=[BlobRef(sha256=hashlib.sha256(b"x").digest(), size=300 << 20)])
        await js.send(request(renter, arbiter, spec=huge))
        await expect_refusal(js, "too_large")

        js = await open_job_stream(renter, offer)  # too cheap
        await js.send(request(renter, arbiter, max_price=1))
        await expect_refusal(js, "price")

        js = await open_job_stream(renter, offer)  # an arbiter that is not one of the network's
        await js.send(request(renter, renter.address))
        await expect_refusal(js, "bad_request")

        # a quote from an earlier stream replayed into a new one: the provider only accepts its own quote
        js1 = await open_job_stream(renter, offer)
        await js1.send(request(renter, arbiter))
        old_quote = (await js1.recv(JobQuote)).raw
        await js1.close()
        js = await open_job_stream(renter, offer)
        await js.send(request(renter, arbiter))
        await js.recv(JobQuote)
        await js.send(JobAccept(quote=old_quote))
        with pytest.raises(Refused) as info:
            await js.recv(JobQuote)
        assert info.value.reason == "bad_request" and "quote" in info.value.detail
        await js.close()

        # an accept signed by someone else than the requester
        js = await open_job_stream(renter, offer)
        await js.send(request(renter, arbiter))
        quote = (await js.recv(JobQuote)).raw
        await js.send_raw(signed_raw(Identity.generate(), "job_accept", {"quote": quote}))
        await expect_refusal(js, "bad_request")

        # a quote reserves the provider's one device: a second request meanwhile is refused as busy
        holder = await open_job_stream(renter, offer)
        await holder.send(request(renter, arbiter))
        await holder.recv(JobQuote)
        js = await open_job_stream(renter, offer)
        await js.send(request(renter, arbiter))
        assert "device" in await expect_refusal(js, "busy")
        await holder.close()  # walking away from a quote frees the device, and the offer says so again
        assert await renter.book.wait_for(lambda b: not b.get(offer.peer_id).devices[0].busy, 20)

        # nothing of the above was stored, and the provider's one device is free again: a real job runs there
        assert len(provider_jobs(net, 1)) == rows_before
        out = await renter.rent(matmul_job(96), [], WANT, busy_wait_s=60, exclude={provider_peer(net, 2)})
        assert out.verified and out.settle_sig and out.provider == provider_peer(net, 1)
    assert len(provider_jobs(net, 1)) == rows_before + 1


def flip_one_entry(result):
    """The cheat: one entry of C changed (by far less than a careless provider would)."""
    c = np.frombuffer(result.outputs[0], dtype="<f4").copy()
    c[len(c) // 3] += 0.5 + abs(c[len(c) // 3])
    return replace(result, outputs=[c.astype("<f4").tobytes(), *result.outputs[1:]])


async def in_process_provider(net, name: str, price: int, device_names: list[str], *, stake: bool = True, **kw):
    """A provider in this process (so a test can reach into it), funded with 500 IO and, if `stake`, staked."""
    ident = Identity.generate()
    async with ChainClient(net.rpc_url, timeout_s=20) as client:
        await client.airdrop(ident.solana_keypair().pubkey(), 2 * 10**9)
        await give_io(client, net.params, [o.solana_keypair() for o in net.ops], ident.address, 500 * IO)
        if stake:
            await deposit(client, ident.solana_keypair(), net.params, required_stake(net.params, ["cpu"] * len(
                device_names)))
    home = net._write_home(name, ident, price=price, bootstrap=net.seed_addr)
    devices = [Device(kind="cpu", name=n, mem_bytes=4 << 30) for n in device_names]
    return ident, ProviderNode(load_config(home=home), identity=ident, devices=devices, **kw)


@pytest.mark.timeout(240)
async def test_unstaked_refused_then_wrong_result_is_caught_reported_and_slashed(market_net):
    net = market_net
    ident, cheater = await in_process_provider(net, "cheater", 30 * IO, ["cheater cpu"], stake=False,
                                               job_tamper=flip_one_entry)
    renter = await new_renter(net, "renter-victim")
    watch_home = net._write_home("watcher", Identity.generate(), bootstrap=net.seed_addr)
    watcher = LightClient(load_config(home=watch_home).net, identity=Identity.generate())
    seen_evidence: list = []
    want = Wanted(gpu="cheater", max_s=60)

    async with trio.open_nursery() as nursery:
        await start(nursery, cheater)
        await start(nursery, watcher)
        await watcher.net.gossip.add_topic(EvidenceTopic(net.params), lambda signed, msg: seen_evidence.append(signed))
        async with renter.running(background_refunds=False):
            # no stake yet: a typed refusal, nothing agreed
            with pytest.raises(NoProvider) as info:
                await renter.rent(matmul_job(64), [], want, discover_s=30)
            assert "stake" in str(info.value)
            assert renter.agreements.count() == 0

            async with ChainClient(net.rpc_url, timeout_s=20) as client:
                need = required_stake(net.params, ["cpu"])
                await deposit(client, ident.solana_keypair(), net.params, need)
                staked = await stake_of(client, net.params, ident.address)
            treasury_before, renter_before, cheater_before = await _balances_of(
                net, [net.params.treasury, renter.address, ident.address])

            with pytest.raises(NoProvider) as info:
                await renter.rent(matmul_job(96), [], want)
            assert "bad_result" in str(info.value)
            [row] = renter.agreements.list(role="renter", states=("abandoned",))
            assert row.verdict.startswith("failed") and row.peer == ident.peer_id
            a = _quote_of(row.quote).agreement

            # the arbiter checked the evidence and the quorum slashed the stake (memo carries the evidence hash)
            async with ChainClient(net.rpc_url, timeout_s=20) as client:
                after_stake = await stake_of(client, net.params, ident.address)
            assert after_stake == staked - staked * renter.market.slash_bps // 10_000
            assert (await _balances_of(net, [net.params.treasury]))[0] - treasury_before == staked - after_stake
            # ... and everyone could see the signed evidence on /iog/evidence/1
            with trio.fail_after(15):
                while not seen_evidence:
                    await trio.sleep(0.1)
            assert seen_evidence[0].signer == renter.identity.public_key

            # the renter pays at most the vouchers it sent while the job ran: either the provider settled the
            # latest it held (the rest came back to the renter then) or, after the deadline, the renter refunds
            # with the arbiter
            async with ChainClient(net.rpc_url, timeout_s=20) as client:
                await client.warp_clock(a.deadline - await client.unix_time() + 5)
            done = await renter.refund_due()
            assert [j for j, _ in done] == [a.job_id]
            assert renter.agreements.get(a.job_id).state in ("refunded", "closed")
            renter_after, cheater_after = await _balances_of(net, [renter.address, ident.address])
            settled = cheater_after - cheater_before
            assert 0 <= settled <= row.cumulative
            assert renter_before - renter_after == settled + escrow.fee_of(settled, a.fee_bps)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(180)
async def test_a_fresh_provider_offers_only_once_a_job_can_start_so_nobody_pays_for_its_start_up(market_net):
    """The first job on a provider that just started runs at once: its offer went out after the sandbox had a
    warm worker, so the renter is not billed for a torch import (seconds here; a 64^3 job is milliseconds)."""
    net = market_net
    _, fresh = await in_process_provider(net, "fresh", 30 * IO, ["fresh cpu"])
    renter = await new_renter(net, "renter-fresh")
    idle_at_publish: list[int] = []
    publish = fresh.publisher.publish_now

    async def recording_publish():
        idle_at_publish.append(fresh.jobs._pool.idle("cpu"))
        return await publish()
    fresh.publisher.publish_now = recording_publish
    async with trio.open_nursery() as nursery:
        await start(nursery, fresh)
        async with renter.running(background_refunds=False):
            out = await renter.rent(matmul_job(64), [], Wanted(gpu="fresh", max_s=60), discover_s=30)
        assert idle_at_publish and idle_at_publish[0] >= 1  # the very first offer: a worker was already waiting
        assert out.verified and out.seconds < 0.5, out.seconds
        nursery.cancel_scope.cancel()


def skip_last_rows(result):
    """A cheat in the part of C that is sent after the job (the parts before it are already out): its last 8 rows
    of 1024 left as zeros, work the provider never did."""
    c = np.frombuffer(result.outputs[0], dtype="<f4").copy()
    c[-8 * 1024:] = 0.0
    return replace(result, outputs=[c.astype("<f4").tobytes(), *result.outputs[1:]])


@pytest.mark.timeout(180)
async def test_a_wrong_result_sent_in_parts_is_caught_and_never_paid_in_full(market_net):
    """A 4 MiB C comes in two parts; the provider skipped rows of the second. The renter checks the bytes it
    assembled (the signed sha256 covers parts and rest alike), finds the result wrong, sends no final voucher and
    leaves the deposit to the arbiter refund."""
    net = market_net
    ident, cheater = await in_process_provider(net, "partcheat", 30 * IO, ["partcheat cpu"],
                                               job_tamper=skip_last_rows)
    renter = await new_renter(net, "renter-parts-cheated")
    async with trio.open_nursery() as nursery:
        await start(nursery, cheater)
        async with renter.running(background_refunds=False):
            with pytest.raises(NoProvider) as info:
                await renter.rent(matmul_job(1024), [], Wanted(gpu="partcheat", max_s=60), discover_s=30)
            assert "bad_result" in str(info.value)
            [row] = renter.agreements.list(role="renter", states=("abandoned",))
            assert row.peer == ident.peer_id and row.verdict.startswith("failed")
            a = _quote_of(row.quote).agreement
            assert row.cumulative < a.deposit  # only what was vouched while the job ran; no final voucher
        nursery.cancel_scope.cancel()


async def _balances_of(net, owners: list[str]) -> list[int]:
    from p2pnode.chain import token as tk

    async with ChainClient(net.rpc_url, timeout_s=20) as client:
        out = []
        for o in owners:
            key = tk.pubkey(o)
            acc = await client.get_account(key)
            if acc is not None and acc.owner == tk.TOKEN_PROGRAM_ID:  # a token account itself (the treasury)
                out.append(tk.parse_token_account(acc.data).amount)
            else:
                acc = await client.get_account(tk.ata(key, tk.pubkey(net.params.mint)))
                out.append(0 if acc is None else tk.parse_token_account(acc.data).amount)
        return out


@pytest.mark.timeout(240)
async def test_a_two_device_provider_runs_two_jobs_at_once_and_republishes_capacity(market_net):
    """One job per free device at the same time; the offer lists the free devices as slots are taken and freed."""
    from .renter_proc import attest_job

    net = market_net
    ident, twin = await in_process_provider(net, "twin", 20 * IO, ["twin cpu 0", "twin cpu 1"])
    offered: list[int] = []  # free devices in every offer the node published
    held: list[int] = []  # devices held (quoted or running) at every capacity change
    publish = twin.publisher.publish_now

    async def recording_publish():
        offer = await publish()
        assert len(offer.devices) == 2  # always listed in the same order: challenges name devices by index
        offered.append(sum(not d.busy for d in offer.devices))
        return offer
    twin.publisher.publish_now = recording_publish
    on_capacity = twin.jobs.on_capacity

    def recording_capacity() -> None:
        held.append(sum(slot.holder is not None for slot in twin.jobs.slots))
        on_capacity()
    twin.jobs.on_capacity = recording_capacity
    renters = [await new_renter(net, f"renter-twin{i}") for i in range(2)]
    want = Wanted(gpu="twin", max_s=180)
    outcomes = []

    async def one(r) -> None:
        async with r.running(background_refunds=False):
            outcomes.append(await r.rent(attest_job(1500), [], want, busy_wait_s=0))

    async with trio.open_nursery() as nursery:
        await start(nursery, twin)
        async with trio.open_nursery() as jobs:
            for r in renters:
                jobs.start_soon(one, r)
        nursery.cancel_scope.cancel()
    assert len(outcomes) == 2 and all(o.verified and o.provider == ident.peer_id for o in outcomes)
    assert all(len(o.attempts) == 1 for o in outcomes)  # neither was told "busy": both devices were used at once
    assert twin.jobs.stats.started == 2 and twin.jobs.stats.refused.get("busy", 0) == 0
    assert max(held) == 2 and held[-1] == 0  # both devices taken at once, both freed at the end
    assert 1 in offered and offered[0] == 2  # re-published with one free device while a job held the other
