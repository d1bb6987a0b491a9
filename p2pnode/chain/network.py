"""network.json: every address and parameter all nodes of one IO network must agree on (the genesis output).

Why a file and not config: these values are facts of the chain (the mint, the operators' multisig, the vaults)
and rules every party checks the others against (fee, stake per device, cooldown). A node that reads a different
file is on a different network, so loading is strict: unknown or missing keys, wrong types and inconsistent values
are a :class:`NetworkFileError` naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import IO, IO_DECIMALS
from ..errors import UserError

NETWORK_FILE_VERSION = 1
DEFAULT_GPU_MULTIPLIERS = {  # percent of stake_per_device, matched by substring of the device name (first hit)
    "H200": 400, "H100": 300, "A100": 200, "L40": 150, "A6000": 150, "4090": 100, "3090": 80, "cpu": 25,
    "default": 100,
}


class NetworkFileError(UserError):
    """network.json is missing, unreadable or inconsistent; the message names the file and key."""


@dataclass
class NetworkParams:
    """The genesis output; see module doc. Addresses are base58 strings, amounts IO base units."""

    cluster: str  # "localnet" | "devnet" | "testnet" | "mainnet-beta" — a hint for tools, not a trust root
    rpc_url: str  # the RPC used at genesis (nodes use their own config.chain.rpc_url)
    genesis_time: int  # unix seconds of emission hour 0 (chain clock at genesis)
    mint: str
    operators: list[str]  # operator public keys (also their libp2p identities)
    threshold: int  # operators' quorum m of n
    multisig: str  # SPL multisig [operators] m-of-n owning the treasury and the rewards pool
    treasury: str  # launch treasury token account (500M IO)
    rewards_pool: str  # rewards pool token account (300M IO)
    deployer: str  # key that paid for genesis; the mint and vault addresses are seeded from it
    decimals: int = IO_DECIMALS
    fee_bps: int = 25  # network fee on job payments, burned (issue 3)
    stake_per_device: int = 200 * IO
    gpu_multipliers: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_GPU_MULTIPLIERS))
    unstake_cooldown_s: int = 21 * 24 * 3600  # io.net: 7 + 14 days
    arbiters: list[str] = field(default_factory=list)  # operators that arbitrate payment channels ([] = all)
    epoch_s: int = 3600  # rewards epoch (one emission hour)
    escrow_grace_s: int = 3600  # refund allowed this long after a job's deadline
    genesis_signature: str = ""
    version: int = NETWORK_FILE_VERSION

    # --- checks ---------------------------------------------------------------------------------------------

    def validate(self, where: str = "network.json") -> "NetworkParams":
        from solders.pubkey import Pubkey

        for name in ("mint", "multisig", "treasury", "rewards_pool", "deployer"):
            _check_address(getattr(self, name), f"{where}: {name}", Pubkey)
        for i, op in enumerate(self.operators):
            _check_address(op, f"{where}: operators[{i}]", Pubkey)
        for i, a in enumerate(self.arbiters):
            _check_address(a, f"{where}: arbiters[{i}]", Pubkey)
            if a not in self.operators:
                raise NetworkFileError(f"{where}: arbiters[{i}] {a} is not an operator")
        if not self.operators or len(set(self.operators)) != len(self.operators):
            raise NetworkFileError(f"{where}: operators must be a non-empty list of distinct keys")
        if len(self.operators) > 10:
            raise NetworkFileError(f"{where}: at most 10 operators (stake multisigs hold provider + operators <= 11)")
        if not 1 <= self.threshold <= len(self.operators):
            raise NetworkFileError(f"{where}: threshold {self.threshold} must be in 1..{len(self.operators)}")
        if self.decimals != IO_DECIMALS:
            raise NetworkFileError(f"{where}: decimals must be {IO_DECIMALS}")
        if not 0 <= self.fee_bps < 10_000:
            raise NetworkFileError(f"{where}: fee_bps must be in 0..9999")
        for name in ("stake_per_device", "unstake_cooldown_s", "genesis_time"):
            if getattr(self, name) < 0:
                raise NetworkFileError(f"{where}: {name} must not be negative")
        if self.epoch_s <= 0 or self.escrow_grace_s < 0:
            raise NetworkFileError(f"{where}: epoch_s must be positive and escrow_grace_s non-negative")
        if any(v < 0 for v in self.gpu_multipliers.values()) or "default" not in self.gpu_multipliers:
            raise NetworkFileError(f"{where}: gpu_multipliers needs a 'default' and non-negative percents")
        return self

    @property
    def arbiter_keys(self) -> list[str]:
        return list(self.arbiters or self.operators)

    def multiplier(self, device_name: str) -> int:
        """Percent of stake_per_device a device needs (first substring match, else 'default')."""
        low = device_name.lower()
        for key, pct in self.gpu_multipliers.items():
            if key != "default" and key.lower() in low:
                return pct
        return self.gpu_multipliers["default"]

    # --- file -----------------------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str = "network.json") -> "NetworkParams":
        if not isinstance(data, dict):
            raise NetworkFileError(f"{where}: expected a JSON object")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise NetworkFileError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise NetworkFileError(f"{where}: missing key {f.name!r}")
                continue
            kwargs[f.name] = _typed(data[f.name], hints[f.name], f"{where}: {f.name}")
        params = cls(**kwargs)
        if params.version != NETWORK_FILE_VERSION:
            raise NetworkFileError(f"{where}: version {params.version}; this node reads version {NETWORK_FILE_VERSION}")
        return params.validate(where)

    @classmethod
    def load(cls, path: Path | str) -> "NetworkParams":
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise NetworkFileError(
                f"{path}: no network file; run `p2pnode genesis --out {path}` or copy the network's network.json there"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise NetworkFileError(f"{path}: cannot read ({exc})") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise NetworkFileError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, str(path))

    def save(self, path: Path | str) -> None:
        """Atomic write (temp file + fsync + rename) so a crash never leaves half a network file."""
        self.validate(str(path))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(self.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def _check_address(value: str, where: str, Pubkey: Any) -> None:
    try:
        Pubkey.from_string(value)
    except Exception:
        raise NetworkFileError(f"{where}: {value!r} is not a base58 Solana address") from None


def _typed(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise NetworkFileError(f"{where}: expected a list")
        return [_typed(v, item, where) for v in value]
    if origin is dict:
        k_t, v_t = typing.get_args(hint)
        if not isinstance(value, dict):
            raise NetworkFileError(f"{where}: expected an object")
        return {_typed(k, k_t, where): _typed(v, v_t, where) for k, v in value.items()}
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise NetworkFileError(f"{where}: expected an integer")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise NetworkFileError(f"{where}: expected a string")
        return value
    raise TypeError(f"{where}: unsupported type {hint!r}")
