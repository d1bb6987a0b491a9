"""The IO token on SPL Token: instruction builders, account parsers, deterministic addresses, amount formatting.

Why a module of its own: genesis, stake, escrow and rewards all build the same handful of SPL Token, ATA, System
and Memo instructions; keeping them here means one place decides the exact bytes (the payment channel compares
messages byte for byte, so two builders that differ in account order would break vouchers).

Addresses that several parties must agree on without talking (a provider's stake account, the escrow multisig of a
renter/provider/arbiter triple, a job's escrow account, a provider's nonce accounts) are **seeded**
(``create_account_with_seed``): derivable by anyone from public keys, and only the base key can create them, so
no one can front-run their initialisation.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.pubkey import Pubkey
from solders.system_program import CreateAccountWithSeedParams, create_account_with_seed
from solders.token.state import Mint, Multisig, TokenAccount
from spl.token.constants import ACCOUNT_LEN, ASSOCIATED_TOKEN_PROGRAM_ID, MINT_LEN, MULTISIG_LEN, TOKEN_PROGRAM_ID
from spl.token.instructions import (
    burn_checked,
    close_account,
    create_idempotent_associated_token_account,
    get_associated_token_address,
    initialize_account3,
    initialize_mint2,
    initialize_multisig2,
    mint_to_checked,
    set_authority,
    transfer_checked,
)
from spl.token.models import (
    AuthorityType,
    BurnCheckedParams,
    CloseAccountParams,
    InitializeAccount3Params,
    InitializeMint2Params,
    InitializeMultisig2Params,
    MintToCheckedParams,
    SetAuthorityParams,
    TransferCheckedParams,
)

from ..config import IO, IO_DECIMALS
from ..errors import UserError

MEMO_PROGRAM_ID = Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr")
SYSTEM_PROGRAM_ID = Pubkey.from_string("11111111111111111111111111111111")
NONCE_LEN = 80  # System program nonce account: version u32, state u32, authority 32, durable nonce 32, fee u64
MAX_MULTISIG_SIGNERS = 11  # SPL Token limit
DECIMALS = IO_DECIMALS

__all__ = [
    "ACCOUNT_LEN", "ASSOCIATED_TOKEN_PROGRAM_ID", "MEMO_PROGRAM_ID", "MINT_LEN", "MULTISIG_LEN", "NONCE_LEN",
    "TOKEN_PROGRAM_ID", "AmountError", "NonceState", "ata", "burn", "close", "create_ata", "create_seeded",
    "format_io", "init_multisig", "init_token_account", "memo", "parse_amount", "parse_mint", "parse_multisig",
    "parse_nonce", "parse_token_account", "pubkey", "seed_for", "seeded_address", "transfer",
]


class AmountError(UserError):
    """An IO amount given by the user is not a valid non-negative number with at most 8 decimals."""


# --- amounts ------------------------------------------------------------------------------------------------


def parse_amount(text: str | int) -> int:
    """'12.5' IO -> base units (exact decimal, no float); ints are taken as whole IO."""
    try:
        d = Decimal(str(text).strip())
    except InvalidOperation:
        raise AmountError(f"{text!r} is not an IO amount; give a number like 200 or 12.5") from None
    units = d * IO
    if not d.is_finite() or d < 0 or units != units.to_integral_value():
        raise AmountError(f"{text!r} is not an IO amount (non-negative, at most {IO_DECIMALS} decimals)")
    return int(units)


def format_io(units: int) -> str:
    """Base units -> '12.5' (exact, trailing zeros trimmed)."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), IO)
    if not frac:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:0{IO_DECIMALS}d}".rstrip("0")


# --- addresses ----------------------------------------------------------------------------------------------


def pubkey(value: Pubkey | str | bytes) -> Pubkey:
    if isinstance(value, Pubkey):
        return value
    if isinstance(value, bytes):
        return Pubkey.from_bytes(value)
    return Pubkey.from_string(value)


def seed_for(tag: str, *parts: bytes | Pubkey | str | int) -> str:
    """A ≤ 32-char seed string: a short tag plus a hash of the parts (Solana seeds are at most 32 bytes)."""
    h = hashlib.sha256()
    for p in parts:
        b = bytes(p) if isinstance(p, Pubkey) else p.encode() if isinstance(p, str) else (
            p.to_bytes(8, "little") if isinstance(p, int) else p)
        h.update(len(b).to_bytes(2, "little") + b)
    seed = f"{tag}{h.hexdigest()}"[:32]
    return seed


def seeded_address(base: Pubkey, seed: str, owner_program: Pubkey) -> Pubkey:
    return Pubkey.create_with_seed(base, seed, owner_program)


def ata(owner: Pubkey, mint: Pubkey) -> Pubkey:
    """The associated token account of `owner` for `mint`."""
    return get_associated_token_address(owner, mint)


# --- instructions -------------------------------------------------------------------------------------------


def create_seeded(payer: Pubkey, base: Pubkey, seed: str, lamports: int, space: int, owner: Pubkey) -> Instruction:
    to = seeded_address(base, seed, owner)
    return create_account_with_seed(CreateAccountWithSeedParams(
        from_pubkey=payer, to_pubkey=to, base=base, seed=seed, lamports=lamports, space=space, owner=owner))


def init_mint(mint: Pubkey, authority: Pubkey, decimals: int = DECIMALS) -> Instruction:
    return initialize_mint2(InitializeMint2Params(
        program_id=TOKEN_PROGRAM_ID, mint=mint, decimals=decimals, mint_authority=authority, freeze_authority=None))


def init_multisig(multisig: Pubkey, signers: list[Pubkey], m: int) -> Instruction:
    if not 1 <= m <= len(signers) <= MAX_MULTISIG_SIGNERS:
        raise ValueError(f"multisig needs 1 <= m <= n <= {MAX_MULTISIG_SIGNERS} (got m={m}, n={len(signers)})")
    return initialize_multisig2(InitializeMultisig2Params(
        program_id=TOKEN_PROGRAM_ID, multisig=multisig, signers=list(signers), m=m))


def init_token_account(account: Pubkey, mint: Pubkey, owner: Pubkey) -> Instruction:
    return initialize_account3(InitializeAccount3Params(
        program_id=TOKEN_PROGRAM_ID, account=account, mint=mint, owner=owner))


def create_ata(payer: Pubkey, owner: Pubkey, mint: Pubkey) -> Instruction:
    """Create `owner`'s associated token account if missing (idempotent, so it may sit in any transaction)."""
    return create_idempotent_associated_token_account(payer, owner, mint)


def transfer(source: Pubkey, mint: Pubkey, dest: Pubkey, owner: Pubkey, amount: int,
             signers: list[Pubkey] | None = None) -> Instruction:
    return transfer_checked(TransferCheckedParams(
        program_id=TOKEN_PROGRAM_ID, source=source, mint=mint, dest=dest, owner=owner, amount=amount,
        decimals=DECIMALS, signers=list(signers or [])))


def burn(account: Pubkey, mint: Pubkey, owner: Pubkey, amount: int, signers: list[Pubkey] | None = None) -> Instruction:
    return burn_checked(BurnCheckedParams(
        program_id=TOKEN_PROGRAM_ID, account=account, mint=mint, owner=owner, amount=amount, decimals=DECIMALS,
        signers=list(signers or [])))


def close(account: Pubkey, dest: Pubkey, owner: Pubkey, signers: list[Pubkey] | None = None) -> Instruction:
    return close_account(CloseAccountParams(
        program_id=TOKEN_PROGRAM_ID, account=account, dest=dest, owner=owner, signers=list(signers or [])))


def mint_to(mint: Pubkey, dest: Pubkey, authority: Pubkey, amount: int) -> Instruction:
    return mint_to_checked(MintToCheckedParams(
        program_id=TOKEN_PROGRAM_ID, mint=mint, dest=dest, mint_authority=authority, amount=amount,
        decimals=DECIMALS, signers=[]))


def drop_mint_authority(mint: Pubkey, authority: Pubkey) -> Instruction:
    return set_authority(SetAuthorityParams(
        program_id=TOKEN_PROGRAM_ID, account=mint, authority=AuthorityType.MINT_TOKENS, current_authority=authority,
        new_authority=None, signers=[]))


def memo(text: str | bytes, signers: list[Pubkey] | None = None) -> Instruction:
    """A Memo-program instruction; listed signers must sign (ties the note to them publicly)."""
    data = text.encode() if isinstance(text, str) else text
    return Instruction(MEMO_PROGRAM_ID, data, [AccountMeta(s, True, False) for s in (signers or [])])


# --- account parsing ----------------------------------------------------------------------------------------


def parse_token_account(data: bytes) -> TokenAccount:
    return TokenAccount.from_bytes(bytes(data[:ACCOUNT_LEN]))


def parse_mint(data: bytes) -> Mint:
    return Mint.from_bytes(bytes(data[:MINT_LEN]))


def parse_multisig(data: bytes) -> Multisig:
    return Multisig.from_bytes(bytes(data[:MULTISIG_LEN]))


def multisig_signers(ms: Multisig) -> list[Pubkey]:
    """The n configured signers (solders returns all 11 slots)."""
    return list(ms.signers)[: ms.n]


@dataclass(frozen=True)
class NonceState:
    authority: Pubkey
    nonce: Hash
    lamports_per_signature: int


def parse_nonce(data: bytes) -> NonceState:
    """Decode an initialized System-program nonce account (bincode: version, state, authority, hash, fee)."""
    if len(data) < NONCE_LEN:
        raise ValueError("not a nonce account (too short)")
    _version, state = struct.unpack_from("<II", data, 0)
    if state != 1:
        raise ValueError("nonce account is not initialized")
    authority = Pubkey.from_bytes(bytes(data[8:40]))
    nonce = Hash.from_bytes(bytes(data[40:72]))
    (fee,) = struct.unpack_from("<Q", data, 72)
    return NonceState(authority, nonce, fee)
