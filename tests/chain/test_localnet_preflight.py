"""Preflight is one execution undone on failure (no separate simulate): a rejected transaction changes nothing."""

from __future__ import annotations

import base64

import httpx2
import pytest
from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import Message
from solders.system_program import (
    AdvanceNonceAccountParams,
    TransferParams,
    advance_nonce_account,
    create_nonce_account,
    transfer,
)
from solders.transaction import Transaction, VersionedTransaction

from p2pnode.chain.localnet_state import LocalChain, TxRejected

SOL = 10**9


def _send(chain: LocalChain, tx: Transaction, **kw):
    vt = VersionedTransaction.from_bytes(bytes(tx))
    return chain.send(vt, bytes(tx), **kw)


def test_failed_preflight_leaves_fee_payer_and_durable_nonce_untouched():
    chain = LocalChain()
    payer, nonce = Keypair(), Keypair()
    chain.airdrop(payer.pubkey(), SOL)
    ixs = list(create_nonce_account(payer.pubkey(), nonce.pubkey(), payer.pubkey(), SOL // 100))
    _send(chain, Transaction.new_signed_with_payer(ixs, payer.pubkey(), [payer, nonce], chain.svm.latest_blockhash()))
    chain.tick()  # a new nonce account is usable after one blockhash expiry
    stored = Hash(bytes(chain.svm.get_account(nonce.pubkey()).data)[40:72])
    pending = list(chain.pending)
    before = {k: chain.svm.get_account(k) for k in (payer.pubkey(), nonce.pubkey())}
    failing = [advance_nonce_account(AdvanceNonceAccountParams(nonce_pubkey=nonce.pubkey(),
                                                              authorized_pubkey=payer.pubkey())),
               transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=Keypair().pubkey(), lamports=50 * SOL))]
    tx = Transaction([payer], Message.new_with_blockhash(failing, payer.pubkey(), stored), stored)
    with pytest.raises(TxRejected) as rej:
        _send(chain, tx)
    assert rej.value.fee == 5000 and any("insufficient lamports" in line for line in rej.value.logs)
    assert rej.value.units and rej.value.units > 0
    # no fee charged, the nonce not advanced, no status: as if only simulated
    assert {k: chain.svm.get_account(k) for k in before} == before
    assert chain.status(tx.signatures[0]) is None and chain.pending == pending
    # skipping preflight, the same transaction lands with its error and charges the fee
    _send(chain, tx, preflight=False)
    assert chain.status(tx.signatures[0]).err is not None
    assert chain.svm.get_balance(payer.pubkey()) == before[payer.pubkey()].lamports - 5000


async def test_failed_preflight_over_rpc_is_the_spec_error_and_charges_nothing(localnet, client, funded_keypair):
    payer = await funded_keypair(SOL)
    ix = transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=Keypair().pubkey(), lamports=50 * SOL))
    tx = Transaction.new_signed_with_payer([ix], payer.pubkey(), [payer], await client.latest_blockhash())
    async with httpx2.AsyncClient() as h:
        r = (await h.post(localnet.url, json={"jsonrpc": "2.0", "id": 9, "method": "sendTransaction", "params": [
            base64.b64encode(bytes(tx)).decode(), {"encoding": "base64"}]})).json()
        assert r["id"] == 9 and r["error"]["code"] == -32002
        assert r["error"]["message"].startswith("Transaction simulation failed: Error processing Instruction 0")
        data = r["error"]["data"]
        assert data["err"] == {"InstructionError": [0, {"Custom": 1}]} and data["unitsConsumed"] > 0
        assert any("insufficient lamports" in line for line in data["logs"])
        st = (await h.post(localnet.url, json={"jsonrpc": "2.0", "id": 1, "method": "getSignatureStatuses",
                                               "params": [[str(tx.signatures[0])]]})).json()
        assert st["result"]["value"] == [None]
    assert await client.balance(payer.pubkey()) == SOL  # preflight failed: no fee
