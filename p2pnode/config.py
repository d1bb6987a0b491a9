"""Node configuration: one TOML file per node home, every CLI flag also settable there.

Each capability owns one section (a dataclass below); the CLI only overrides fields that were given on the
command line. Unknown sections or keys and wrongly typed values are a :class:`ConfigError` naming the key, so a
typo never silently falls back to a default. Network-wide parameters that all nodes must agree on (mint, multisig,
fees) come from the genesis output ``network.json`` instead, read by :mod:`p2pnode.chain`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_HOME = Path(os.environ.get("P2PNODE_HOME", "~/.p2pnode")).expanduser()
IO_DECIMALS = 8
IO = 10**IO_DECIMALS  # base units per IO


@dataclass
class NetConfig:
    """libp2p host: where to listen, what to announce, whom to ask first."""

    listen: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/4001"])
    announce: list[str] = field(default_factory=list)  # external addresses to advertise (NAT, port forward)
    bootstrap: list[str] = field(default_factory=list)  # full /p2p/ multiaddrs of seed peers
    heartbeat_s: float = 1.0
    dial_timeout_s: float = 10.0
    max_peers: int = 64
    max_msgs_per_peer_topic_s: float = 50.0  # gossip spam limit per relaying peer; our own publishes are exempt
    invalid_msg_weight: float = 10.0  # GossipSub P4 weight: score lost per rejected message (positive = penalise)
    graylist_score: float = -100.0  # a peer scoring below this is ignored until its score decays back


@dataclass
class OfferConfig:
    """What a provider asks for its devices."""

    price: int = 2 * IO  # IO base units per device-hour
    min_s: int = 10
    max_s: int = 24 * 3600
    republish_s: float = 60.0
    ttl_s: int = 300  # expires_at = now + ttl_s (<= 600 by the wire contract)
    payout: str = ""  # Solana address; "" = the node's own address


@dataclass
class ChainConfig:
    """Where settlement happens; changing rpc_url is all it takes to move from localnet to devnet/mainnet."""

    rpc_url: str = "http://127.0.0.1:8899"
    network_file: str = ""  # genesis output (network.json); "" = <home>/network.json
    fee_bps: int = 25
    confirm_timeout_s: float = 30.0


@dataclass
class ComputeConfig:
    """Limits on what a provider lets jobs use."""

    max_memory_bytes: int = 0  # 0 = all the machine has (cpu device); caps the cpu offer otherwise
    job_timeout_s: float = 3600.0
    # sandbox processes kept ready (torch imported) per device: one job per process, so with 1 every job after the
    # first waits for a fresh worker's torch import (~2 s here); 2 lets back-to-back jobs start at once
    warm_workers: int = 2
    # torch threads of each job (and capacity challenge) on the cpu device; 0 = every core, split among cpu devices.
    # Fewer keeps cores for the node itself: a job on every core slows the sending of its own output
    cpu_threads: int = 0


@dataclass
class MarketConfig:
    """Job negotiation and payment timing (both roles); the defaults suit real jobs, tests shrink them."""

    voucher_interval_s: float = 5.0  # renter pays for the work done so far this often
    quote_ttl_s: int = 30  # a quote is binding this long
    request_timeout_s: float = 10.0  # every negotiation step must answer within this
    fund_timeout_s: float = 60.0  # renter: fund + confirm; provider: wait for escrow_funded
    result_grace_s: float = 30.0  # beyond max_s before a silent job counts as failed
    max_input_bytes: int = 256 * 1024 * 1024  # provider: total input blobs of one job
    max_output_bytes: int = 1024 * 1024 * 1024  # renter: total output blobs it will download
    slash_bps: int = 1000  # operators: share of a provider's stake slashed per proven bad result
    settle_retry_s: float = 5.0  # provider: retry pending settlements this often


@dataclass
class ClientConfig:
    """Defaults of the light-client commands (`offers`, `rent`, `status`) and of logging; a flag given on the
    command line wins."""

    verbose: bool = False  # every command: also log libp2p internals and our own debug events
    wait_s: float = 5.0  # offers: how long to let the offer book settle
    rent_wait_s: float = 30.0  # rent: how long to wait for a fitting offer
    device_kind: str = ""  # offers: only devices of this kind (cuda|cpu); "" = any
    max_price: str = ""  # offers/rent: most IO per device-hour, e.g. "2.5"; "" = any
    gpu: str = ""  # rent: the device name must contain this
    min_tflops: float = 0.0  # rent: minimum attested TFLOPS
    status_timeout_s: float = 10.0  # status: how long to wait for the node's answer


@dataclass
class NodeConfig:
    """Everything a node reads at start; sections map one-to-one to TOML tables."""

    home: Path = DEFAULT_HOME
    net: NetConfig = field(default_factory=NetConfig)
    offer: OfferConfig = field(default_factory=OfferConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    market: MarketConfig = field(default_factory=MarketConfig)
    client: ClientConfig = field(default_factory=ClientConfig)

    @property
    def key_file(self) -> Path:
        return self.home / "identity.json"

    @property
    def db_file(self) -> Path:
        return self.home / "node.db"

    @property
    def config_file(self) -> Path:
        return self.home / "config.toml"

    @property
    def network_file(self) -> Path:
        return Path(self.chain.network_file).expanduser() if self.chain.network_file else self.home / "network.json"


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path string")
        return Path(value).expanduser()
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer")
        return value
    if hint in (str, bool):
        if not isinstance(value, hint):
            raise ConfigError(f"{where}: expected a {hint.__name__}")
        return value
    raise ConfigError(f"{where}: unsupported setting type {hint!r}")


def _apply(obj: Any, data: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(names))})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a table")
            _apply(getattr(obj, key), value, f"{where}.{key}")
        else:
            setattr(obj, key, _coerce(value, hint, f"{where}.{key}"))


def load_config(path: Path | None = None, *, home: Path | None = None,
                overrides: dict[str, dict[str, Any]] | None = None) -> NodeConfig:
    """Defaults, then the TOML file (explicit `path`, else <home>/config.toml if present), then CLI overrides.

    `overrides` maps section -> {key: value}; None values are skipped (flags not given).
    """
    cfg = NodeConfig()
    if home is not None:
        cfg.home = Path(home).expanduser()
    file = Path(path).expanduser() if path else cfg.config_file
    if path is not None and not file.exists():
        raise ConfigError(f"{file}: config file not found")
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: cannot read ({exc})")
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: invalid TOML ({exc})")
        file_home = data.pop("home", None)
        if file_home is not None and home is None:
            cfg.home = _coerce(file_home, Path, f"{file}: home")
        _apply(cfg, data, str(file))
    for section, values in (overrides or {}).items():
        present = {k: v for k, v in values.items() if v is not None and v != [] and v != ()}
        if present:
            _apply(cfg, {section: present}, "command line")
    if cfg.offer.ttl_s > 600 or cfg.offer.ttl_s <= 0:
        raise ConfigError("offer.ttl_s must be in (0, 600]: peers reject offers expiring more than 10 min ahead")
    if cfg.offer.min_s > cfg.offer.max_s:
        raise ConfigError("offer.min_s must not exceed offer.max_s")
    return cfg
