"""The quorum approves the distributor's allowance from separate machines: a durable-nonce approval survives
blockhash expiry, every co-signer checks the exact terms, and a used approval cannot be replayed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio
from solders.pubkey import Pubkey

sys.path.insert(0, str(Path(__file__).parents[1] / "chain"))  # importlib mode: the chain tests' helpers
from economy_helpers import make_network  # noqa: E402

from p2pnode.chain.rewards_approval import (  # noqa: E402
    ApprovalError,
    cosign_approval,
    prepare_approval,
    ready,
    submit_approval,
)
from p2pnode.chain.rewards_distribute import Pool, allowance  # noqa: E402
from p2pnode.chain.rpc import ChainClient, ChainError  # noqa: E402


@pytest.fixture
async def fast_chain(nursery):
    """A localnet whose blockhashes expire in ~1.5 s (150 slots of 10 ms)."""
    from p2pnode.chain.localnet import LocalnetServer

    server = LocalnetServer(host="127.0.0.1", port=0, slot_s=0.01)
    await nursery.start(server.serve)
    return server


async def test_durable_nonce_approval_signed_at_each_operators_pace(fast_chain, tmp_path):
    from solana.rpc.async_api import AsyncClient

    async with ChainClient(fast_chain.url) as client, AsyncClient(fast_chain.url) as rpc:
        params, ops = await make_network(client, tmp_path, operators=3, threshold=2)
        pool = Pool.from_network(params)
        dist = ops[1].pubkey()
        bh0 = await client.latest_blockhash()
        # operator 1 coordinates: builds and signs; operator 3 is the second signer of the quorum
        terms, tx = await prepare_approval(client, params, ops[0], dist, 5_000, [ops[0].pubkey(), ops[2].pubkey()])
        assert not ready(tx)
        # each co-signer refuses anything but the terms it agreed to
        with pytest.raises(ApprovalError):
            cosign_approval(params, ops[2], dist, 6_000, tx)  # another amount
        with pytest.raises(ApprovalError):
            cosign_approval(params, ops[2], ops[0].pubkey(), 5_000, tx)  # another delegate
        with pytest.raises(ApprovalError):
            cosign_approval(params, ops[1], dist, 5_000, tx)  # not one of this approval's signers
        with pytest.raises(ApprovalError):
            await submit_approval(client, tx)  # below the quorum
        # operator 3 signs long after any recent blockhash expired: the durable nonce keeps the approval valid
        with trio.fail_after(30):
            while await client.blockhash_valid(bh0):
                await trio.sleep(0.2)
        signed = cosign_approval(params, ops[2], dist, 5_000, tx)
        assert ready(signed)
        await submit_approval(client, signed)
        assert await allowance(rpc, pool, dist) == 5_000
        # spend part of it; re-sending the same approval must not restore the allowance (the nonce advanced;
        # the RPC answers the duplicate with the original signature, nothing executes again)
        from solders.message import Message
        from solders.transaction import Transaction
        from spl.token.constants import TOKEN_PROGRAM_ID
        from spl.token.instructions import transfer as spl_transfer
        from spl.token.models import TransferParams

        from p2pnode.chain import token as tk

        ixs = [tk.create_ata(ops[1].pubkey(), ops[1].pubkey(), pool.mint),
               spl_transfer(TransferParams(program_id=TOKEN_PROGRAM_ID, source=pool.pool,
                                           dest=tk.ata(ops[1].pubkey(), pool.mint), owner=dist, amount=1_000))]
        bh = await client.latest_blockhash()
        await client.send(Transaction([ops[1]], Message.new_with_blockhash(ixs, ops[1].pubkey(), bh), bh))
        assert await allowance(rpc, pool, dist) == 4_000
        try:
            await submit_approval(client, signed)
        except ChainError:
            pass
        assert await allowance(rpc, pool, dist) == 4_000
        # a non-operator distributor is refused at preparation
        with pytest.raises(ApprovalError):
            await prepare_approval(client, params, ops[0], Pubkey.default(), 1, [ops[2].pubkey()])
