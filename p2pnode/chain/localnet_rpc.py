"""Solana JSON-RPC 2.0 methods of the localnet, answered from a :class:`LocalChain`.

Results are built with solders' own RPC response types where one exists (so their JSON is exactly what solders and
solana-py parse) and by hand only where solders has no builder (account encodings with dataSlice/base58, getTransaction
with the json encoding). Errors are the spec's error objects; a handler never lets an exception reach the HTTP layer.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Callable

import base58
from solders.hash import Hash
from solders.message import Message, MessageV0, from_bytes_versioned
from solders.pubkey import Pubkey
from solders.rpc.responses import (
    GetBalanceResp,
    GetBlockHeightResp,
    GetEpochInfoResp,
    GetFeeForMessageResp,
    GetGenesisHashResp,
    GetHealthResp,
    GetLatestBlockhashResp,
    GetMinimumBalanceForRentExemptionResp,
    GetSignatureStatusesResp,
    GetSlotResp,
    GetTokenAccountBalanceResp,
    GetTransactionCountResp,
    GetVersionResp,
    RequestAirdropResp,
    RpcBlockhash,
    RpcResponseContext,
    RpcSimulateTransactionResult,
    RpcVersionInfo,
    SendTransactionResp,
    SimulateTransactionResp,
)
from solders.epoch_info import EpochInfo
from solders.account_decoder import UiTokenAmount
from solders.signature import Signature
from solders.transaction import VersionedTransaction
from solders.transaction_status import (
    TransactionConfirmationStatus,
    TransactionErrorFieldless,
    TransactionStatus,
)

from .localnet_state import SIGNATURE_FEE, SLOTS_PER_EPOCH, BadTransaction, LocalChain, TxRejected

SOLANA_CORE_VERSION = "2.2.0"  # the API level these answers follow
FEATURE_SET = 3294202862
TOKEN_PROGRAM_ID = Pubkey.from_string("TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA")
TOKEN_2022_PROGRAM_ID = Pubkey.from_string("TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb")
MAX_MULTIPLE_ACCOUNTS = 100
MAX_SIGNATURE_STATUSES = 256
MAX_SIGNATURES_FOR_ADDRESS = 1000
MAX_AIRDROP_LAMPORTS = 10**9 * 10**9  # 1e9 SOL: the faucet's own limit
_RESULT_PREFIX = '{"jsonrpc":"2.0","result":'
_RESULT_SUFFIX = ',"id":0}'

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32601, -32602, -32603
PREFLIGHT_FAILURE, SIGNATURE_VERIFICATION_FAILURE, UNSUPPORTED_TX_VERSION = -32002, -32003, -32015


class RpcError(Exception):
    """An error answer: code, message and optional data (already JSON-able or a JSON string)."""

    def __init__(self, code: int, message: str, data: Any = None, *, data_json: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data, self.data_json = code, message, data, data_json

    def error_json(self) -> str:
        out = '{"code":%d,"message":%s' % (self.code, json.dumps(self.message))
        if self.data_json is not None:
            out += ',"data":' + self.data_json
        elif self.data is not None:
            out += ',"data":' + json.dumps(self.data)
        return out + "}"


def _result(resp: Any) -> str:
    """The `result` member of a solders response, as JSON text."""
    text = resp.to_json()
    assert text.startswith(_RESULT_PREFIX) and text.endswith(_RESULT_SUFFIX), text[:80]
    return text[len(_RESULT_PREFIX):-len(_RESULT_SUFFIX)]


def invalid(msg: str) -> RpcError:
    return RpcError(INVALID_PARAMS, f"Invalid params: {msg}")


def _param(params: list, i: int, kind: type | tuple, name: str, *, optional: bool = False) -> Any:
    if i >= len(params) or params[i] is None:
        if optional:
            return None
        raise invalid(f"missing {name}")
    val = params[i]
    if kind is int and isinstance(val, bool):
        raise invalid(f"{name} must be an integer")
    if not isinstance(val, kind):
        raise invalid(f"{name} has the wrong type")
    return val


def _pubkey(val: Any, name: str = "pubkey") -> Pubkey:
    if not isinstance(val, str) or len(val) > 44:
        raise RpcError(INVALID_PARAMS, f"Invalid param: {name} is not a valid base58 public key")
    try:
        return Pubkey.from_string(val)
    except Exception:
        raise RpcError(INVALID_PARAMS, "Invalid param: WrongSize") from None


def _signature(val: Any) -> Signature:
    if not isinstance(val, str) or len(val) > 88:
        raise RpcError(INVALID_PARAMS, "Invalid param: not a signature")
    try:
        return Signature.from_string(val)
    except Exception:
        raise RpcError(INVALID_PARAMS, "Invalid param: WrongSize") from None


def _config(params: list, i: int) -> dict:
    cfg = _param(params, i, dict, "configuration", optional=True)
    return cfg or {}


def _u64(val: Any, name: str) -> int:
    if isinstance(val, bool) or not isinstance(val, int) or not 0 <= val < 2**64:
        raise invalid(f"{name} must be an unsigned 64-bit integer")
    return val


def _same(a: Any, b: Any) -> bool:
    """Equality of solders error values (comparing different error classes raises TypeError)."""
    try:
        return bool(a == b)
    except TypeError:
        return False


_FIELDLESS_TEXT = [
    (TransactionErrorFieldless.BlockhashNotFound, "Blockhash not found"),
    (TransactionErrorFieldless.AlreadyProcessed, "This transaction has already been processed"),
    (TransactionErrorFieldless.AccountNotFound, "Attempt to debit an account but found no record of a prior credit."),
    (TransactionErrorFieldless.InsufficientFundsForFee, "Insufficient funds for fee"),
    (TransactionErrorFieldless.SignatureFailure, "Transaction did not pass signature verification"),
]


def _err_text(err: Any) -> str:
    for known, text in _FIELDLESS_TEXT:
        if _same(err, known):
            return text
    text = json.loads(RpcSimulateTransactionResult(err=err).to_json())["err"]
    if isinstance(text, dict) and "InstructionError" in text:
        idx, ierr = text["InstructionError"]
        if isinstance(ierr, dict) and "Custom" in ierr:
            return f"Error processing Instruction {idx}: custom program error: {hex(ierr['Custom'])}"
        return f"Error processing Instruction {idx}: {ierr}"
    return str(text)


class Methods:
    """JSON-RPC method table over one chain; `call(method, params)` returns the result's JSON text."""

    def __init__(self, chain: LocalChain, *, on_write: Callable[[], None] = lambda: None) -> None:
        self.chain = chain
        self.on_write = on_write  # wakes the ledger flusher
        self.table: dict[str, Callable[[list], str]] = {
            "getHealth": self.get_health,
            "getVersion": self.get_version,
            "getSlot": self.get_slot,
            "getBlockHeight": self.get_block_height,
            "getLatestBlockhash": self.get_latest_blockhash,
            "isBlockhashValid": self.is_blockhash_valid,
            "getBalance": self.get_balance,
            "getAccountInfo": self.get_account_info,
            "getMultipleAccounts": self.get_multiple_accounts,
            "getProgramAccounts": self.get_program_accounts,
            "getTokenAccountBalance": self.get_token_account_balance,
            "getTokenAccountsByOwner": self.get_token_accounts_by_owner,
            "getMinimumBalanceForRentExemption": self.get_minimum_balance,
            "getFeeForMessage": self.get_fee_for_message,
            "sendTransaction": self.send_transaction,
            "simulateTransaction": self.simulate_transaction,
            "getSignatureStatuses": self.get_signature_statuses,
            "getTransaction": self.get_transaction,
            "getSignaturesForAddress": self.get_signatures_for_address,
            "requestAirdrop": self.request_airdrop,
            "getEpochInfo": self.get_epoch_info,
            "getGenesisHash": self.get_genesis_hash,
            "getTransactionCount": self.get_transaction_count,
            "getFirstAvailableBlock": lambda params: "0",
            "minimumLedgerSlot": lambda params: "0",
        }
        if chain.dev:
            self.table["p2pnode_warpClock"] = self.warp_clock

    def call(self, method: str, params: Any) -> str:
        fn = self.table.get(method)
        if fn is None:
            raise RpcError(METHOD_NOT_FOUND, "Method not found")
        if params is None:
            params = []
        if not isinstance(params, list):
            raise invalid("params must be an array")
        return fn(params)

    # ---- helpers -------------------------------------------------------------------------------------------------
    def ctx(self) -> RpcResponseContext:
        return RpcResponseContext(self.chain.slot, SOLANA_CORE_VERSION)

    def _ctx_json(self) -> str:
        return '{"slot":%d,"apiVersion":"%s"}' % (self.chain.slot, SOLANA_CORE_VERSION)

    def _with_ctx(self, value_json: str) -> str:
        return '{"context":' + self._ctx_json() + ',"value":' + value_json + "}"

    @staticmethod
    def _encoding(cfg: dict, default: str = "base64") -> str:
        enc = cfg.get("encoding", default) or default
        if enc not in ("base64", "base58", "jsonParsed", "base64+zstd"):
            raise invalid(f"unknown variant `{enc}`, expected one of `binary`, `base58`, `base64`, `jsonParsed`, "
                          "`base64+zstd`")
        if enc == "base64+zstd":
            raise invalid("base64+zstd encoding is not supported by this localnet; use base64")
        return enc

    @staticmethod
    def _account_json(acc: Any, enc: str, data_slice: Any = None) -> str:
        if acc is None:
            return "null"
        data = bytes(acc.data)
        full_len = len(data)
        if data_slice is not None:
            if not isinstance(data_slice, dict):
                raise invalid("dataSlice must be an object")
            off = _u64(data_slice.get("offset", 0), "dataSlice.offset")
            ln = _u64(data_slice.get("length", 0), "dataSlice.length")
            data = data[off:off + ln]
        if enc == "base58":
            if len(data) > 128:
                raise RpcError(INVALID_REQUEST, "Encoded binary (base 58) data should be less than 128 bytes, please "
                                                "use Base64 encoding.")
            encoded = [base58.b58encode(data).decode(), "base58"]
        else:  # base64; jsonParsed falls back to base64 when there is no parser, as the spec allows
            encoded = [base64.b64encode(data).decode(), "base64"]
        return json.dumps({"data": encoded, "executable": acc.executable, "lamports": acc.lamports,
                           "owner": str(acc.owner), "rentEpoch": acc.rent_epoch, "space": full_len},
                          separators=(",", ":"))

    def _decode_tx(self, params: list) -> tuple[VersionedTransaction, bytes, dict]:
        encoded = _param(params, 0, str, "transaction")
        cfg = _config(params, 1)
        enc = cfg.get("encoding", "base58")
        try:
            if enc == "base64":
                raw = base64.b64decode(encoded, validate=True)
            elif enc == "base58":
                raw = base58.b58decode(encoded)
            else:
                raise invalid(f"unsupported encoding: {enc}. Supported encodings: base58, base64")
        except (ValueError, TypeError):
            raise invalid(f"invalid {enc} encoding") from None
        if len(raw) > 1232:
            raise invalid(f"{enc} encoded solana_transaction::versioned::VersionedTransaction too large: "
                          f"{len(raw)} bytes (max: encoded/raw 1644/1232)")
        try:
            tx = self.chain.decode(raw)
        except BadTransaction as exc:
            raise invalid(str(exc)) from None
        return tx, raw, cfg

    # ---- methods -----------------------------------------------------------------------------------------------
    def get_health(self, params: list) -> str:
        return _result(GetHealthResp("ok"))

    def get_version(self, params: list) -> str:
        return _result(GetVersionResp(RpcVersionInfo(SOLANA_CORE_VERSION, FEATURE_SET)))

    def get_slot(self, params: list) -> str:
        return _result(GetSlotResp(self.chain.slot))

    def get_block_height(self, params: list) -> str:
        return _result(GetBlockHeightResp(self.chain.slot))

    def get_transaction_count(self, params: list) -> str:
        return _result(GetTransactionCountResp(self.chain.transaction_count))

    def get_genesis_hash(self, params: list) -> str:
        return _result(GetGenesisHashResp(self.chain.genesis_hash))

    def get_epoch_info(self, params: list) -> str:
        s = self.chain.slot
        return _result(GetEpochInfoResp(EpochInfo(s // SLOTS_PER_EPOCH, s % SLOTS_PER_EPOCH, SLOTS_PER_EPOCH, s, s,
                                                  self.chain.transaction_count)))

    def get_latest_blockhash(self, params: list) -> str:
        _config(params, 0)
        bh, last_valid = self.chain.latest_blockhash()
        return _result(GetLatestBlockhashResp(RpcBlockhash(bh, last_valid), self.ctx()))

    def is_blockhash_valid(self, params: list) -> str:
        text = _param(params, 0, str, "blockhash")
        try:
            bh = Hash.from_string(text)
        except Exception:
            raise RpcError(INVALID_PARAMS, "Invalid param: not a blockhash") from None
        return self._with_ctx("true" if self.chain.blockhash_valid(bh) else "false")

    def get_balance(self, params: list) -> str:
        key = _pubkey(_param(params, 0, str, "pubkey"))
        _config(params, 1)
        return _result(GetBalanceResp(self.chain.svm.get_balance(key) or 0, self.ctx()))

    def get_minimum_balance(self, params: list) -> str:
        size = _u64(_param(params, 0, int, "data length"), "data length")
        if size > 10 * 1024 * 1024:
            raise invalid("data length exceeds the maximum account size (10 MiB)")
        return _result(GetMinimumBalanceForRentExemptionResp(self.chain.svm.minimum_balance_for_rent_exemption(size)))

    def get_account_info(self, params: list) -> str:
        key = _pubkey(_param(params, 0, str, "pubkey"))
        cfg = _config(params, 1)
        enc = self._encoding(cfg, "base58")
        acc = self.chain.svm.get_account(key)
        if acc is not None and acc.lamports == 0:
            acc = None
        return self._with_ctx(self._account_json(acc, enc, cfg.get("dataSlice")))

    def get_multiple_accounts(self, params: list) -> str:
        keys = _param(params, 0, list, "pubkeys")
        if len(keys) > MAX_MULTIPLE_ACCOUNTS:
            raise invalid(f"Too many inputs provided; max {MAX_MULTIPLE_ACCOUNTS}")
        pubkeys = [_pubkey(k) for k in keys]
        cfg = _config(params, 1)
        enc = self._encoding(cfg, "base64")
        out = []
        for key in pubkeys:
            acc = self.chain.svm.get_account(key)
            out.append(self._account_json(acc if acc is not None and acc.lamports else None, enc,
                                          cfg.get("dataSlice")))
        return self._with_ctx("[" + ",".join(out) + "]")

    def _filtered(self, program: Pubkey, filters: Any) -> list[tuple[Pubkey, Any]]:
        if filters is None:
            filters = []
        if not isinstance(filters, list) or len(filters) > 4:
            raise invalid("filters must be an array of at most 4 filters")
        checks = []
        for f in filters:
            if not isinstance(f, dict):
                raise invalid("filter must be an object")
            if "dataSize" in f:
                size = _u64(f["dataSize"], "dataSize")
                checks.append(lambda d, size=size: len(d) == size)
            elif "memcmp" in f and isinstance(f["memcmp"], dict):
                m = f["memcmp"]
                off = _u64(m.get("offset", 0), "memcmp.offset")
                enc = m.get("encoding", "base58")
                try:
                    want = base64.b64decode(m["bytes"]) if enc == "base64" else base58.b58decode(m["bytes"])
                except Exception:
                    raise invalid("memcmp.bytes is not valid") from None
                checks.append(lambda d, off=off, want=want: d[off:off + len(want)] == want)
            else:
                raise invalid("unknown filter")
        out = []
        for key, acc in self.chain.svm.get_program_accounts(program):
            if acc.lamports == 0:
                continue
            data = bytes(acc.data)
            if all(c(data) for c in checks):
                out.append((key, acc))
        return out

    def _keyed(self, pairs: list[tuple[Pubkey, Any]], enc: str, data_slice: Any) -> str:
        return "[" + ",".join('{"pubkey":"%s","account":%s}' % (k, self._account_json(a, enc, data_slice))
                              for k, a in pairs) + "]"

    def get_program_accounts(self, params: list) -> str:
        program = _pubkey(_param(params, 0, str, "program id"))
        cfg = _config(params, 1)
        enc = self._encoding(cfg, "base64")
        body = self._keyed(self._filtered(program, cfg.get("filters")), enc, cfg.get("dataSlice"))
        return self._with_ctx(body) if cfg.get("withContext") else body

    def _token_account(self, key: Pubkey) -> tuple[Any, int, int]:
        """(mint pubkey, amount, decimals) of an SPL token account, or a -32602 error like the real RPC."""
        acc = self.chain.svm.get_account(key)
        if acc is None or acc.lamports == 0:
            raise RpcError(INVALID_PARAMS, "Invalid param: could not find account")
        data = bytes(acc.data)
        if acc.owner not in (TOKEN_PROGRAM_ID, TOKEN_2022_PROGRAM_ID) or len(data) < 165:
            raise RpcError(INVALID_PARAMS, "Invalid param: not a Token account")
        mint = Pubkey.from_bytes(data[0:32])
        amount = int.from_bytes(data[64:72], "little")
        mint_acc = self.chain.svm.get_account(mint)
        if mint_acc is None or len(mint_acc.data) < 82:
            raise RpcError(INVALID_PARAMS, "Invalid param: could not find mint")
        decimals = bytes(mint_acc.data)[44]
        return mint, amount, decimals

    @staticmethod
    def _ui_amount(amount: int, decimals: int) -> UiTokenAmount:
        if decimals:
            s = str(amount).rjust(decimals + 1, "0")
            ui = (s[:-decimals] + "." + s[-decimals:]).rstrip("0").rstrip(".")
        else:
            ui = str(amount)
        return UiTokenAmount(float(ui), decimals, str(amount), ui)

    def get_token_account_balance(self, params: list) -> str:
        key = _pubkey(_param(params, 0, str, "pubkey"))
        _config(params, 1)
        _mint, amount, decimals = self._token_account(key)
        return _result(GetTokenAccountBalanceResp(self._ui_amount(amount, decimals), self.ctx()))

    def get_token_accounts_by_owner(self, params: list) -> str:
        owner = _pubkey(_param(params, 0, str, "owner"))
        flt = _param(params, 1, dict, "filter (mint or programId)")
        cfg = _config(params, 2)
        enc = self._encoding(cfg, "base64")
        if "mint" in flt:
            mint = _pubkey(flt["mint"], "mint")
            programs = [TOKEN_PROGRAM_ID, TOKEN_2022_PROGRAM_ID]
            extra = [{"memcmp": {"offset": 0, "bytes": str(mint)}}]
        elif "programId" in flt:
            prog = _pubkey(flt["programId"], "programId")
            if prog not in (TOKEN_PROGRAM_ID, TOKEN_2022_PROGRAM_ID):
                raise RpcError(INVALID_PARAMS, "Invalid param: unrecognized Token program id")
            programs, extra = [prog], []
        else:
            raise invalid("filter must contain mint or programId")
        pairs = []
        for prog in programs:
            pairs += [(k, a) for k, a in self._filtered(prog, [{"memcmp": {"offset": 32, "bytes": str(owner)}}]
                                                         + extra) if len(a.data) >= 165]
        return self._with_ctx(self._keyed(pairs, enc, cfg.get("dataSlice")))

    def get_fee_for_message(self, params: list) -> str:
        text = _param(params, 0, str, "message")
        _config(params, 1)
        try:
            msg = from_bytes_versioned(base64.b64decode(text, validate=True))
        except Exception:
            raise invalid("failed to deserialize the message") from None
        if not self.chain.blockhash_valid(msg.recent_blockhash):
            return self._with_ctx("null")
        return _result(GetFeeForMessageResp(SIGNATURE_FEE * msg.header.num_required_signatures, self.ctx()))

    def send_transaction(self, params: list) -> str:
        tx, raw, cfg = self._decode_tx(params)
        preflight = not cfg.get("skipPreflight", False)
        try:
            sig = self.chain.send(tx, raw, preflight=preflight)
        except TxRejected as rej:
            if _same(rej.err, TransactionErrorFieldless.SignatureFailure):
                raise RpcError(SIGNATURE_VERIFICATION_FAILURE, "Transaction signature verification failure")
            raise RpcError(PREFLIGHT_FAILURE, "Transaction simulation failed: " + _err_text(rej.err),
                           data_json=rej.sim_result().to_json()) from None
        finally:
            self.on_write()
        return _result(SendTransactionResp(sig))

    def simulate_transaction(self, params: list) -> str:
        tx, _raw, cfg = self._decode_tx([params[0] if params else None,
                                         {"encoding": (_config(params, 1)).get("encoding", "base58")}])
        cfg = _config(params, 1)
        sig_verify = bool(cfg.get("sigVerify", False))
        replace = bool(cfg.get("replaceRecentBlockhash", False))
        if sig_verify and replace:
            raise invalid("sigVerify may not be used with replaceRecentBlockhash")
        replacement = None
        if replace:
            bh, last_valid = self.chain.latest_blockhash()
            m = tx.message
            if isinstance(m, MessageV0):
                m2: Any = MessageV0(m.header, m.account_keys, bh, m.instructions, m.address_table_lookups)
            else:
                m2 = Message.new_with_compiled_instructions(
                    m.header.num_required_signatures, m.header.num_readonly_signed_accounts,
                    m.header.num_readonly_unsigned_accounts, m.account_keys, bh, m.instructions)
            tx = VersionedTransaction.populate(m2, tx.signatures)
            replacement = RpcBlockhash(bh, last_valid)
        svm = self.chain.svm
        if not sig_verify:
            svm.with_sigverify(False)
        try:
            sim = self.chain.simulate(tx)
        finally:
            svm.with_sigverify(True)
        if replacement is not None:
            sim = RpcSimulateTransactionResult(err=sim.err, logs=sim.logs, units_consumed=sim.units_consumed,
                                               fee=sim.fee, return_data=sim.return_data,
                                               replacement_blockhash=replacement)
        return _result(SimulateTransactionResp(sim, self.ctx()))

    def get_signature_statuses(self, params: list) -> str:
        sigs = _param(params, 0, list, "signatures")
        if len(sigs) > MAX_SIGNATURE_STATUSES:
            raise invalid(f"Too many inputs provided; max {MAX_SIGNATURE_STATUSES}")
        parsed = [_signature(s) for s in sigs]
        _config(params, 1)
        out = []
        for sig in parsed:
            rec = self.chain.status(sig)
            if rec is None:
                out.append(None)
                continue
            conf = TransactionConfirmationStatus.Finalized if rec.durable else TransactionConfirmationStatus.Processed
            out.append(TransactionStatus(rec.slot, None if rec.durable else 0, rec.err, rec.err, conf))
        return _result(GetSignatureStatusesResp(out, self.ctx()))

    def get_signatures_for_address(self, params: list) -> str:
        """Newest first; `limit` (1..1000, default 1000), `before`/`until` signatures; finalized (= on disk) only
        unless a lower commitment is asked for, like a validator's answer."""
        from solders.rpc.responses import GetSignaturesForAddressResp, RpcConfirmedTransactionStatusWithSignature

        from .localnet_state import memo_text

        address = _pubkey(_param(params, 0, str, "address"), "address")
        cfg = _config(params, 1)
        limit = cfg.get("limit", MAX_SIGNATURES_FOR_ADDRESS)
        if limit is None:
            limit = MAX_SIGNATURES_FOR_ADDRESS
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_SIGNATURES_FOR_ADDRESS:
            raise invalid(f"limit must be in 1..{MAX_SIGNATURES_FOR_ADDRESS}")
        before = _signature(cfg["before"]) if cfg.get("before") is not None else None
        until = _signature(cfg["until"]) if cfg.get("until") is not None else None
        finalized_only = cfg.get("commitment", "finalized") not in ("processed", "confirmed")
        out = []
        for sig, rec in self.chain.signatures_for(address, limit=MAX_SIGNATURES_FOR_ADDRESS if finalized_only
                                                  else limit, before=before, until=until):
            if finalized_only and not rec.durable:
                continue
            memo = memo_text(VersionedTransaction.from_bytes(rec.tx)) if rec.tx else None
            conf = TransactionConfirmationStatus.Finalized if rec.durable else TransactionConfirmationStatus.Processed
            out.append(RpcConfirmedTransactionStatusWithSignature(sig, rec.slot, rec.err, memo, rec.block_time, conf))
            if len(out) >= limit:
                break
        return _result(GetSignaturesForAddressResp(out))

    def get_transaction(self, params: list) -> str:
        sig = _signature(_param(params, 0, str, "signature"))
        cfg = params[1] if len(params) > 1 and params[1] is not None else {}
        if isinstance(cfg, str):  # the deprecated form: encoding as the second param
            cfg = {"encoding": cfg}
        if not isinstance(cfg, dict):
            raise invalid("configuration must be an object")
        enc = cfg.get("encoding", "json") or "json"
        if enc not in ("json", "jsonParsed", "base64", "base58"):
            raise invalid(f"unknown encoding {enc}")
        rec = self.chain.status(sig)
        if rec is None or not rec.tx or (not rec.durable and cfg.get("commitment") != "confirmed"):
            return "null"  # finalized (the default) = on disk
        tx = VersionedTransaction.from_bytes(rec.tx)
        legacy = not isinstance(tx.message, MessageV0)
        max_version = cfg.get("maxSupportedTransactionVersion")
        if not legacy and max_version is None:
            raise RpcError(UNSUPPORTED_TX_VERSION, "Transaction version (0) is not supported by the requesting "
                                                   "client. Please try the request again with the following "
                                                   "configuration parameter: \"maxSupportedTransactionVersion\": 0")
        if enc == "base64":
            tx_json: Any = [base64.b64encode(rec.tx).decode(), "base64"]
        elif enc == "base58":
            tx_json = [base58.b58encode(rec.tx).decode(), "base58"]
        else:
            tx_json = self._ui_transaction(tx)
        err = json.loads(RpcSimulateTransactionResult(err=rec.err).to_json())["err"]
        meta = {"err": err, "status": {"Ok": None} if err is None else {"Err": err}, "fee": rec.fee,
                "preBalances": rec.pre_balances, "postBalances": rec.post_balances, "innerInstructions": [],
                "logMessages": rec.logs, "preTokenBalances": [], "postTokenBalances": [], "rewards": [],
                "loadedAddresses": self._loaded(tx), "computeUnitsConsumed": rec.units}
        out: dict[str, Any] = {"slot": rec.slot, "blockTime": rec.block_time, "transaction": tx_json, "meta": meta}
        if max_version is not None:
            out["version"] = "legacy" if legacy else 0
        return json.dumps(out, separators=(",", ":"))

    def _loaded(self, tx: VersionedTransaction) -> dict:
        """meta.loadedAddresses of a v0 transaction (lookup tables only ever grow, so resolving now is exact)."""
        from solders.address_lookup_table_account import AddressLookupTable

        out: dict[str, list[str]] = {"writable": [], "readonly": []}
        for lk in getattr(tx.message, "address_table_lookups", None) or []:
            acc = self.chain.svm.get_account(lk.account_key)
            addrs = list(AddressLookupTable.deserialize(bytes(acc.data)).addresses) if acc is not None else []
            out["writable"] += [str(addrs[i]) for i in bytes(lk.writable_indexes) if i < len(addrs)]
            out["readonly"] += [str(addrs[i]) for i in bytes(lk.readonly_indexes) if i < len(addrs)]
        return out

    @staticmethod
    def _ui_transaction(tx: VersionedTransaction) -> dict:
        m = tx.message
        h = m.header
        msg: dict[str, Any] = {
            "header": {"numRequiredSignatures": h.num_required_signatures,
                       "numReadonlySignedAccounts": h.num_readonly_signed_accounts,
                       "numReadonlyUnsignedAccounts": h.num_readonly_unsigned_accounts},
            "accountKeys": [str(k) for k in m.account_keys],
            "recentBlockhash": str(m.recent_blockhash),
            "instructions": [{"programIdIndex": ix.program_id_index, "accounts": list(bytes(ix.accounts)),
                              "data": base58.b58encode(bytes(ix.data)).decode(), "stackHeight": None}
                             for ix in m.instructions],
        }
        if isinstance(m, MessageV0):
            msg["addressTableLookups"] = [{"accountKey": str(lk.account_key),
                                           "writableIndexes": list(bytes(lk.writable_indexes)),
                                           "readonlyIndexes": list(bytes(lk.readonly_indexes))}
                                          for lk in m.address_table_lookups]
        return {"signatures": [str(s) for s in tx.signatures], "message": msg}

    def request_airdrop(self, params: list) -> str:
        key = _pubkey(_param(params, 0, str, "pubkey"))
        lamports = _u64(_param(params, 1, int, "lamports"), "lamports")
        _config(params, 2)
        if lamports == 0 or lamports > MAX_AIRDROP_LAMPORTS:
            raise RpcError(INTERNAL_ERROR, "airdrop request failed: amount must be in (0, 1e18] lamports")
        try:
            sig = self.chain.airdrop(key, lamports)
        except TxRejected as rej:
            raise RpcError(INTERNAL_ERROR, f"airdrop request failed: {_err_text(rej.err)}") from None
        finally:
            self.on_write()
        return _result(RequestAirdropResp(sig))

    def warp_clock(self, params: list) -> str:
        """Dev only: move the cluster clock (Clock sysvar unix_timestamp) forward by `seconds`."""
        seconds = _u64(_param(params, 0, int, "seconds"), "seconds")
        if seconds > 100 * 365 * 86400:
            raise invalid("seconds must be at most 100 years")
        now = self.chain.warp_clock(seconds)
        self.on_write()
        return json.dumps({"unixTimestamp": now, "slot": self.chain.slot})
