"""Every RPC answer of the localnet parsed by solana-py/solders' own parsers, over real HTTP to the subprocess."""

from __future__ import annotations

import json

import httpx2
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Confirmed
from solana.rpc.models import TxOpts
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.rpc.responses import GetTransactionResp, SimulateTransactionResp
from solders.system_program import CreateAccountParams, TransferParams, create_account, transfer
from solders.transaction import Transaction, VersionedTransaction
from spl.token.constants import MINT_LEN, TOKEN_PROGRAM_ID
from spl.token.models import InitializeMintParams, MintToParams
from spl.token.instructions import (
    create_associated_token_account,
    get_associated_token_address,
    initialize_mint,
    mint_to,
)

SOL = 10**9


async def make_token(client, payer: Keypair, owner, amount: int, decimals: int = 8):
    """A new SPL mint (authority `payer`) and `owner`'s associated account holding `amount` base units."""
    mint = Keypair()
    rent = await client.rent_exempt(MINT_LEN)
    ata = get_associated_token_address(owner, mint.pubkey())
    ixs = [
        create_account(CreateAccountParams(from_pubkey=payer.pubkey(), to_pubkey=mint.pubkey(), lamports=rent,
                                           space=MINT_LEN, owner=TOKEN_PROGRAM_ID)),
        initialize_mint(InitializeMintParams(decimals=decimals, program_id=TOKEN_PROGRAM_ID, mint=mint.pubkey(),
                                             mint_authority=payer.pubkey())),
        create_associated_token_account(payer.pubkey(), owner, mint.pubkey()),
        mint_to(MintToParams(program_id=TOKEN_PROGRAM_ID, mint=mint.pubkey(), dest=ata,
                             mint_authority=payer.pubkey(), amount=amount)),
    ]
    tx = Transaction.new_signed_with_payer(ixs, payer.pubkey(), [payer, mint], await client.latest_blockhash())
    await client.send(tx)
    return mint.pubkey(), ata


async def test_node_info_shapes(localnet):
    async with AsyncClient(localnet.url, commitment=Confirmed, http2=False) as c:
        assert await c.is_connected()
        assert (await c.get_version()).value.solana_core
        slot = (await c.get_slot()).value
        assert (await c.get_block_height()).value == slot or (await c.get_block_height()).value >= slot
        info = (await c.get_epoch_info()).value
        assert info.absolute_slot >= slot and info.slots_in_epoch == 432_000
        genesis = (await c.get_genesis_hash()).value
        assert genesis == (await c.get_genesis_hash()).value
        bh = (await c.get_latest_blockhash()).value
        assert bh.last_valid_block_height >= slot + 150
        assert (await c.get_minimum_balance_for_rent_exemption(165)).value == 2_039_280
        assert (await c.get_transaction_count()).value >= 0


async def test_account_shapes_and_encodings(localnet, client, funded_keypair):
    payer = await funded_keypair(5 * SOL)
    owner = Keypair().pubkey()
    mint, ata = await make_token(client, payer, owner, 123_456_789_012)
    async with AsyncClient(localnet.url, commitment=Confirmed, http2=False) as c:
        acc = (await c.get_account_info(ata, encoding="base64")).value
        assert acc is not None and acc.owner == TOKEN_PROGRAM_ID and len(acc.data) == 165
        sliced = (await c.get_account_info(ata, encoding="base64", data_slice=None)).value
        assert bytes(sliced.data) == bytes(acc.data)
        accs = (await c.get_multiple_accounts([ata, Keypair().pubkey(), mint], encoding="base64")).value
        assert accs[0] == acc and accs[1] is None and accs[2] is not None and accs[2].owner == TOKEN_PROGRAM_ID
        bal = (await c.get_token_account_balance(ata)).value
        assert bal.amount == "123456789012" and bal.decimals == 8 and bal.ui_amount_string == "1234.56789012"
        from solana.rpc.models import TokenAccountOpts
        by_owner = (await c.get_token_accounts_by_owner(owner, TokenAccountOpts(mint=mint))).value
        assert [k.pubkey for k in by_owner] == [ata]
        by_prog = (await c.get_token_accounts_by_owner(owner, TokenAccountOpts(program_id=TOKEN_PROGRAM_ID))).value
        assert [k.pubkey for k in by_prog] == [ata]
    async with httpx2.AsyncClient() as h:  # dataSlice and base58, which AsyncClient does not expose
        r = (await h.post(localnet.url, json={"jsonrpc": "2.0", "id": 1, "method": "getAccountInfo", "params": [
            str(ata), {"encoding": "base58", "dataSlice": {"offset": 64, "length": 8}}]})).json()
        import base58
        data, enc = r["result"]["value"]["data"]
        assert enc == "base58" and int.from_bytes(base58.b58decode(data), "little") == 123_456_789_012
        assert r["result"]["value"]["space"] == 165
    assert await client.token_balance(ata) == 123_456_789_012


async def test_transaction_shapes(localnet, client, funded_keypair):
    payer = await funded_keypair(2 * SOL)
    to = Keypair().pubkey()
    bh = await client.latest_blockhash()
    ix = transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=to, lamports=SOL // 10))
    legacy = Transaction.new_signed_with_payer([ix], payer.pubkey(), [payer], bh)
    v0 = VersionedTransaction(MessageV0.try_compile(payer.pubkey(), [ix], [], bh), [payer])
    async with AsyncClient(localnet.url, commitment=Confirmed, http2=False) as c:
        fee = (await c.get_fee_for_message(v0.message)).value
        assert fee == 5000
        sim = (await c.simulate_transaction(v0)).value
        assert sim.err is None and any("invoke [1]" in line for line in sim.logs) and sim.units_consumed > 0
        sig_legacy = (await c.send_raw_transaction(bytes(legacy), TxOpts(skip_confirmation=True))).value
        sig_v0 = (await c.send_transaction(v0, TxOpts(skip_confirmation=True))).value
        await client.confirm(sig_legacy)
        await client.confirm(sig_v0)
        statuses = (await c.get_signature_statuses([sig_legacy, sig_v0, Keypair().sign_message(b"x")])).value
        assert statuses[0].err is None and statuses[1].err is None and statuses[2] is None
        tx_json = (await c.get_transaction(sig_legacy, encoding="json")).value
        assert tx_json.slot == statuses[0].slot and tx_json.transaction.meta.fee == 5000
        assert tx_json.transaction.meta.post_balances[1] - tx_json.transaction.meta.pre_balances[1] == SOL // 10
        tx_b64 = (await c.get_transaction(sig_v0, encoding="base64", max_supported_transaction_version=0)).value
        assert tx_b64.transaction.version == 0
        tx_v0_json = (await c.get_transaction(sig_v0, encoding="json", max_supported_transaction_version=0)).value
        assert str(tx_v0_json.transaction.transaction.signatures[0]) == str(sig_v0)
    async with httpx2.AsyncClient() as h:
        # A v0 transaction without maxSupportedTransactionVersion is refused exactly like a validator does.
        r = (await h.post(localnet.url, json={"jsonrpc": "2.0", "id": 7, "method": "getTransaction",
                                              "params": [str(sig_v0), {"encoding": "json"}]})).json()
        assert r["error"]["code"] == -32015 and r["id"] == 7
        raw = (await h.post(localnet.url, json={"jsonrpc": "2.0", "id": 1, "method": "getTransaction",
                                                "params": [str(sig_legacy), "json"]})).text
        assert GetTransactionResp.from_json(raw).value is not None
        # base58 sendTransaction (the spec's default encoding) works too, and a replay is AlreadyProcessed.
        import base58
        r = (await h.post(localnet.url, json={"jsonrpc": "2.0", "id": 2, "method": "sendTransaction",
                                              "params": [base58.b58encode(bytes(legacy)).decode()]})).json()
        assert r["error"]["code"] == -32002 and r["error"]["data"]["err"] == "AlreadyProcessed"
        # replaceRecentBlockhash simulation of an unsigned transaction
        unsigned = Transaction.new_unsigned(legacy.message)
        r = (await h.post(localnet.url, json={"jsonrpc": "2.0", "id": 3, "method": "simulateTransaction", "params": [
            __import__("base64").b64encode(bytes(unsigned)).decode(),
            {"encoding": "base64", "replaceRecentBlockhash": True}]})).text
        parsed = SimulateTransactionResp.from_json(r)
        assert parsed.value.replacement_blockhash is not None
        assert json.loads(r)["result"]["value"]["err"] is None


async def test_failed_transaction_status_has_err(localnet, client, funded_keypair):
    """Skipping preflight, a failing transaction lands with `err` in its status, as on a cluster."""
    from p2pnode.chain.rpc import InsufficientFunds
    payer = await funded_keypair(SOL)
    ix = transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=Keypair().pubkey(), lamports=50 * SOL))
    tx = Transaction.new_signed_with_payer([ix], payer.pubkey(), [payer], await client.latest_blockhash())
    sig = await client.send_unconfirmed(tx, skip_preflight=True)
    try:
        await client.confirm(sig, tx=tx)
    except InsufficientFunds as exc:
        assert "insufficient SOL" in str(exc)
    else:
        raise AssertionError("a failed transaction confirmed")
    async with AsyncClient(localnet.url, http2=False) as c:
        st = (await c.get_signature_statuses([sig])).value[0]
        assert st is not None and st.err is not None
        meta = (await c.get_transaction(sig)).value.transaction.meta
        assert meta.err is not None and any("insufficient lamports" in m for m in meta.log_messages)
    assert await client.balance(payer.pubkey()) == SOL - 5000  # the fee is charged, the transfer is not
