"""Provider collateral: a stake token account the provider cannot empty alone.

Why this shape (DESIGN.md "Collateral"): without a custom program, "locked" means the token account's owner is an
SPL multisig the provider is only one member of. Each provider's stake account is owned by the multisig
[provider, op_1..op_n] with threshold m = the operators' quorum (n <= 10, SPL allows 11 signers):

* **deposit** — anyone may add IO; the provider's first deposit creates the multisig and the account (both seeded
  from the provider key, so anyone can find them: :func:`stake_addresses`).
* **unstake** — the provider posts a public, timestamped request: a Memo transaction
  ``iog/unstake/1 <stake account> <amount>`` signed by the provider. Its block time (``getTransaction``) starts the
  cooldown (``network.unstake_cooldown_s``).
* **withdraw** — a transfer back to the provider signed by the provider and m-1 operators (m signatures); every
  operator's library (:func:`cosign_withdraw`) refuses before the cooldown has passed on the chain clock, refuses a
  request already used, and refuses any transaction other than exactly that transfer. Genesis requires m >= 2 so a
  provider alone never reaches the threshold.
* **slash** — m operators, without the provider, transfer stake to the treasury with the evidence hash in a memo
  (``iog/slash/1 <provider> <evidence sha256 hex>``).

:func:`stake_of` verifies the account really is locked this way before counting it (mint, owner, multisig members
and threshold, no delegate or close authority); anything else counts as zero stake.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction

from ..errors import ProtocolError, UserError
from ..store import Store, schema
from . import token as tk
from .multisig import MultisigError, decode_tx, encode_tx, sign_partial, verify_present
from .network import NetworkParams

STAKE_SEED = "iog-stake"
STAKE_MULTISIG_SEED = "iog-stake-msig"
UNSTAKE_MEMO = "iog/unstake/1"
SLASH_MEMO = "iog/slash/1"


class StakeError(ProtocolError):
    """A stake operation was refused (a request that does not check out, a wrong transaction)."""


class UnstakeTooEarly(StakeError):
    """The cooldown since the unstake request has not passed on the chain clock."""


class NoStake(UserError):
    """The provider has no stake account yet; deposit first (`p2pnode stake deposit AMOUNT`)."""


@dataclass(frozen=True)
class StakeAddresses:
    multisig: Pubkey
    account: Pubkey


def stake_addresses(provider: Pubkey | str) -> StakeAddresses:
    p = tk.pubkey(provider)
    return StakeAddresses(tk.seeded_address(p, STAKE_MULTISIG_SEED, tk.TOKEN_PROGRAM_ID),
                          tk.seeded_address(p, STAKE_SEED, tk.TOKEN_PROGRAM_ID))


def stake_signers(params: NetworkParams, provider: Pubkey) -> list[Pubkey]:
    return [provider, *(tk.pubkey(o) for o in params.operators)]


def required_stake(params: NetworkParams, devices: Iterable[Any]) -> int:
    """IO base units a provider must lock for `devices` (names, or objects with .name and .kind)."""
    total = 0
    for d in devices:
        name = d if isinstance(d, str) else ("cpu" if getattr(d, "kind", "") == "cpu" else getattr(d, "name", ""))
        total += params.stake_per_device * params.multiplier(name) // 100
    return total


# --- reading --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StakeStatus:
    provider: Pubkey
    account: Pubkey
    exists: bool
    amount: int  # 0 unless the account is locked exactly as required
    locked: bool
    problem: str = ""


async def stake_status(client: Any, params: NetworkParams, provider: Pubkey | str) -> StakeStatus:
    p = tk.pubkey(provider)
    addrs = stake_addresses(p)
    accs = await client.get_accounts([addrs.account, addrs.multisig])
    acc, ms_acc = accs
    if acc is None:
        return StakeStatus(p, addrs.account, False, 0, False, "no stake account")
    problem = ""
    try:
        ta = tk.parse_token_account(acc.data)
        if acc.owner != tk.TOKEN_PROGRAM_ID or str(ta.mint) != params.mint:
            problem = "stake account is not an IO token account"
        elif ta.owner != addrs.multisig:
            problem = "stake account is not owned by the stake multisig"
        elif ta.delegate is not None or ta.close_authority is not None:
            problem = "stake account has a delegate or close authority"
        elif ms_acc is None or ms_acc.owner != tk.TOKEN_PROGRAM_ID:
            problem = "stake multisig missing"
        else:
            ms = tk.parse_multisig(ms_acc.data)
            if ms.m != params.threshold or tk.multisig_signers(ms) != stake_signers(params, p):
                problem = "stake multisig members or threshold differ from the network's operators"
    except Exception as exc:  # malformed account data is someone else's problem: count as no stake
        problem = f"unreadable stake account ({type(exc).__name__})"
    if problem:
        return StakeStatus(p, addrs.account, True, 0, False, problem)
    return StakeStatus(p, addrs.account, True, ta.amount, True)


async def stake_of(client: Any, params: NetworkParams, provider: Pubkey | str) -> int:
    """Locked stake in base units (0 if none or not locked as required) — for eligibility checks."""
    return (await stake_status(client, params, provider)).amount


async def is_eligible(client: Any, params: NetworkParams, provider: Pubkey | str, devices: Iterable[Any]) -> bool:
    return await stake_of(client, params, provider) >= required_stake(params, devices)


# --- provider side ----------------------------------------------------------------------------------------------


async def deposit(client: Any, provider: Keypair, params: NetworkParams, amount: int) -> str:
    """Lock `amount` more IO (creating the multisig + stake account on the first deposit)."""
    if amount <= 0:
        raise UserError("stake deposit amount must be positive")
    p = provider.pubkey()
    mint = tk.pubkey(params.mint)
    addrs = stake_addresses(p)
    have = await client.get_account(addrs.account)
    ixs = []
    if have is None:
        ms_rent = await client.rent_exempt(tk.MULTISIG_LEN)
        acc_rent = await client.rent_exempt(tk.ACCOUNT_LEN)
        ixs += [tk.create_seeded(p, p, STAKE_MULTISIG_SEED, ms_rent, tk.MULTISIG_LEN, tk.TOKEN_PROGRAM_ID),
                tk.init_multisig(addrs.multisig, stake_signers(params, p), params.threshold),
                tk.create_seeded(p, p, STAKE_SEED, acc_rent, tk.ACCOUNT_LEN, tk.TOKEN_PROGRAM_ID),
                tk.init_token_account(addrs.account, mint, addrs.multisig)]
    ixs.append(tk.transfer(tk.ata(p, mint), mint, addrs.account, p, amount))
    return await _send(client, [provider], ixs)


async def request_unstake(client: Any, provider: Keypair, params: NetworkParams, amount: int) -> str:
    """Post the public unstake request (a memo); returns its signature, which starts the cooldown."""
    status = await stake_status(client, params, provider.pubkey())
    if not status.exists:
        raise NoStake(f"{provider.pubkey()} has no stake account; deposit first")
    if amount <= 0 or amount > status.amount:
        raise UserError(f"unstake amount must be in 1..{status.amount} base units (the locked stake)")
    text = f"{UNSTAKE_MEMO} {status.account} {amount}"
    return await _send(client, [provider], [tk.memo(text, [provider.pubkey()])])


def withdraw_message(params: NetworkParams, provider: Pubkey, amount: int, cosigners: list[Pubkey],
                     blockhash: Hash) -> Message:
    """Stake -> the provider's token account, signed by the provider and `cosigners` (m-1 operators)."""
    mint = tk.pubkey(params.mint)
    addrs = stake_addresses(provider)
    ix = tk.transfer(addrs.account, mint, tk.ata(provider, mint), addrs.multisig, amount, [provider, *cosigners])
    return Message.new_with_blockhash([tk.create_ata(provider, provider, mint), ix], provider, blockhash)


async def build_withdraw(client: Any, provider: Keypair, params: NetworkParams, amount: int,
                         cosigners: list[Pubkey] | None = None) -> bytes:
    """Provider: the withdrawal transaction with its own signature, to send to the operators for co-signing."""
    ops = cosigners if cosigners is not None else [tk.pubkey(o) for o in params.operators[: params.threshold - 1]]
    bh = await client.latest_blockhash()
    tx = Transaction.new_unsigned(withdraw_message(params, provider.pubkey(), amount, ops, bh))
    return encode_tx(sign_partial(tx, provider))


# --- operator side --------------------------------------------------------------------------------------------

schema("stake_operator", """
    CREATE TABLE IF NOT EXISTS stake_unstake_used (
        request_sig TEXT PRIMARY KEY,
        provider    TEXT NOT NULL,
        amount      INTEGER NOT NULL,
        used_at     REAL NOT NULL
    );
""")


@dataclass(frozen=True)
class UnstakeRequest:
    provider: Pubkey
    amount: int
    block_time: int
    signature: str


async def read_unstake_request(client: Any, params: NetworkParams, provider: Pubkey, signature: str) -> UnstakeRequest:
    """Find and check the provider's unstake memo on chain; its block time is the public timestamp."""
    got = await client.get_transaction(signature)
    if got is None:
        raise StakeError(f"unstake request {signature} not found on chain")
    tx, block_time, failed = got
    if failed or block_time is None:
        raise StakeError("unstake request transaction failed or has no block time")
    msg = tx.message
    keys = msg.account_keys
    signers = set(keys[: msg.header.num_required_signatures])
    if provider not in signers:
        raise StakeError("unstake request is not signed by the provider")
    expected_prefix = f"{UNSTAKE_MEMO} {stake_addresses(provider).account} "
    for cix in msg.instructions:
        if keys[cix.program_id_index] == tk.MEMO_PROGRAM_ID:
            text = bytes(cix.data).decode(errors="replace")
            if text.startswith(expected_prefix):
                try:
                    amount = int(text[len(expected_prefix):])
                except ValueError:
                    break
                if amount > 0:
                    return UnstakeRequest(provider, amount, int(block_time), signature)
    raise StakeError("transaction is not an unstake request for this provider's stake")


async def cosign_withdraw(client: Any, operator: Keypair, params: NetworkParams, provider: Pubkey | str,
                          tx_bytes: bytes, request_sig: str, store: Store | None = None) -> bytes:
    """Operator: co-sign a provider's withdrawal only after the cooldown, once per request, exactly as requested."""
    p = tk.pubkey(provider)
    if str(operator.pubkey()) not in params.operators:
        raise StakeError("this key is not one of the network's operators")
    req = await read_unstake_request(client, params, p, request_sig)
    now = await client.unix_time()
    ready_at = req.block_time + params.unstake_cooldown_s
    if now < ready_at:
        raise UnstakeTooEarly(f"unstake cooldown ends in {ready_at - now} s (request at {req.block_time})")
    try:
        tx = decode_tx(tx_bytes)
    except MultisigError as exc:
        raise StakeError(f"withdraw transaction: {exc}") from None
    msg = tx.message
    cosigners = [k for k in msg.account_keys[: msg.header.num_required_signatures] if k != p]
    if operator.pubkey() not in cosigners or len(set(cosigners)) != len(cosigners):
        raise StakeError("withdraw transaction does not list this operator as a co-signer")
    expected = withdraw_message(params, p, req.amount, cosigners, msg.recent_blockhash)
    if bytes(msg) != bytes(expected):
        raise StakeError("withdraw transaction is not exactly the requested withdrawal")
    verify_present(tx)
    if store is not None:
        with store.tx() as db:
            row = db.execute("SELECT used_at FROM stake_unstake_used WHERE request_sig = ?", (request_sig,)).fetchone()
            if row is not None:
                # re-signing the same blockhash-bound message is harmless (it can land once); a new one is replay
                prev = store.get(f"stake_withdraw_msg:{request_sig}")
                if prev is None or bytes(prev) != bytes(msg):
                    raise StakeError("this unstake request was already used for a withdrawal")
            else:
                db.execute("INSERT INTO stake_unstake_used(request_sig, provider, amount, used_at) VALUES(?,?,?,?)",
                           (request_sig, str(p), req.amount, time.time()))
                store.put(f"stake_withdraw_msg:{request_sig}", bytes(msg))
    return encode_tx(sign_partial(tx, operator))


def slash_message(params: NetworkParams, provider: Pubkey, amount: int, evidence_hash: bytes,
                  operators: list[Pubkey], blockhash: Hash) -> Message:
    """Stake -> treasury by `operators` (the quorum, first one pays fees), with the evidence hash in a memo."""
    if len(evidence_hash) != 32:
        raise ValueError("evidence hash is a 32-byte sha256")
    mint = tk.pubkey(params.mint)
    addrs = stake_addresses(provider)
    ixs = [tk.transfer(addrs.account, mint, tk.pubkey(params.treasury), addrs.multisig, amount, list(operators)),
           tk.memo(f"{SLASH_MEMO} {provider} {evidence_hash.hex()}", list(operators))]
    return Message.new_with_blockhash(ixs, operators[0], blockhash)


async def build_slash(client: Any, params: NetworkParams, provider: Pubkey | str, amount: int, evidence_hash: bytes,
                      operators: list[Pubkey]) -> bytes:
    """Unsigned slashing transaction for the quorum to co-sign with :func:`cosign_slash`."""
    if len(operators) < params.threshold:
        raise StakeError(f"slashing needs {params.threshold} operators")
    bh = await client.latest_blockhash()
    return encode_tx(Transaction.new_unsigned(slash_message(params, tk.pubkey(provider), amount, evidence_hash,
                                                            operators, bh)))


def cosign_slash(operator: Keypair, params: NetworkParams, provider: Pubkey | str, amount: int,
                 evidence_hash: bytes, tx_bytes: bytes) -> bytes:
    """Operator: sign a slashing only if it is exactly the one this operator has judged (amount, evidence)."""
    if str(operator.pubkey()) not in params.operators:
        raise StakeError("this key is not one of the network's operators")
    tx = decode_tx(tx_bytes)
    msg = tx.message
    signers = list(msg.account_keys[: msg.header.num_required_signatures])
    if any(str(s) not in params.operators for s in signers) or operator.pubkey() not in signers:
        raise StakeError("slashing must be signed by operators only, including this one")
    expected = slash_message(params, tk.pubkey(provider), amount, evidence_hash, signers, msg.recent_blockhash)
    if bytes(msg) != bytes(expected):
        raise StakeError("slashing transaction differs from the judged amount or evidence")
    verify_present(tx)
    return encode_tx(sign_partial(tx, operator))


async def _send(client: Any, signers: list[Keypair], ixs: list) -> str:
    bh = await client.latest_blockhash()
    tx = Transaction(signers, Message.new_with_blockhash(ixs, signers[0].pubkey(), bh), bh)
    return str(await client.send(tx))

