"""The quorum's allowance approval, signed by operators on different machines at their own pace.

The delegate design (see :mod:`p2pnode.chain.rewards_distribute`) needs the operators' quorum to sign one SPL
``ApproveChecked`` now and then. With a recent blockhash the signatures would have to be gathered within about a
minute; so the approval is a **durable-nonce** transaction instead: a coordinating operator builds it once (its
nonce account, seeded from its key, is created on first use), signs it, and passes the bytes around (file, chat,
libp2p — any channel: the bytes are self-checking). Each operator rebuilds the exact message it is willing to sign
from (distributor, amount, signers, nonce) and adds its signature only if the bytes match, so nobody can slip in a
different delegate, amount or extra instruction. Whoever completes the quorum submits it. Advancing the nonce when
it lands makes the same approval unusable twice; a newer approval simply replaces the delegate and allowance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio
from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.system_program import create_nonce_account_with_seed
from solders.transaction import Transaction

from ..errors import ProtocolError
from . import token as tk
from .multisig import decode_tx, encode_tx, missing_signers, sign_partial, verify_present
from .rewards_distribute import Pool, approve_allowance_ix

NONCE_TAG = "ioga"


class ApprovalError(ProtocolError):
    """An approval transaction is not the one this operator agreed to sign, or cannot be built."""


@dataclass(frozen=True)
class ApprovalTerms:
    """What every signer checks: who becomes the delegate, for how much, signed by whom, on which nonce."""

    distributor: Pubkey
    amount: int
    signers: tuple[Pubkey, ...]  # the quorum that signs the Approve (first one pays fees and owns the nonce)
    nonce_account: Pubkey
    nonce: Hash


def nonce_account_of(coordinator: Pubkey) -> tuple[Pubkey, str]:
    seed = tk.seed_for(NONCE_TAG, coordinator)
    return tk.seeded_address(coordinator, seed, tk.SYSTEM_PROGRAM_ID), seed


def approval_message(params: Any, t: ApprovalTerms) -> Message:
    """The durable-nonce message for `t`, byte-identical wherever it is built."""
    from .escrow import stamp_nonce

    ix = approve_allowance_ix(Pool.from_network(params), t.distributor, t.amount, list(t.signers))
    coordinator = t.signers[0]
    return stamp_nonce(Message.new_with_nonce([ix], coordinator, t.nonce_account, coordinator), t.nonce)


def _check_terms(params: Any, t: ApprovalTerms) -> None:
    ops = set(params.operators)
    if str(t.distributor) not in ops:
        raise ApprovalError(f"distributor {t.distributor} is not one of the network's operators")
    if len(set(t.signers)) != len(t.signers) or any(str(s) not in ops for s in t.signers):
        raise ApprovalError("the approval must be signed by distinct network operators only")
    if len(t.signers) < params.threshold:
        raise ApprovalError(f"the approval needs {params.threshold} operator signatures, {len(t.signers)} listed")
    if t.amount <= 0:
        raise ApprovalError("the allowance must be positive")


async def prepare_approval(client: Any, params: Any, coordinator: Keypair, distributor: Pubkey, amount: int,
                           signers: list[Pubkey], *, wait_s: float = 10.0) -> tuple[ApprovalTerms, bytes]:
    """Coordinator: ensure its approval nonce account, build the approval and sign it; returns (terms, tx bytes)."""
    if not signers or signers[0] != coordinator.pubkey():
        signers = [coordinator.pubkey(), *[s for s in signers if s != coordinator.pubkey()]]
    nonce_acc, seed = nonce_account_of(coordinator.pubkey())
    if await client.get_account(nonce_acc) is None:
        rent = await client.rent_exempt(tk.NONCE_LEN)
        ixs = create_nonce_account_with_seed(coordinator.pubkey(), nonce_acc, coordinator.pubkey(), seed,
                                             coordinator.pubkey(), rent)
        bh = await client.latest_blockhash()
        await client.send(Transaction([coordinator], Message.new_with_blockhash(list(ixs), coordinator.pubkey(), bh),
                                      bh))
        with trio.fail_after(wait_s):  # a nonce created in this slot can be used from the next blockhash on
            while await client.latest_blockhash() == bh:
                await trio.sleep(0.05)
    acc = await client.get_account(nonce_acc)
    if acc is None:
        raise ApprovalError(f"approval nonce account {nonce_acc} vanished")
    terms = ApprovalTerms(distributor=distributor, amount=amount, signers=tuple(signers), nonce_account=nonce_acc,
                          nonce=tk.parse_nonce(bytes(acc.data)).nonce)
    _check_terms(params, terms)
    tx = sign_partial(Transaction.new_unsigned(approval_message(params, terms)), coordinator)
    return terms, encode_tx(tx)


def cosign_approval(params: Any, operator: Keypair, distributor: Pubkey, amount: int, tx_bytes: bytes) -> bytes:
    """An operator adds its signature only to the approval it agreed to: this delegate, this amount, nothing else."""
    tx = decode_tx(tx_bytes)
    msg = tx.message
    n = msg.header.num_required_signatures
    signers = tuple(msg.account_keys[:n])
    if operator.pubkey() not in signers:
        raise ApprovalError("this operator is not a signer of the approval")
    if len(msg.account_keys) <= n or not msg.instructions:
        raise ApprovalError("not an approval transaction")
    first = bytes(msg.instructions[0].accounts)
    nonce_idx = first[0] if first else None
    if nonce_idx is None or nonce_idx >= len(msg.account_keys):
        raise ApprovalError("not a durable-nonce approval transaction")
    terms = ApprovalTerms(distributor=distributor, amount=amount, signers=signers,
                          nonce_account=msg.account_keys[nonce_idx], nonce=msg.recent_blockhash)
    _check_terms(params, terms)
    if terms.nonce_account != nonce_account_of(signers[0])[0]:
        raise ApprovalError("the nonce account is not the coordinator's approval nonce")
    if bytes(msg) != bytes(approval_message(params, terms)):
        raise ApprovalError("the transaction is not exactly the approval of this distributor and amount")
    verify_present(tx)
    return encode_tx(sign_partial(tx, operator))


def ready(tx_bytes: bytes) -> bool:
    return not missing_signers(decode_tx(tx_bytes))


async def submit_approval(client: Any, tx_bytes: bytes) -> str:
    tx = decode_tx(tx_bytes)
    if missing_signers(tx):
        raise ApprovalError(f"{len(missing_signers(tx))} signature(s) still missing")
    verify_present(tx)
    return str(await client.send(tx))
