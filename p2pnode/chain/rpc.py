"""`ChainClient`: the one way p2pnode talks to a Solana cluster, safe under trio.

solana-py's ``AsyncClient`` works under trio for plain calls (httpx over anyio), but its ``confirm_transaction``
and rate limiter use asyncio, so confirmation here polls ``getSignatureStatuses`` with ``trio.sleep``. Transport
failures are retried with exponential backoff (re-sending a signed transaction is safe: a duplicate is answered
AlreadyProcessed and counts as sent), and every failure is one typed :class:`ChainError` whose message names the
endpoint and the fix.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Awaitable, Callable, Sequence, TypeVar

import httpx2
import trio
from solana.exceptions import SolanaRpcException
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Commitment
from solana.rpc.core import RPCException, RPCNoResultException
from solana.rpc.jsonrpc import JsonRpcRequest, SolanaJsonRpcError
from solana.rpc.models import TxOpts
from solders.account import Account
from solders.hash import Hash
from solders.pubkey import Pubkey
from solders.rpc.errors import SendTransactionPreflightFailureMessage
from solders.rpc.responses import RpcSimulateTransactionResult
from solders.signature import Signature
from solders.system_program import ID as SYSTEM_PROGRAM_ID
from solders.transaction import Transaction, VersionedTransaction
from solders.transaction_status import TransactionConfirmationStatus, TransactionErrorFieldless

from ..errors import UserError

T = TypeVar("T")

CLOCK_SYSVAR = Pubkey.from_string("SysvarC1ock11111111111111111111111111111111")
TOKEN_PROGRAM_ID = Pubkey.from_string("TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA")
TOKEN_2022_PROGRAM_ID = Pubkey.from_string("TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb")
_ORDER = {"processed": 0, "confirmed": 1, "finalized": 2}
_TRANSPORT_ERRORS = (SolanaRpcException, httpx2.HTTPError, OSError)


class ChainError(UserError):
    """Settlement on Solana failed; the message says what and what to do."""


class RpcUnreachable(ChainError):
    """The RPC endpoint did not answer (after retries)."""


class InsufficientFunds(ChainError):
    """An account lacks SOL (fee, rent, transfer) or tokens for the transaction."""


class BlockhashExpired(ChainError):
    """The transaction's blockhash (or durable nonce) is no longer valid: rebuild, re-sign, resend."""


class TransactionFailed(ChainError):
    """The cluster rejected or failed the transaction; `err` is the runtime error, `logs` the program logs."""

    def __init__(self, message: str, err: Any = None, logs: Sequence[str] | None = None) -> None:
        super().__init__(message)
        self.err = err
        self.logs = list(logs or [])


class ConfirmTimeout(ChainError):
    """The transaction was sent but not seen confirmed in time; it may still land (check its signature)."""


class AccountMissing(ChainError):
    """The account does not exist (or is not of the expected kind)."""


def _err_json(err: Any) -> Any:
    return json.loads(RpcSimulateTransactionResult(err=err).to_json())["err"]


def _is_fieldless(err: Any, which: Any) -> bool:
    try:
        return err == which
    except TypeError:
        return False


def classify(err: Any, logs: Sequence[str], tx: Transaction | VersionedTransaction | None, where: str) -> ChainError:
    """Map a runtime TransactionError to the typed error a caller can act on."""
    text = _err_json(err)
    if _is_fieldless(err, TransactionErrorFieldless.BlockhashNotFound):
        return BlockhashExpired(f"{where}: blockhash not found (expired); fetch a new blockhash, re-sign and resend")
    if any(_is_fieldless(err, e) for e in (TransactionErrorFieldless.InsufficientFundsForFee,
                                             TransactionErrorFieldless.AccountNotFound)):
        return InsufficientFunds(f"{where}: the fee payer has no SOL for the fee ({text}); fund it (airdrop on a "
                                 "localnet/devnet)")
    if isinstance(text, dict) and "InsufficientFundsForRent" in text:
        return InsufficientFunds(f"{where}: an account would fall below rent exemption ({text}); send more SOL")
    if isinstance(text, dict) and "InstructionError" in text and tx is not None:
        idx, ierr = text["InstructionError"]
        program = None
        try:
            ix = tx.message.instructions[idx]
            program = tx.message.account_keys[ix.program_id_index]
        except (IndexError, TypeError):
            pass
        if ierr == {"Custom": 1} and program in (SYSTEM_PROGRAM_ID, TOKEN_PROGRAM_ID, TOKEN_2022_PROGRAM_ID):
            what = "SOL" if program == SYSTEM_PROGRAM_ID else "tokens"
            return InsufficientFunds(f"{where}: insufficient {what} for instruction {idx}; fund the account")
        if ierr == "InsufficientFunds":
            return InsufficientFunds(f"{where}: insufficient funds for instruction {idx}; fund the account")
    tail = "; ".join(logs[-3:]) if logs else "no logs"
    return TransactionFailed(f"{where}: transaction failed: {text} ({tail})", err, logs)


def is_nonce_transaction(tx: Transaction | VersionedTransaction) -> bool:
    """True when the first instruction is System AdvanceNonceAccount (the runtime's durable-nonce rule)."""
    msg = tx.message
    if not msg.instructions:
        return False
    ix = msg.instructions[0]
    keys = msg.account_keys
    data = bytes(ix.data)
    return (ix.program_id_index < len(keys) and keys[ix.program_id_index] == SYSTEM_PROGRAM_ID
            and len(data) >= 4 and struct.unpack_from("<I", data)[0] == 4)


class ChainClient:
    """Trio-safe Solana RPC client: typed errors, retries with backoff, confirmation by polling."""

    def __init__(self, url: str, *, commitment: str = "confirmed", timeout_s: float = 30.0, retries: int = 4,
                 backoff_s: float = 0.2, poll_s: float = 0.1) -> None:
        if commitment not in _ORDER:
            raise ValueError(f"commitment must be one of {sorted(_ORDER)}")
        self.url = url
        self.commitment = commitment
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.poll_s = poll_s
        self._client = AsyncClient(url, commitment=Commitment(commitment), timeout=min(timeout_s, 10.0),
                                   http2=False, max_transport_retries=0)

    async def __aenter__(self) -> "ChainClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._client.close()

    # ---- plumbing ------------------------------------------------------------------------------------------------
    async def _call(self, what: str, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """One RPC call with retries on transport errors; JSON-RPC error answers are not retried."""
        delay = self.backoff_s
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            try:
                with trio.fail_after(self.timeout_s):
                    return await fn(*args, **kwargs)
            except (trio.TooSlowError, *_TRANSPORT_ERRORS) as exc:
                inner = exc.__cause__ if isinstance(exc, SolanaRpcException) and exc.__cause__ else exc
                if isinstance(inner, httpx2.HTTPStatusError) and inner.response.status_code < 500 and \
                        inner.response.status_code != 429:
                    raise ChainError(f"{self.url}: {what} answered HTTP {inner.response.status_code}; is this a "
                                     "Solana JSON-RPC endpoint? fix chain.rpc_url") from None
                last = exc
                if attempt < self.retries:
                    await trio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        cause = last.__cause__ if last is not None and last.__cause__ is not None else last
        detail = str(cause).splitlines()[0] if str(cause) else ""
        raise RpcUnreachable(f"{self.url}: RPC unreachable ({what}: {type(cause).__name__}: {detail}) after "
                             f"{self.retries + 1} attempts; start `p2pnode localnet` or fix chain.rpc_url") from None

    def _rpc_error(self, what: str, exc: Exception) -> ChainError:
        arg = exc.args[0] if exc.args else exc
        message = getattr(arg, "message", None) or str(arg)
        return ChainError(f"{self.url}: {what} failed: {message}")

    # ---- reads ---------------------------------------------------------------------------------------------------
    async def health(self) -> bool:
        return await self._call("getHealth", self._client.is_connected)

    async def latest_blockhash(self) -> Hash:
        resp = await self._call("getLatestBlockhash", self._client.get_latest_blockhash)
        return resp.value.blockhash

    async def latest_blockhash_with_height(self) -> tuple[Hash, int]:
        resp = await self._call("getLatestBlockhash", self._client.get_latest_blockhash)
        return resp.value.blockhash, resp.value.last_valid_block_height

    async def blockhash_valid(self, blockhash: Hash) -> bool:
        req = JsonRpcRequest(method="isBlockhashValid", params=[str(blockhash), {"commitment": "processed"}])
        raw = await self._call("isBlockhashValid", self._client.send_rpc_request, req, dict)
        return bool(raw["value"])

    async def slot(self) -> int:
        return (await self._call("getSlot", self._client.get_slot)).value

    async def get_account(self, pubkey: Pubkey) -> Account | None:
        resp = await self._call("getAccountInfo", self._client.get_account_info, pubkey, encoding="base64")
        return resp.value

    async def get_accounts(self, pubkeys: Sequence[Pubkey]) -> list[Account | None]:
        out: list[Account | None] = []
        for i in range(0, len(pubkeys), 100):
            resp = await self._call("getMultipleAccounts", self._client.get_multiple_accounts,
                                    list(pubkeys[i:i + 100]), encoding="base64")
            out.extend(resp.value)
        return out

    async def balance(self, pubkey: Pubkey) -> int:
        return (await self._call("getBalance", self._client.get_balance, pubkey)).value

    async def token_balance(self, token_account: Pubkey) -> int:
        try:
            resp = await self._call("getTokenAccountBalance", self._client.get_token_account_balance, token_account)
        except RPCException as exc:
            raise AccountMissing(f"{token_account}: not an existing SPL token account ({self._rpc_error('', exc)})")
        return int(resp.value.amount)

    async def rent_exempt(self, size: int) -> int:
        return (await self._call("getMinimumBalanceForRentExemption",
                                 self._client.get_minimum_balance_for_rent_exemption, size)).value

    async def unix_time(self) -> int:
        """The cluster's clock (Clock sysvar unix_timestamp), which on-chain logic and cooldowns agree on."""
        acc = await self.get_account(CLOCK_SYSVAR)
        if acc is None or len(acc.data) < 40:
            raise ChainError(f"{self.url}: the Clock sysvar is missing; is this a Solana cluster?")
        return struct.unpack_from("<q", bytes(acc.data), 32)[0]

    async def simulate(self, tx: Transaction | VersionedTransaction, *, sig_verify: bool = False
                       ) -> RpcSimulateTransactionResult:
        vtx = VersionedTransaction.from_legacy(tx) if isinstance(tx, Transaction) else tx
        try:
            resp = await self._call("simulateTransaction", self._client.simulate_transaction, vtx,
                                    sig_verify=sig_verify)
        except RPCException as exc:
            raise self._rpc_error("simulateTransaction", exc) from None
        return resp.value

    # ---- writes --------------------------------------------------------------------------------------------------
    async def send_unconfirmed(self, tx: Transaction | VersionedTransaction, *, skip_preflight: bool = False
                               ) -> Signature:
        """Submit with preflight; a preflight failure raises the typed error, nothing is sent."""
        sig = tx.signatures[0]
        opts = TxOpts(skip_confirmation=True, skip_preflight=skip_preflight, preflight_commitment=self.commitment)
        try:
            resp = await self._call("sendTransaction", self._client.send_raw_transaction, bytes(tx), opts)
        except RPCException as exc:
            arg = exc.args[0] if exc.args else None
            if isinstance(arg, SendTransactionPreflightFailureMessage):
                err, logs = arg.data.err, list(arg.data.logs or [])
                if _is_fieldless(err, TransactionErrorFieldless.AlreadyProcessed):
                    return sig  # a retry of a send that reached the cluster: it is in, go confirm it
                raise classify(err, logs, tx, f"transaction {sig}") from None
            raise TransactionFailed(f"transaction {sig}: rejected by {self.url}: "
                                    f"{getattr(arg, 'message', arg)}", None, []) from None
        except (RPCNoResultException, SolanaJsonRpcError) as exc:
            raise TransactionFailed(f"transaction {sig}: rejected by {self.url}: {exc}") from None
        return resp.value

    async def confirm(self, sig: Signature, timeout_s: float | None = None, *, blockhash: Hash | None = None,
                      tx: Transaction | VersionedTransaction | None = None) -> None:
        """Poll until `sig` reaches this client's commitment; raise the typed error if it failed, if its
        `blockhash` expired without it landing, or after `timeout_s`."""
        want = _ORDER[self.commitment]
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = trio.current_time() + timeout_s
        delay = self.poll_s
        polls = 0
        while True:
            resp = await self._call("getSignatureStatuses", self._client.get_signature_statuses, [sig])
            status = resp.value[0]
            if status is not None:
                if status.err is not None:
                    logs = await self._logs(sig)
                    raise classify(status.err, logs, tx, f"transaction {sig}")
                level = status.confirmation_status
                name = ("finalized" if level == TransactionConfirmationStatus.Finalized else
                        "confirmed" if level == TransactionConfirmationStatus.Confirmed else "processed")
                if _ORDER[name] >= want:
                    return
            elif blockhash is not None and polls % 5 == 4 and not await self.blockhash_valid(blockhash):
                last = (await self._call("getSignatureStatuses", self._client.get_signature_statuses, [sig])).value[0]
                if last is None:
                    raise BlockhashExpired(f"transaction {sig}: its blockhash expired before it landed; rebuild, "
                                           "re-sign and resend")
                continue
            polls += 1
            if trio.current_time() + delay > deadline:
                raise ConfirmTimeout(f"transaction {sig}: not {self.commitment} within {timeout_s:.0f} s on "
                                     f"{self.url}; it may still land, check the signature before resending")
            await trio.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    async def _logs(self, sig: Signature) -> list[str]:
        try:
            resp = await self._call("getTransaction", self._client.get_transaction, sig,
                                    max_supported_transaction_version=0)
        except (ChainError, RPCException):
            return []
        if resp.value is None or resp.value.transaction.meta is None:
            return []
        return list(resp.value.transaction.meta.log_messages or [])

    async def send(self, tx: Transaction | VersionedTransaction, *, timeout_s: float | None = None) -> Signature:
        """Send (with preflight) and confirm; the typed error says why it did not land."""
        sig = await self.send_unconfirmed(tx)
        # a durable-nonce transaction's "blockhash" is the nonce value, never a recent blockhash: don't expire on it
        nonced = isinstance(tx, Transaction) and tx.uses_durable_nonce()
        await self.confirm(sig, timeout_s, blockhash=None if nonced else tx.message.recent_blockhash, tx=tx)
        return sig

    async def signature_succeeded(self, sig: Signature | str) -> bool:
        """True if `sig` landed without error at this client's commitment (used to finish interrupted sends)."""
        sig = Signature.from_string(sig) if isinstance(sig, str) else sig
        status = (await self._call("getSignatureStatuses", self._client.get_signature_statuses, [sig])).value[0]
        if status is None or status.err is not None:
            return False
        # solders' status enum is not hashable: compare, don't look it up
        cs = status.confirmation_status
        level = ("finalized" if cs == TransactionConfirmationStatus.Finalized
                 else "confirmed" if cs == TransactionConfirmationStatus.Confirmed else "processed")
        return _ORDER[level] >= _ORDER[self.commitment]

    async def signatures_for_address(self, address: Pubkey, *, limit: int = 1000, before: Signature | None = None,
                                     commitment: str | None = None) -> list:
        """getSignaturesForAddress: newest first (signature, slot, err, memo, block_time) entries."""
        kw: dict[str, Any] = {"limit": limit, "before": before}
        if commitment is not None:
            kw["commitment"] = Commitment(commitment)
        try:
            resp = await self._call("getSignaturesForAddress", self._client.get_signatures_for_address, address, **kw)
        except RPCException as exc:
            raise self._rpc_error("getSignaturesForAddress", exc) from None
        return list(resp.value)

    async def get_transaction(self, sig: Signature | str) -> tuple[Transaction, int | None, bool] | None:
        """A landed legacy transaction: (transaction, block time, failed?), or None if unknown to the node."""
        sig = Signature.from_string(sig) if isinstance(sig, str) else sig
        resp = await self._call("getTransaction", self._client.get_transaction, sig, encoding="base64",
                                max_supported_transaction_version=0)
        if resp.value is None:
            return None
        enc = resp.value.transaction
        vtx = enc.transaction
        msg = vtx.message
        from solders.message import Message as LegacyMessage
        if not isinstance(msg, LegacyMessage):
            raise ChainError(f"transaction {sig}: a v0 transaction where a legacy one was expected")
        tx = Transaction.populate(msg, list(vtx.signatures))
        failed = enc.meta is not None and enc.meta.err is not None
        return tx, resp.value.block_time, failed

    async def airdrop(self, pubkey: Pubkey, lamports: int) -> Signature:
        """Request SOL from the cluster's faucet (localnet/devnet) and wait until it is confirmed."""
        try:
            resp = await self._call("requestAirdrop", self._client.request_airdrop, pubkey, lamports)
        except RPCException as exc:
            raise self._rpc_error("requestAirdrop", exc) from None
        await self.confirm(resp.value)
        return resp.value

    async def warp_clock(self, seconds: int) -> int:
        """Dev localnet only: move the cluster clock forward; returns the new unix time."""
        req = JsonRpcRequest(method="p2pnode_warpClock", params=[int(seconds)])
        try:
            raw = await self._call("p2pnode_warpClock", self._client.send_rpc_request, req, dict)
        except SolanaJsonRpcError as exc:
            raise ChainError(f"{self.url}: time warp refused ({exc}); it needs `p2pnode localnet --dev`") from None
        return int(raw["unixTimestamp"])


__all__ = ["AccountMissing", "BlockhashExpired", "ChainClient", "ChainError", "ConfirmTimeout", "InsufficientFunds",
           "RpcUnreachable", "TransactionFailed", "classify", "is_nonce_transaction"]
