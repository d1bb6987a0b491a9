"""ChainClient against the real localnet over HTTP: transfers, typed errors, airdrop, clock."""

from __future__ import annotations

import pytest
from solders.keypair import Keypair
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction

from p2pnode.chain.rpc import BlockhashExpired, InsufficientFunds

SOL = 10**9


def _transfer(payer: Keypair, to, lamports: int, blockhash) -> Transaction:
    ix = transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=to, lamports=lamports))
    return Transaction.new_signed_with_payer([ix], payer.pubkey(), [payer], blockhash)


async def test_transfer_lands_and_balances_move(client, funded_keypair):
    payer = await funded_keypair(2 * SOL)
    assert await client.balance(payer.pubkey()) == 2 * SOL
    to = Keypair().pubkey()
    sig = await client.send(_transfer(payer, to, SOL // 2, await client.latest_blockhash()))
    assert await client.balance(to) == SOL // 2
    assert await client.balance(payer.pubkey()) == 2 * SOL - SOL // 2 - 5000
    assert sig is not None


async def test_insufficient_funds_is_typed(client, funded_keypair):
    payer = await funded_keypair(SOL)
    with pytest.raises(InsufficientFunds):
        await client.send(_transfer(payer, Keypair().pubkey(), 5 * SOL, await client.latest_blockhash()))
    broke = Keypair()
    with pytest.raises(InsufficientFunds):
        await client.send(_transfer(broke, Keypair().pubkey(), 1, await client.latest_blockhash()))


async def test_unknown_blockhash_is_typed(client, funded_keypair):
    from solders.hash import Hash
    payer = await funded_keypair(SOL)
    with pytest.raises(BlockhashExpired):
        await client.send(_transfer(payer, Keypair().pubkey(), 10**6, Hash.new_unique()))


async def test_confirm_timeout_and_reads(client, funded_keypair):
    from p2pnode.chain.rpc import AccountMissing, ConfirmTimeout
    never = Keypair().sign_message(b"never sent")
    with pytest.raises(ConfirmTimeout):
        await client.confirm(never, 0.5)
    payer = await funded_keypair(SOL)
    missing = Keypair().pubkey()
    accs = await client.get_accounts([payer.pubkey(), missing] * 60)  # > 100: chunked
    assert len(accs) == 120 and accs[0].lamports == SOL and accs[1] is None
    assert await client.get_account(missing) is None
    assert await client.balance(missing) == 0
    with pytest.raises(AccountMissing):
        await client.token_balance(missing)
    sim = await client.simulate(_transfer(payer, missing, 10**6, await client.latest_blockhash()))
    assert sim.err is None and sim.logs
    assert await client.rent_exempt(0) == 890_880


async def test_not_a_solana_endpoint(localnet):
    from p2pnode.chain.rpc import ChainClient, ChainError
    async with ChainClient(localnet.url + "/nope", timeout_s=5, retries=1, backoff_s=0.01) as c:
        with pytest.raises(ChainError, match="HTTP 404"):
            await c.slot()


async def test_send_survives_rpc_outage(fresh_localnet):
    """The RPC goes away while a payment is being sent: the client retries, it lands exactly once."""
    import trio

    from p2pnode.chain.rpc import ChainClient
    net = fresh_localnet
    async with ChainClient(net.url, timeout_s=10, retries=40, backoff_s=0.1) as c:
        payer, to = Keypair(), Keypair().pubkey()
        await c.airdrop(payer.pubkey(), 2 * SOL)
        tx = _transfer(payer, to, SOL // 3, await c.latest_blockhash())
        await trio.to_thread.run_sync(net.stop)
        async with trio.open_nursery() as nursery:
            done = []

            async def pay():
                done.append(await c.send(tx))

            nursery.start_soon(pay)
            await trio.sleep(0.4)
            await trio.to_thread.run_sync(net.start)
        assert done == [tx.signatures[0]]
        assert await c.send(tx) == tx.signatures[0]  # resending is harmless
        assert await c.balance(to) == SOL // 3
