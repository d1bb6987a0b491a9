"""getSignaturesForAddress on the localnet (what a provider uses to find its reward transfers): newest first,
memos, before/until/limit, addresses loaded from lookup tables, spec errors, and the index survives a restart."""

from __future__ import annotations

import httpx
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Confirmed
from solders.keypair import Keypair
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction

from p2pnode.chain import token
from p2pnode.chain.rpc import ChainClient

SOL = 10**9


async def _send_memo_transfer(c: ChainClient, payer: Keypair, dest, text: str) -> str:
    ixs = [token.memo(text), transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=dest, lamports=SOL // 10))]
    return str(await c.send(Transaction.new_signed_with_payer(ixs, payer.pubkey(), [payer],
                                                              await c.latest_blockhash())))


async def test_signatures_for_address_order_memo_paging_and_restart(fresh_localnet):
    net = fresh_localnet
    payer, dest = Keypair(), Keypair().pubkey()
    async with ChainClient(net.url, timeout_s=20) as c:
        await c.airdrop(payer.pubkey(), 3 * SOL)
        sigs = [await _send_memo_transfer(c, payer, dest, f"note {i}") for i in range(5)]
    async with AsyncClient(net.url) as rpc:
        got = (await rpc.get_signatures_for_address(dest, commitment=Confirmed)).value
        assert [str(s.signature) for s in got] == sigs[::-1]  # newest first
        assert got[0].memo == "[6] note 4" and got[0].err is None and got[0].block_time > 0
        assert got[0].slot >= got[-1].slot
        page = (await rpc.get_signatures_for_address(dest, before=got[1].signature, limit=2,
                                                     commitment=Confirmed)).value
        assert [str(s.signature) for s in page] == [sigs[2], sigs[1]]
        page = (await rpc.get_signatures_for_address(dest, until=got[2].signature, commitment=Confirmed)).value
        assert [str(s.signature) for s in page] == [sigs[4], sigs[3]]
        # the payer's list also has its airdrop (no memo)
        mine = (await rpc.get_signatures_for_address(payer.pubkey(), commitment=Confirmed)).value
        assert len(mine) == 6 and mine[-1].memo is None
        assert (await rpc.get_signatures_for_address(Keypair().pubkey())).value == []
    async with httpx.AsyncClient() as http:
        for params, code in (([str(dest), {"limit": 0}], -32602), ([str(dest), {"limit": 1001}], -32602),
                             (["nope"], -32602), ([str(dest), {"before": "x"}], -32602), ([], -32602)):
            r = (await http.post(net.url, json={"jsonrpc": "2.0", "id": 7, "method": "getSignaturesForAddress",
                                                "params": params})).json()
            assert r["error"]["code"] == code and r["id"] == 7, (params, r)
    assert net.stop() == 0
    net.start()
    async with AsyncClient(net.url) as rpc:
        got = (await rpc.get_signatures_for_address(dest)).value  # finalized: all of them were on disk
        assert [str(s.signature) for s in got] == sigs[::-1]
        tx = (await rpc.get_transaction(got[0].signature, max_supported_transaction_version=0)).value
        assert tx is not None and tx.transaction.meta.err is None
