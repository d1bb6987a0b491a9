"""State survives restarts: graceful (SIGTERM) and crash (SIGKILL) restarts with --ledger keep SOL and SPL balances,
signature statuses and the slot; and a client rides through the RPC going away."""

from __future__ import annotations

import pytest
import trio
from solders.keypair import Keypair
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction
from spl.token.constants import MINT_LEN, TOKEN_PROGRAM_ID
from spl.token.instructions import create_associated_token_account, get_associated_token_address, mint_to
from spl.token.instructions import initialize_mint
from spl.token.models import InitializeMintParams, MintToParams

from p2pnode.chain.rpc import ChainClient, RpcUnreachable

SOL = 10**9


async def _token(c: ChainClient, payer: Keypair, owner, amount: int):
    from solders.system_program import CreateAccountParams, create_account
    mint = Keypair()
    ata = get_associated_token_address(owner, mint.pubkey())
    ixs = [create_account(CreateAccountParams(from_pubkey=payer.pubkey(), to_pubkey=mint.pubkey(),
                                              lamports=await c.rent_exempt(MINT_LEN), space=MINT_LEN,
                                              owner=TOKEN_PROGRAM_ID)),
           initialize_mint(InitializeMintParams(decimals=8, program_id=TOKEN_PROGRAM_ID, mint=mint.pubkey(),
                                                mint_authority=payer.pubkey())),
           create_associated_token_account(payer.pubkey(), owner, mint.pubkey()),
           mint_to(MintToParams(program_id=TOKEN_PROGRAM_ID, mint=mint.pubkey(), dest=ata,
                                mint_authority=payer.pubkey(), amount=amount))]
    await c.send(Transaction.new_signed_with_payer(ixs, payer.pubkey(), [payer, mint], await c.latest_blockhash()))
    return mint.pubkey(), ata


@pytest.mark.parametrize("how", ["graceful", "crash"])
async def test_restart_keeps_balances_and_statuses(fresh_localnet, how):
    net = fresh_localnet
    payer, dest, owner = Keypair(), Keypair().pubkey(), Keypair().pubkey()
    async with ChainClient(net.url, timeout_s=20) as c:
        await c.airdrop(payer.pubkey(), 3 * SOL)
        sig = await c.send(Transaction.new_signed_with_payer(
            [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=dest, lamports=SOL))],
            payer.pubkey(), [payer], await c.latest_blockhash()))
        mint, ata = await _token(c, payer, owner, 777_000_000)
        payer_before = await c.balance(payer.pubkey())
        slot_before = await c.slot()
        clock_before = await c.unix_time()
    if how == "graceful":
        assert net.stop() == 0
    else:
        net.kill()  # confirmed means fsynced: nothing that was confirmed may be lost
    net.start()
    async with ChainClient(net.url, timeout_s=20) as c:
        assert await c.balance(dest) == SOL
        assert await c.balance(payer.pubkey()) == payer_before
        assert await c.token_balance(ata) == 777_000_000
        mint_acc = await c.get_account(mint)
        assert mint_acc is not None and mint_acc.owner == TOKEN_PROGRAM_ID
        assert await c.slot() >= slot_before
        assert await c.unix_time() >= clock_before
        await c.confirm(sig, 5)  # the old signature's status survived
        # and the restored chain keeps working: token + SOL transfers on the restored accounts
        more = await c.send(Transaction.new_signed_with_payer(
            [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=dest, lamports=SOL // 2))],
            payer.pubkey(), [payer], await c.latest_blockhash()))
        assert more != sig and await c.balance(dest) == SOL + SOL // 2


async def test_replayed_transaction_after_restart_is_refused(fresh_localnet):
    """The status cache is persisted, so a restart cannot make an already-executed transaction run twice."""
    net = fresh_localnet
    payer, dest = Keypair(), Keypair().pubkey()
    async with ChainClient(net.url, timeout_s=20) as c:
        await c.airdrop(payer.pubkey(), 2 * SOL)
        tx = Transaction.new_signed_with_payer(
            [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=dest, lamports=SOL // 4))],
            payer.pubkey(), [payer], await c.latest_blockhash())
        await c.send(tx)
    net.restart()
    async with ChainClient(net.url, timeout_s=20) as c:
        assert await c.send(tx) == tx.signatures[0]  # AlreadyProcessed counts as sent ...
        assert await c.balance(dest) == SOL // 4  # ... and nothing moved twice


async def test_rpc_going_away_and_coming_back(fresh_localnet):
    net = fresh_localnet
    async with ChainClient(net.url, timeout_s=5, retries=2, backoff_s=0.05) as c:
        kp = Keypair()
        await c.airdrop(kp.pubkey(), SOL)
        net.stop()
        with pytest.raises(RpcUnreachable) as info:
            await c.balance(kp.pubkey())
        assert net.url in str(info.value) and "p2pnode localnet" in str(info.value)

        # Comes back while the client is retrying: the call succeeds, nothing is lost.
        async with ChainClient(net.url, timeout_s=10, retries=30, backoff_s=0.1) as patient:
            async with trio.open_nursery() as nursery:
                result = []

                async def ask():
                    result.append(await patient.balance(kp.pubkey()))

                nursery.start_soon(ask)
                await trio.sleep(0.5)
                await trio.to_thread.run_sync(net.start)
            assert result == [SOL]
        assert await c.balance(kp.pubkey()) == SOL


async def test_ledger_write_failure_stops_serving_and_never_confirms(tmp_path):
    """If the ledger cannot be written, nothing is reported finalized and the server stops with a LedgerError."""
    from p2pnode.chain.localnet import LocalnetServer
    from p2pnode.chain.localnet_ledger import LedgerError

    server = LocalnetServer(host="127.0.0.1", port=0, ledger_dir=tmp_path / "ledger", slot_s=10.0)
    statuses = []
    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            server.ledger.db.close()  # every further write fails like a full or vanished disk would
            kp = Keypair()
            sig = server.chain.airdrop(kp.pubkey(), SOL)
            server._notify()
            await trio.sleep(1)
            statuses.append(server.chain.status(sig).durable)
    assert info.value.subgroup(lambda e: isinstance(e, LedgerError)) is not None
    assert statuses in ([], [False])
    assert server.chain.status(sig).durable is False
