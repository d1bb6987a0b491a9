"""Slots, the blockhash window, durable nonces and the dev time warp.

The window tests run an in-process LocalnetServer with 10 ms slots (same code, faster clock) so 150 slots pass in
about two seconds; it is still reached over real HTTP by ChainClient.
"""

from __future__ import annotations

import pytest
import trio
from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import Message
from solders.system_program import (
    TransferParams,
    advance_nonce_account,
    AdvanceNonceAccountParams,
    create_nonce_account,
    transfer,
)
from solders.transaction import Transaction

from p2pnode.chain.localnet import LocalnetServer
from p2pnode.chain.rpc import BlockhashExpired, ChainClient, ChainError

SOL = 10**9


@pytest.fixture
async def fast_localnet(nursery):
    server = LocalnetServer(host="127.0.0.1", port=0, dev=True, slot_s=0.01)
    await nursery.start(server.serve)
    return server


def _pay(payer: Keypair, to, lamports: int, bh: Hash) -> Transaction:
    return Transaction.new_signed_with_payer(
        [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=to, lamports=lamports))],
        payer.pubkey(), [payer], bh)


async def _wait_slots(c: ChainClient, n: int) -> None:
    start = await c.slot()
    with trio.fail_after(30):
        while await c.slot() < start + n:
            await trio.sleep(0.02)


async def test_slots_tick_and_clock_follows_wall_time(client):
    import time
    s0, t0 = await client.slot(), await client.unix_time()
    await trio.sleep(1.0)
    s1, t1 = await client.slot(), await client.unix_time()
    assert s1 >= s0 + 1  # 400 ms slots; generous for a loaded machine
    assert abs(t1 - time.time()) < 5 and t1 >= t0


async def test_blockhash_stays_valid_within_window_then_expires(fast_localnet):
    async with ChainClient(fast_localnet.url, timeout_s=20) as c:
        payer = Keypair()
        await c.airdrop(payer.pubkey(), 2 * SOL)
        old, last_valid = await c.latest_blockhash_with_height()
        await _wait_slots(c, 20)  # a client that fetched a blockhash 20 slots ago still gets in
        assert await c.blockhash_valid(old)
        await c.send(_pay(payer, Keypair().pubkey(), SOL // 10, old))
        await _wait_slots(c, 160)  # past the 150-slot window
        assert not await c.blockhash_valid(old)
        assert await c.slot() > last_valid
        with pytest.raises(BlockhashExpired):
            await c.send(_pay(payer, Keypair().pubkey(), SOL // 10, old))


async def test_expired_blockhash_without_preflight_is_detected_by_confirm(fast_localnet):
    async with ChainClient(fast_localnet.url, timeout_s=20, poll_s=0.02) as c:
        payer = Keypair()
        await c.airdrop(payer.pubkey(), SOL)
        old = await c.latest_blockhash()
        await _wait_slots(c, 160)
        tx = _pay(payer, Keypair().pubkey(), 1000, old)
        sig = await c.send_unconfirmed(tx, skip_preflight=True)  # dropped by the cluster, as on a validator
        with pytest.raises(BlockhashExpired):
            await c.confirm(sig, 10, blockhash=old)


async def test_durable_nonce_transactions(fast_localnet):
    """A nonce transaction stays valid far past the blockhash window; advancing the nonce invalidates it."""
    async with ChainClient(fast_localnet.url, timeout_s=20) as c:
        payer, nonce, dest = Keypair(), Keypair(), Keypair().pubkey()
        await c.airdrop(payer.pubkey(), 5 * SOL)
        ixs = create_nonce_account(payer.pubkey(), nonce.pubkey(), payer.pubkey(), await c.rent_exempt(80))
        await c.send(Transaction.new_signed_with_payer(ixs, payer.pubkey(), [payer, nonce],
                                                       await c.latest_blockhash()))
        await _wait_slots(c, 2)  # a new nonce account is usable once the blockhash it stored has moved on

        async def stored_nonce() -> Hash:
            acc = await c.get_account(nonce.pubkey())
            return Hash(bytes(acc.data)[40:72])

        def voucher(lamports: int, value: Hash) -> Transaction:
            msg = Message.new_with_nonce(
                [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=dest, lamports=lamports))],
                payer.pubkey(), nonce.pubkey(), payer.pubkey())
            return Transaction([payer], msg, value)

        value = await stored_nonce()
        older = voucher(SOL // 10, value)
        newer = voucher(SOL // 5, value)
        await _wait_slots(c, 170)  # far beyond the window: the nonce keeps both valid
        assert not await c.blockhash_valid(value)
        await c.send(newer)
        assert await c.balance(dest) == SOL // 5
        assert await stored_nonce() != value
        with pytest.raises(BlockhashExpired):  # the nonce advanced: every older voucher is dead
            await c.send(older)
        assert await c.balance(dest) == SOL // 5
        # The advance-nonce instruction alone also works with the current nonce.
        cur = await stored_nonce()
        await _wait_slots(c, 1)
        adv = Transaction.new_signed_with_payer(
            [advance_nonce_account(AdvanceNonceAccountParams(nonce_pubkey=nonce.pubkey(),
                                                             authorized_pubkey=payer.pubkey()))],
            payer.pubkey(), [payer], cur)
        await c.send(adv)
        assert await stored_nonce() != cur


async def test_time_warp_dev_only(localnet, client, nursery):
    before = await client.unix_time()
    after = await client.warp_clock(7 * 86400)
    assert after >= before + 7 * 86400
    assert await client.unix_time() >= before + 7 * 86400
    await trio.sleep(0.5)  # slot ticks keep the offset
    assert await client.unix_time() >= before + 7 * 86400
    prod = LocalnetServer(host="127.0.0.1", port=0, dev=False)
    await nursery.start(prod.serve)
    async with ChainClient(prod.url, timeout_s=5) as c:
        with pytest.raises(ChainError, match="--dev"):
            await c.warp_clock(60)
