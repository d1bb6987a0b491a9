"""p2pnode — node software of an open peer-to-peer GPU compute network.

Layout (folders are capabilities; see ../shared/DESIGN.md for the wire contract):

* ``identity``  one Ed25519 key = libp2p PeerID = Solana keypair
* ``wire``      msgpack signed envelopes, message schemas, size limits, stream framing
* ``store``     SQLite state, fsynced before money is acknowledged
* ``config``    TOML node configuration
* ``net/``      libp2p host, gossip validators, discovery
* ``market/``   offers and the offer book, /iog/job negotiation, the provider and renter sides of a job,
                agreements, pricing, reputation, arbiter + evidence, the one-machine devnet
* ``compute/``  devices, capacity attestation, verified job kinds, sandbox
* ``chain/``    Solana RPC under trio, localnet, genesis, emission, stake, payment channels, rewards
* ``provider``, ``renter``, ``operator``  the three roles composed from the above
* ``cli/``      the ``p2pnode`` command

The public API is re-exported here name by name; everything not listed may change. Importing this package never
imports torch (the renter is a light client).
"""

from .errors import ConfigError, P2PNodeError, ProtocolError, UserError
from .identity import Identity, KeyFileError
from .config import NodeConfig, load_config
from .store import Store
from .chain.emission import TOTAL_HOURS, emitted_through, hour_emission
from .chain.network import NetworkFileError, NetworkParams
from .wire import (
    BadSignature,
    Device,
    FrameError,
    MalformedMessage,
    Message,
    Offer,
    OversizeMessage,
    SchemaError,
    Signed,
    UnknownType,
    UnknownVersion,
    WireError,
    open_envelope,
    seal,
)

__version__ = "0.1.0"

__all__ = [
    "BadSignature",
    "BootstrapNode",
    "LightClient",
    "NoProvider",
    "Refused",
    "RentOutcome",
    "Renter",
    "Wanted",
    "JobSpec",
    "NetNode",
    "OfferBook",
    "OfferValidator",
    "ProviderNode",
    "BlockhashExpired",
    "ChainClient",
    "ChainError",
    "ConfirmTimeout",
    "InsufficientFunds",
    "RpcUnreachable",
    "TransactionFailed",
    "ConfigError",
    "Device",
    "FrameError",
    "Identity",
    "KeyFileError",
    "MalformedMessage",
    "NetworkFileError",
    "NetworkParams",
    "TOTAL_HOURS",
    "emitted_through",
    "hour_emission",
    "Message",
    "NodeConfig",
    "Offer",
    "OversizeMessage",
    "P2PNodeError",
    "ProtocolError",
    "SchemaError",
    "Signed",
    "Store",
    "UnknownType",
    "UnknownVersion",
    "UserError",
    "WireError",
    "load_config",
    "open_envelope",
    "seal",
]

# ChainClient pulls in solana-py/solders (~0.2 s): imported on first use, so `import p2pnode` stays light.
_LAZY_CHAIN_RPC = {"BlockhashExpired", "ChainClient", "ChainError", "ConfirmTimeout", "InsufficientFunds",
                   "RpcUnreachable", "TransactionFailed"}


# The roles pull in libp2p (~0.7 s): imported on first use. None of them imports torch.
_LAZY_NET = {"LightClient": "renter", "ProviderNode": "provider", "BootstrapNode": "operator",
             "Renter": "market.renter_jobs", "RentOutcome": "market.renter_jobs", "Wanted": "market.reputation",
             "NoProvider": "market.renter_jobs", "Refused": "market.negotiation",
             "JobSpec": "compute.jobs",
             "OfferBook": "market.book", "OfferValidator": "market.offers", "NetNode": "net.node"}


def __getattr__(name: str):
    if name in _LAZY_NET:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY_NET[name]}", __name__), name)
    if name in _LAZY_CHAIN_RPC:
        from .chain import rpc

        return getattr(rpc, name)
    raise AttributeError(f"module 'p2pnode' has no attribute {name!r}")
