"""Staking collateral on the real localnet: deposit, eligibility, cooldown-enforced withdrawal, slashing."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import trio
from solders.keypair import Keypair
from solders.message import Message
from solders.transaction import Transaction

from p2pnode.chain import stake as S
from p2pnode.chain import token as tk
from p2pnode.chain.multisig import decode_tx, encode_tx, merge
from p2pnode.chain.rpc import ChainError
from p2pnode.config import IO
from p2pnode.store import Store

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: make the sibling helper importable
from economy_helpers import give_io, io_balance, make_network  # noqa: E402


async def staked_provider(client, funded_keypair, tmp_path, amount=400 * IO):
    params, ops = await make_network(client, tmp_path)
    provider = await funded_keypair()
    await give_io(client, params, ops, provider, 1000 * IO)
    await S.deposit(client, provider, params, amount)
    return params, ops, provider


async def test_deposit_status_and_eligibility(client, funded_keypair, tmp_path):
    params, ops, provider = await staked_provider(client, funded_keypair, tmp_path)
    assert await S.stake_of(client, params, provider.pubkey()) == 400 * IO
    await S.deposit(client, provider, params, 100 * IO)  # a second deposit tops up the same account
    st = await S.stake_status(client, params, provider.pubkey())
    assert st.locked and st.amount == 500 * IO and st.account == S.stake_addresses(provider.pubkey()).account
    assert await io_balance(client, provider.pubkey(), params.mint) == 500 * IO

    assert S.required_stake(params, ["NVIDIA RTX 4090"]) == 200 * IO
    assert S.required_stake(params, ["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"]) == 1200 * IO
    assert await S.is_eligible(client, params, provider.pubkey(), ["RTX 4090", "RTX 4090"])
    assert not await S.is_eligible(client, params, provider.pubkey(), ["H100"])
    assert await S.stake_of(client, params, Keypair().pubkey()) == 0

    # the provider cannot take its stake back alone
    mint = tk.pubkey(params.mint)
    addrs = S.stake_addresses(provider.pubkey())
    ix = tk.transfer(addrs.account, mint, tk.ata(provider.pubkey(), mint), addrs.multisig, 500 * IO,
                     [provider.pubkey()])
    bh = await client.latest_blockhash()
    with pytest.raises(ChainError):
        await client.send(Transaction([provider], Message.new_with_blockhash([ix], provider.pubkey(), bh), bh))
    assert await S.stake_of(client, params, provider.pubkey()) == 500 * IO


async def test_fake_stake_account_counts_zero(client, funded_keypair, tmp_path):
    """A token account at the seeded address owned by the provider itself is not locked stake."""
    params, ops = await make_network(client, tmp_path)
    provider = await funded_keypair()
    await give_io(client, params, ops, provider, 300 * IO)
    p, mint = provider.pubkey(), tk.pubkey(params.mint)
    acc = S.stake_addresses(p).account
    rent = await client.rent_exempt(tk.ACCOUNT_LEN)
    ixs = [tk.create_seeded(p, p, S.STAKE_SEED, rent, tk.ACCOUNT_LEN, tk.TOKEN_PROGRAM_ID),
           tk.init_token_account(acc, mint, p), tk.transfer(tk.ata(p, mint), mint, acc, p, 300 * IO)]
    bh = await client.latest_blockhash()
    await client.send(Transaction([provider], Message.new_with_blockhash(ixs, p, bh), bh))
    st = await S.stake_status(client, params, p)
    assert st.exists and not st.locked and st.amount == 0 and "owned" in st.problem


async def test_unstake_cooldown_enforced_then_withdraw(client, funded_keypair, tmp_path):
    params, ops, provider = await staked_provider(client, funded_keypair, tmp_path)
    op_store = Store(tmp_path / "operator.db")
    req = await S.request_unstake(client, provider, params, 150 * IO)
    parsed = await S.read_unstake_request(client, params, provider.pubkey(), req)
    assert parsed.amount == 150 * IO and parsed.block_time > 0

    tx = await S.build_withdraw(client, provider, params, 150 * IO)
    with pytest.raises(S.UnstakeTooEarly):
        await S.cosign_withdraw(client, ops[0], params, provider.pubkey(), tx, req, op_store)
    await client.warp_clock(params.unstake_cooldown_s - 3600)
    with pytest.raises(S.UnstakeTooEarly):
        await S.cosign_withdraw(client, ops[0], params, provider.pubkey(), tx, req, op_store)
    await client.warp_clock(3601)

    # a withdrawal of more than requested is refused even after the cooldown
    greedy = await S.build_withdraw(client, provider, params, 400 * IO)
    with pytest.raises(S.StakeError, match="exactly"):
        await S.cosign_withdraw(client, ops[0], params, provider.pubkey(), greedy, req, op_store)
    # a request signature that is not an unstake memo of this provider is refused
    with pytest.raises(S.StakeError):
        await S.cosign_withdraw(client, ops[0], params, provider.pubkey(), tx, str(decode_tx(tx).signatures[0]))

    tx = await S.build_withdraw(client, provider, params, 150 * IO)  # fresh blockhash after the warp
    signed = await S.cosign_withdraw(client, ops[0], params, provider.pubkey(), tx, req, op_store)
    await client.send(decode_tx(signed))
    assert await S.stake_of(client, params, provider.pubkey()) == 250 * IO
    assert await io_balance(client, provider.pubkey(), params.mint) == 750 * IO

    # the same request cannot be used again for another withdrawal (a new message: the next slot's blockhash)
    await trio.sleep(0.9)
    again = await S.build_withdraw(client, provider, params, 150 * IO)
    assert bytes(decode_tx(again).message) != bytes(decode_tx(tx).message)
    with pytest.raises(S.StakeError, match="already used"):
        await S.cosign_withdraw(client, ops[0], params, provider.pubkey(), again, req, op_store)


async def test_slash_by_quorum_with_evidence_memo(client, funded_keypair, tmp_path):
    params, ops, provider = await staked_provider(client, funded_keypair, tmp_path)
    evidence = hashlib.sha256(b"attestation 1234 failed: forged fingerprints").digest()
    treasury0 = await client.token_balance(tk.pubkey(params.treasury))
    quorum = [o.pubkey() for o in ops[:2]]
    unsigned = await S.build_slash(client, params, provider.pubkey(), 100 * IO, evidence, quorum)
    # each operator checks it is exactly the judged slashing; one that judged other evidence refuses
    with pytest.raises(S.StakeError, match="differs"):
        S.cosign_slash(ops[1], params, provider.pubkey(), 100 * IO, hashlib.sha256(b"other").digest(), unsigned)
    with pytest.raises(S.StakeError):
        S.cosign_slash(provider, params, provider.pubkey(), 100 * IO, evidence, unsigned)
    parts = [decode_tx(S.cosign_slash(op, params, provider.pubkey(), 100 * IO, evidence, unsigned)) for op in ops[:2]]
    sig = await client.send(merge(parts))
    assert await S.stake_of(client, params, provider.pubkey()) == 300 * IO
    assert await client.token_balance(tk.pubkey(params.treasury)) == treasury0 + 100 * IO
    landed, _, failed = await client.get_transaction(sig)
    memos = [bytes(ix.data).decode() for ix in landed.message.instructions
             if landed.message.account_keys[ix.program_id_index] == tk.MEMO_PROGRAM_ID]
    assert not failed and memos == [f"iog/slash/1 {provider.pubkey()} {evidence.hex()}"]
    # a single operator is below the quorum
    with pytest.raises(S.StakeError):
        await S.build_slash(client, params, provider.pubkey(), 1, evidence, quorum[:1])
    assert encode_tx(merge(parts))  # merged transaction serializes
