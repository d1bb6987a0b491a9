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
