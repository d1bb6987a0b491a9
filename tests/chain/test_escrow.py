"""The job payment channel end to end on the real localnet over HTTP, and every attack the issue lists."""

from __future__ import annotations

import dataclasses
import os

import pytest
import trio
from solders.keypair import Keypair
from solders.message import Message
from solders.transaction import Transaction

from p2pnode.chain import escrow as E
from p2pnode.chain import token as tk
from p2pnode.chain.multisig import decode_tx, sign_partial
from p2pnode.chain.rpc import ChainError
from p2pnode.config import IO
from p2pnode.identity import Identity
from p2pnode.store import Store
from p2pnode.wire import BadSignature, open_envelope, seal

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: make the sibling helper importable
from economy_helpers import give_io, io_balance, make_network  # noqa: E402

DEPOSIT = 100 * IO


@dataclasses.dataclass
class Pair:
    params: object
    ops: list
    renter: Keypair
    provider: Keypair
    arbiter: Keypair
    store: Store


async def make_pair(client, funded_keypair, tmp_path) -> Pair:
    params, ops = await make_network(client, tmp_path)
    renter, provider = await funded_keypair(), await funded_keypair()
    await give_io(client, params, ops, renter, 1000 * IO)
    return Pair(params, ops, renter, provider, ops[0], Store(tmp_path / "provider.db"))


async def open_job(client, p: Pair, *, deposit: int = DEPOSIT, deadline_in: int = 3600) -> E.Agreement:
    job_id = os.urandom(16)
    nonce_addr, nonce = await E.lease_nonce(client, p.store, p.provider, p.renter.pubkey(), job_id)
    a = E.Agreement(job_id=job_id, renter=str(p.renter.pubkey()), provider=str(p.provider.pubkey()),
                    arbiter=str(p.arbiter.pubkey()), mint=p.params.mint, deposit=deposit, fee_bps=p.params.fee_bps,
                    nonce_account=str(nonce_addr), nonce=str(nonce), deadline=await client.unix_time() + deadline_in)
    await E.fund(client, p.renter, a)
    await E.verify_funding(client, a)
    E.record_agreement(p.store, a, "provider")
    return a


async def supply(client, mint) -> int:
    return tk.parse_mint((await client.get_account(tk.pubkey(mint))).data).supply


async def test_full_lifecycle_two_jobs_same_pair(client, funded_keypair, tmp_path):
    p = await make_pair(client, funded_keypair, tmp_path)
    supply0 = await supply(client, p.params.mint)
    a = await open_job(client, p)
    assert await client.token_balance(a.escrow) == DEPOSIT
    assert await io_balance(client, p.renter.pubkey(), a.mint) == 900 * IO

    # vouchers travel sealed by the renter's identity; the provider opens, checks and stores each
    renter_id = Identity(bytes(p.renter)[:32])
    for cum in (10 * IO, 20 * IO, 35 * IO):
        env = seal(E.make_voucher(a, cum, p.renter), renter_id)
        signed = open_envelope(env, E.Voucher)
        assert signed.signer == bytes(p.renter.pubkey())
        assert E.accept_voucher(p.store, signed.message) == cum
    assert E.channel(p.store, a.job_id).cumulative == 35 * IO

    sig = await E.settle(client, p.store, p.provider, a.job_id)
    assert sig and E.channel(p.store, a.job_id).state == E.SETTLED
    fee = 35 * IO * 25 // 10_000
    assert await io_balance(client, p.provider.pubkey(), a.mint) == 35 * IO
    assert await io_balance(client, p.renter.pubkey(), a.mint) == 1000 * IO - 35 * IO - fee
    assert await supply(client, p.params.mint) == supply0 - fee  # the network fee is burned
    assert await client.get_account(a.escrow) is None  # closed: rent back to the renter

    # second job of the same pair: the nonce account and the escrow multisig are reused, the nonce has moved on
    b = await open_job(client, p)
    assert b.nonce_account == a.nonce_account and b.nonce != a.nonce and b.multisig == a.multisig
    E.accept_voucher(p.store, E.make_voucher(b, 5 * IO, p.renter))
    await E.settle(client, p.store, p.provider, b.job_id)
    assert await io_balance(client, p.provider.pubkey(), a.mint) == 40 * IO


async def test_concurrent_jobs_of_one_pair_use_different_nonces(client, funded_keypair, tmp_path):
    p = await make_pair(client, funded_keypair, tmp_path)
    a = await open_job(client, p)
    b = await open_job(client, p)
    assert a.nonce_account != b.nonce_account
    E.accept_voucher(p.store, E.make_voucher(a, 1 * IO, p.renter))
    E.accept_voucher(p.store, E.make_voucher(b, 2 * IO, p.renter))
    await E.settle(client, p.store, p.provider, a.job_id)
    await E.settle(client, p.store, p.provider, b.job_id)  # still valid: its nonce was not advanced by job a
    assert await io_balance(client, p.provider.pubkey(), a.mint) == 3 * IO


async def test_voucher_attacks_rejected_by_accept_voucher(client, funded_keypair, tmp_path):
    p = await make_pair(client, funded_keypair, tmp_path)
    a = await open_job(client, p)
    E.accept_voucher(p.store, E.make_voucher(a, 20 * IO, p.renter))

    def tampered(**changes) -> E.Voucher:
        evil = dataclasses.replace(a, **changes)  # same job id, renter-signed, but not what was agreed
        return E.Voucher(job_id=a.job_id, cumulative=30 * IO, tx=E.make_voucher(evil, 30 * IO, p.renter).tx)

    cases = {
        "recipient": tampered(provider=str(Keypair().pubkey())),
        "mint": tampered(mint=str(Keypair().pubkey())),
        "fee": tampered(fee_bps=0),
        "escrow/deposit": tampered(deposit=DEPOSIT * 2),
        "nonce": tampered(nonce=str(Keypair().pubkey())),
        "arbiter": tampered(arbiter=str(Keypair().pubkey())),
    }
    for name, v in cases.items():
        with pytest.raises(E.VoucherMismatch):
            E.accept_voucher(p.store, v)
    # amount: the transaction pays 40 while the voucher claims 30
    v40 = E.make_voucher(a, 40 * IO, p.renter)
    with pytest.raises(E.VoucherMismatch, match="amount"):
        E.accept_voucher(p.store, E.Voucher(job_id=a.job_id, cumulative=30 * IO, tx=v40.tx))
    # signature: flip one bit of the renter's signature; and a voucher signed by someone else
    good = E.make_voucher(a, 30 * IO, p.renter)
    raw = bytearray(good.tx)
    raw[1 + 64 + 5] ^= 1  # second signature slot (renter; the provider is fee payer in slot 0)
    with pytest.raises(E.VoucherSignatureError):
        E.accept_voucher(p.store, E.Voucher(job_id=a.job_id, cumulative=30 * IO, tx=bytes(raw)))
    forged = sign_partial(Transaction.new_unsigned(E.voucher_message(a, 30 * IO)), p.provider)
    with pytest.raises(E.VoucherSignatureError):
        E.accept_voucher(p.store, E.Voucher(job_id=a.job_id, cumulative=30 * IO, tx=bytes(forged)))
    # malformed transaction bytes and unknown job
    with pytest.raises(E.VoucherMismatch):
        E.accept_voucher(p.store, E.Voucher(job_id=a.job_id, cumulative=30 * IO, tx=b"\x01garbage"))
    with pytest.raises(E.UnknownChannel):
        E.accept_voucher(p.store, dataclasses.replace(good, job_id=os.urandom(16)))
    # above the deposit: cumulative + fee must fit
    with pytest.raises(E.VoucherAboveDeposit):
        E.make_voucher(a, DEPOSIT, p.renter)  # DEPOSIT + fee > DEPOSIT
    over = E.Voucher(job_id=a.job_id, cumulative=DEPOSIT, tx=good.tx)
    with pytest.raises(E.VoucherAboveDeposit):
        E.accept_voucher(p.store, over)
    # nothing of the above was stored
    assert E.channel(p.store, a.job_id).cumulative == 20 * IO
    # older and replayed vouchers
    with pytest.raises(E.StaleVoucher):
        E.accept_voucher(p.store, E.make_voucher(a, 10 * IO, p.renter))
    with pytest.raises(E.StaleVoucher):
        E.accept_voucher(p.store, E.make_voucher(a, 20 * IO, p.renter))
    assert E.accept_voucher(p.store, good) == 30 * IO
    # a forged envelope (signed by another key than it claims) never reaches accept_voucher
    env = bytearray(seal(good, Identity.generate()))
    env[-3] ^= 1
    with pytest.raises(BadSignature):
        open_envelope(bytes(env), E.Voucher)
    # the exact maximum is fine
    top = DEPOSIT * 10_000 // 10_025
    assert E.accept_voucher(p.store, E.make_voucher(a, top, p.renter)) == top


async def test_onchain_attacks(client, funded_keypair, tmp_path):
    p = await make_pair(client, funded_keypair, tmp_path)
    a = await open_job(client, p)
    mint = tk.pubkey(a.mint)

    # renter alone / provider alone cannot move the escrow (2-of-3)
    for thief in (p.renter, p.provider):
        ix = tk.transfer(a.escrow, mint, tk.ata(thief.pubkey(), mint), a.multisig, DEPOSIT, [thief.pubkey()])
        bh = await client.latest_blockhash()
        tx = Transaction([thief], Message.new_with_blockhash(
            [tk.create_ata(thief.pubkey(), thief.pubkey(), mint), ix], thief.pubkey(), bh), bh)
        with pytest.raises(ChainError):
            await client.send(tx)
    assert await client.token_balance(a.escrow) == DEPOSIT

    old = E.make_voucher(a, 10 * IO, p.renter)
    new = E.make_voucher(a, 50 * IO, p.renter)
    E.accept_voucher(p.store, old)
    E.accept_voucher(p.store, new)
    await E.settle(client, p.store, p.provider, a.job_id)
    # settling twice: the library refuses, and the chain refuses the same transaction again
    with pytest.raises(E.ChannelClosed):
        await E.settle(client, p.store, p.provider, a.job_id)
    # re-sending the very same settlement is answered as a duplicate (AlreadyProcessed): nothing paid twice
    settled_tx = sign_partial(decode_tx(new.tx), p.provider)
    assert str(await client.send(settled_tx)) == E.channel(p.store, a.job_id).settle_sig
    assert await io_balance(client, p.provider.pubkey(), a.mint) == 50 * IO
    # the provider submitting the older voucher after the newer one: the nonce moved, the escrow is gone
    with pytest.raises(ChainError):
        await client.send(sign_partial(decode_tx(old.tx), p.provider))
    assert await io_balance(client, p.provider.pubkey(), a.mint) == 50 * IO


async def test_refund_after_deadline_pays_presented_voucher(client, funded_keypair, tmp_path):
    p = await make_pair(client, funded_keypair, tmp_path)
    a = await open_job(client, p, deadline_in=600)
    v = E.make_voucher(a, 12 * IO, p.renter)  # the provider presented this to the arbiter, then vanished

    async def cosign(tx_bytes: bytes) -> bytes:
        return await E.arbiter_cosign_refund(client, p.arbiter, a, tx_bytes, best_voucher=v)

    with pytest.raises(E.RefundRefused, match="deadline"):
        await E.refund(client, p.renter, a, cosign, paid=12 * IO)
    await client.warp_clock(601)
    # a refund that ignores the provider's voucher is refused
    with pytest.raises(E.RefundRefused, match="not the expected"):
        await E.refund(client, p.renter, a, cosign, paid=0)
    # the renter alone cannot refund: the arbiter's signature is needed
    async def no_arbiter(tx_bytes: bytes) -> bytes:
        return tx_bytes

    with pytest.raises(ChainError):
        await E.refund(client, p.renter, a, no_arbiter, paid=12 * IO)
    before = await io_balance(client, p.renter.pubkey(), a.mint)
    await E.refund(client, p.renter, a, cosign, paid=12 * IO)
    fee = 12 * IO * 25 // 10_000
    assert await io_balance(client, p.provider.pubkey(), a.mint) == 12 * IO
    assert await io_balance(client, p.renter.pubkey(), a.mint) == before + DEPOSIT - 12 * IO - fee
    assert await client.get_account(a.escrow) is None
    # the provider's channel can no longer settle
    E.accept_voucher(p.store, v)
    with pytest.raises(ChainError):
        await E.settle(client, p.store, p.provider, a.job_id)


async def test_wrong_arbiter_and_unfunded_escrow(client, funded_keypair, tmp_path):
    p = await make_pair(client, funded_keypair, tmp_path)
    job_id = os.urandom(16)
    nonce_addr, nonce = await E.lease_nonce(client, p.store, p.provider, p.renter.pubkey(), job_id)
    a = E.Agreement(job_id=job_id, renter=str(p.renter.pubkey()), provider=str(p.provider.pubkey()),
                    arbiter=str(p.arbiter.pubkey()), mint=p.params.mint, deposit=DEPOSIT, fee_bps=25,
                    nonce_account=str(nonce_addr), nonce=str(nonce), deadline=0)
    with pytest.raises(E.FundingError, match="not funded"):
        await E.verify_funding(client, a)
    with pytest.raises(E.RefundRefused, match="arbiter"):
        await E.arbiter_cosign_refund(client, p.ops[1], a, b"")


async def test_concurrent_nonce_leases_get_distinct_accounts(client, funded_keypair, tmp_path):
    p = await make_pair(client, funded_keypair, tmp_path)
    got = []

    async def lease():
        got.append(await E.lease_nonce(client, p.store, p.provider, p.renter.pubkey(), os.urandom(16)))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(lease)
    assert len({addr for addr, _ in got}) == 3
    assert len(p.store.query("SELECT * FROM escrow_nonces WHERE leased_job IS NOT NULL")) == 3
