"""Reward transfers as the chain shows them: find the batch transactions of an epoch and what they paid.

Two users, both reading only standard JSON-RPC (``getSignaturesForAddress`` + ``getTransaction``), so they work the
same against the embedded localnet, devnet or mainnet:

* a **provider** checks its own entry of a manifest against the transfer that actually reached its token account
  (``p2pnode rewards``): right epoch, right Merkle root in the batch memo, exact amount, from the rewards pool;
* a **distributor taking over** (the quorum approved another operator as the pool's delegate) must not pay again
  what the previous delegate already paid: before planning batches for an epoch it subtracts the transfers that
  the chain already holds for that epoch and root (:meth:`Distributor.pay`).

Every batch carries the memo ``iog/rewards/1 <epoch> <batch>/<count> <root hex>``; the RPC's signature list
includes memos, so only transactions whose memo names the epoch wanted are fetched. Transfers are SPL ``Transfer``
instructions whose source is the pool; payee accounts may come from address lookup tables, resolved through the
transaction's ``loadedAddresses``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from solana.rpc.commitment import Confirmed
from solders.pubkey import Pubkey
from solders.signature import Signature
from spl.token.constants import TOKEN_PROGRAM_ID

from ..errors import P2PNodeError
from .token import MEMO_PROGRAM_ID

MEMO_TAG = "iog/rewards/1"
PAGE = 1000
MAX_PAGES = 20  # a scan looks at most this many pages of history (20,000 transactions) before giving up
_TRANSFER = 3  # SPL Token instruction index (TransferChecked is 12)
_TRANSFER_CHECKED = 12


class OnChainError(P2PNodeError):
    """The chain's history could not be read or does not make sense (RPC gave an unusable answer)."""


@dataclass(frozen=True)
class PaidTransfer:
    epoch: int
    batch: int
    root: bytes
    dest: Pubkey  # the token account credited
    amount: int
    signature: str


def parse_memo(memo: str | None) -> tuple[int, int, int, bytes] | None:
    """(epoch, batch, count, root) from a signature-list memo ("[len] text; ...") or a raw memo text."""
    if not memo:
        return None
    for part in memo.split("; "):
        text = part.split("] ", 1)[1] if part.startswith("[") and "] " in part else part
        fields = text.strip().split(" ")
        if len(fields) != 4 or fields[0] != MEMO_TAG:
            continue
        try:
            epoch = int(fields[1])
            batch, count = (int(x) for x in fields[2].split("/", 1))
            root = bytes.fromhex(fields[3])
        except ValueError:
            continue
        if len(root) == 32 and epoch >= 0 and 0 <= batch < count:
            return epoch, batch, count, root
    return None


def parse_transfers(message, keys: list[Pubkey], source: Pubkey) -> tuple[list[str], list[tuple[Pubkey, int]]]:
    """(memo texts, [(dest, amount)] of SPL Transfer/TransferChecked out of `source`) of a message.

    `keys` are the message's account keys followed by any addresses loaded from lookup tables.
    """
    memos: list[str] = []
    out: list[tuple[Pubkey, int]] = []
    for ix in message.instructions:
        if ix.program_id_index >= len(keys):
            continue
        program = keys[ix.program_id_index]
        data = bytes(ix.data)
        accs = bytes(ix.accounts)
        if program == TOKEN_PROGRAM_ID and data and data[0] in (_TRANSFER, _TRANSFER_CHECKED) and len(data) >= 9:
            if len(accs) < (2 if data[0] == _TRANSFER else 3):
                continue
            src_i, dest_i = (accs[0], accs[1]) if data[0] == _TRANSFER else (accs[0], accs[2])
            if max(src_i, dest_i) < len(keys) and keys[src_i] == source:
                out.append((keys[dest_i], struct.unpack_from("<Q", data, 1)[0]))
        elif program == MEMO_PROGRAM_ID and data:
            memos.append(data.decode("utf-8", "replace"))
    return memos, out


async def _transfers_of(rpc, sig: Signature, pool: Pubkey) -> tuple[tuple[int, int, int, bytes] | None,
                                                                   list[tuple[Pubkey, int]]]:
    """(memo fields, [(dest, amount)] of transfers out of `pool`) of one landed transaction."""
    from solders.transaction import VersionedTransaction

    resp = await rpc.get_transaction(sig, encoding="base64", commitment=Confirmed,
                                     max_supported_transaction_version=0)
    got = resp.value
    if got is None:
        return None, []
    meta = got.transaction.meta
    if meta is None or meta.err is not None:
        return None, []  # a failed transaction moved nothing
    tx = got.transaction.transaction
    if not isinstance(tx, VersionedTransaction):
        raise OnChainError(f"getTransaction {sig}: expected a binary transaction")
    keys = list(tx.message.account_keys)
    loaded = meta.loaded_addresses
    if loaded is not None:
        keys += [Pubkey.from_string(str(k)) for k in loaded.writable]
        keys += [Pubkey.from_string(str(k)) for k in loaded.readonly]
    memos, out = parse_transfers(tx.message, keys, pool)
    memo = next((m for m in map(parse_memo, memos) if m is not None), None)
    return memo, out


async def reward_transfers(rpc, account: Pubkey, pool: Pubkey, *, epochs: set[int] | None = None,
                           stop_below: int | None = None) -> list[PaidTransfer]:
    """Reward transfers out of `pool` in the history of `account` (the pool itself, or a payee's token account).

    `epochs` restricts to those epochs; `stop_below` ends the scan at the first batch of an older epoch (payouts
    are made in epoch order, so nothing of interest is older).
    """
    out: list[PaidTransfer] = []
    before = None
    for _ in range(MAX_PAGES):
        page = (await rpc.get_signatures_for_address(account, before=before, limit=PAGE, commitment=Confirmed)).value
        if not page:
            return out
        for st in page:
            m = parse_memo(st.memo)
            if m is None or st.err is not None:
                continue
            if stop_below is not None and m[0] < stop_below:
                return out
            if epochs is not None and m[0] not in epochs:
                continue
            memo, transfers = await _transfers_of(rpc, st.signature, pool)
            if memo is None:
                continue
            for dest, amount in transfers:
                out.append(PaidTransfer(epoch=memo[0], batch=memo[1], root=memo[3], dest=dest, amount=amount,
                                        signature=str(st.signature)))
        before = page[-1].signature
        if len(page) < PAGE:
            return out
    raise OnChainError(f"more than {MAX_PAGES * PAGE} transactions of {account} to scan; narrow the search")
