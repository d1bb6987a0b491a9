"""Transactions signed by several parties: build once, sign separately, merge, verify before submitting.

Why: every quorum action (stake withdrawal, slashing, treasury and rewards transfers) and every payment-channel
settlement needs signatures from keys held by different machines. The parties exchange the serialized transaction
(bincode, as Solana sends it); each checks the message is the one it expects, adds its signature in its slot, and
whoever holds all of them submits. Merging refuses copies whose messages differ, so nobody can slip a different
message under someone else's signature.
"""

from __future__ import annotations

from collections.abc import Iterable

from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import Transaction

from ..errors import ProtocolError
from ..identity import verify_signature

_NO_SIG = Signature.default()

__all__ = ["MultisigError", "decode_tx", "encode_tx", "merge", "missing_signers", "required_signers",
           "sign_partial", "signature_of", "unsigned", "verify_present"]


class MultisigError(ProtocolError):
    """A partially signed transaction is malformed, has a bad signature, or does not match its peers."""


def required_signers(message: Message) -> list[Pubkey]:
    return list(message.account_keys[: message.header.num_required_signatures])


def unsigned(message: Message) -> Transaction:
    """A transaction with every signature slot empty."""
    return Transaction.new_unsigned(message)


def sign_partial(tx: Transaction, *keypairs: Keypair) -> Transaction:
    """Return a copy with `keypairs`' signatures added in their slots (each must be a required signer)."""
    message = tx.message
    signers = required_signers(message)
    sigs = list(tx.signatures)
    payload = bytes(message)
    for kp in keypairs:
        pk = kp.pubkey()
        try:
            i = signers.index(pk)
        except ValueError:
            raise MultisigError(f"{pk} is not a required signer of this transaction") from None
        sigs[i] = kp.sign_message(payload)
    return Transaction.populate(message, sigs)


def signature_of(tx: Transaction, key: Pubkey) -> Signature | None:
    signers = required_signers(tx.message)
    if key not in signers:
        return None
    sig = tx.signatures[signers.index(key)]
    return None if sig == _NO_SIG else sig


def missing_signers(tx: Transaction) -> list[Pubkey]:
    return [k for k, s in zip(required_signers(tx.message), tx.signatures) if s == _NO_SIG]


def verify_present(tx: Transaction) -> None:
    """Every signature present must verify over the message (absent slots are allowed)."""
    payload = bytes(tx.message)
    for key, sig in zip(required_signers(tx.message), tx.signatures):
        if sig != _NO_SIG and not verify_signature(bytes(key), payload, bytes(sig)):
            raise MultisigError(f"signature of {key} does not verify")


def merge(txs: Iterable[Transaction]) -> Transaction:
    """Combine the signatures of copies of one message; copies with a different message are refused."""
    txs = list(txs)
    if not txs:
        raise MultisigError("nothing to merge")
    message = txs[0].message
    payload = bytes(message)
    sigs = list(txs[0].signatures)
    for other in txs[1:]:
        if bytes(other.message) != payload:
            raise MultisigError("partial transactions sign different messages")
        for i, s in enumerate(other.signatures):
            if s != _NO_SIG:
                if sigs[i] != _NO_SIG and sigs[i] != s:
                    raise MultisigError(f"conflicting signatures for signer #{i}")
                sigs[i] = s
    tx = Transaction.populate(message, sigs)
    verify_present(tx)
    return tx


MAX_TX_BYTES = 1232  # Solana packet limit for a serialized transaction


def encode_tx(tx: Transaction) -> bytes:
    return bytes(tx)


def decode_tx(data: bytes) -> Transaction:
    """Parse an untrusted serialized transaction; anything malformed is a :class:`MultisigError`."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_TX_BYTES:
        raise MultisigError(f"a transaction is at most {MAX_TX_BYTES} bytes")
    try:
        tx = Transaction.from_bytes(bytes(data))
    except Exception as exc:  # solders raises its own SerdeJSONError / ValueError variants
        raise MultisigError(f"undecodable transaction ({type(exc).__name__})") from None
    if len(tx.signatures) != tx.message.header.num_required_signatures:
        raise MultisigError("signature count does not match the message header")
    return tx
