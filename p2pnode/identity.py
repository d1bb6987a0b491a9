"""One Ed25519 key is the node: its libp2p PeerID, its Solana address and the signer of its envelopes.

Keeping a single key means a peer's offers, its payout account and its stake can be tied together by anyone
without a registry. The key lives in the Solana CLI key-file format (a JSON array of the 64 bytes
seed || public key), mode 0600, so `solana` tools can use the same file. py-libp2p writes only 32 bytes where
go/js write 64, so our file, not libp2p's, is the source of truth.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import base58
import nacl.exceptions
import nacl.signing

from .errors import UserError

KEY_FILE_NAME = "identity.json"

# libp2p PublicKey protobuf prefix for Ed25519 (field 1 = KeyType 1, field 2 = 32 bytes), wrapped in an
# identity multihash (code 0x00, length 36). This is how every libp2p implementation derives the PeerID.
_LIBP2P_ED25519_PREFIX = b"\x08\x01\x12\x20"
_IDENTITY_MULTIHASH = b"\x00\x24"


class KeyFileError(UserError):
    """The key file is missing, unreadable, too open or malformed; the message names the file and the fix."""


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p PeerID (base58btc) of an Ed25519 public key, computed without importing libp2p."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return base58.b58encode(_IDENTITY_MULTIHASH + _LIBP2P_ED25519_PREFIX + public_key).decode()


def public_key_from_peer_id(peer_id: str) -> bytes:
    """Inverse of :func:`peer_id_from_public_key`; raises ValueError for non-Ed25519 or malformed IDs."""
    try:
        raw = base58.b58decode(peer_id)
    except Exception as exc:  # base58 raises ValueError on bad alphabet; be explicit for callers
        raise ValueError(f"not a base58 PeerID: {peer_id!r}") from exc
    prefix = _IDENTITY_MULTIHASH + _LIBP2P_ED25519_PREFIX
    if len(raw) != len(prefix) + 32 or not raw.startswith(prefix):
        raise ValueError(f"not an Ed25519 PeerID: {peer_id!r}")
    return raw[len(prefix):]


def solana_address(public_key: bytes) -> str:
    """The Solana address (base58 of the public key)."""
    return base58.b58encode(public_key).decode()


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature of `message` by `public_key`."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Identity:
    """A node's Ed25519 key pair; converts to the libp2p and Solana forms on demand."""

    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")

    @classmethod
    def generate(cls) -> "Identity":
        return cls(bytes(nacl.signing.SigningKey.generate()))

    # Derived forms are computed once per Identity (the seed is frozen): signing every envelope and reading
    # peer_id in logs, status and book lookups otherwise re-derived the key pair and re-encoded the PeerID each
    # time (≈0.3 ms per peer_id, visible in the 10-node benchmark's profile).
    @cached_property
    def _signing_key(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.seed)

    @cached_property
    def public_key(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    @cached_property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    @cached_property
    def address(self) -> str:
        """The Solana address of this node (also its payout address unless configured otherwise)."""
        return solana_address(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self._signing_key.sign(message).signature

    def solana_keypair(self):
        """The same key as a `solders.keypair.Keypair` (imported lazily: solders is not needed to gossip)."""
        from solders.keypair import Keypair

        return Keypair.from_seed(self.seed)

    def libp2p_keypair(self):
        """The same key as a py-libp2p `KeyPair` for `new_host(key_pair=...)`."""
        from libp2p.crypto.ed25519 import create_new_key_pair

        return create_new_key_pair(self.seed)

    # --- key file -----------------------------------------------------------------------------------------

    def key_file_bytes(self) -> bytes:
        return json.dumps(list(self.seed + self.public_key)).encode()

    def save(self, path: Path) -> None:
        """Write the Solana-format key file with mode 0600; refuses to overwrite an existing file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyFileError(f"{path}: a key file already exists; refusing to overwrite it (move it away first)")
        with os.fdopen(fd, "wb") as f:
            f.write(self.key_file_bytes())
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def load(cls, path: Path, *, check_mode: bool = True) -> "Identity":
        """Read a Solana-format key file, refusing files others can read (they hold the node's money)."""
        path = Path(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise KeyFileError(f"{path}: no key file; run `p2pnode init` (or `p2pnode init --key FILE` to import one)")
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read the key file ({exc.strerror}); check its permissions")
        if check_mode and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"{path}: key file is readable by others (mode {stat.S_IMODE(st.st_mode):o}); run `chmod 600 {path}`"
            )
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"{path}: cannot read the key file ({exc}); check the file")
        return cls.from_key_file_text(text, path)

    @classmethod
    def from_key_file_text(cls, text: str, path: Path | str = "<key>") -> "Identity":
        fix = "expected a Solana CLI key file (JSON array of 64 numbers 0-255)"
        try:
            values = json.loads(text)
        except ValueError:
            raise KeyFileError(f"{path}: not JSON; {fix}")
        if (
            not isinstance(values, list)
            or len(values) != 64
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in values)
        ):
            raise KeyFileError(f"{path}: malformed key; {fix}")
        raw = bytes(values)
        ident = cls(raw[:32])
        if ident.public_key != raw[32:]:
            raise KeyFileError(f"{path}: the public half does not match the secret half; {fix}")
        return ident
