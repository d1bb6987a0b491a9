"""One key = PeerID = Solana keypair; key-file errors are one-line UserErrors naming the file and the fix."""

from __future__ import annotations

import json
import os
import stat

import pytest

from p2pnode.errors import UserError
from p2pnode.identity import Identity, KeyFileError, peer_id_from_public_key, public_key_from_peer_id


def test_peer_id_and_solana_address_match_libp2p_and_solders():
    ident = Identity.generate()
    # our PeerID computation (no libp2p import) equals py-libp2p's own
    from libp2p.peer.id import ID

    assert ident.peer_id == ID.from_pubkey(ident.libp2p_keypair().public_key).to_base58()
    assert str(ident.solana_keypair().pubkey()) == ident.address
    assert public_key_from_peer_id(ident.peer_id) == ident.public_key
    assert peer_id_from_public_key(ident.public_key).startswith("12D3KooW")


def test_sign_and_key_file_round_trip(tmp_path):
    ident = Identity.generate()
    path = tmp_path / "k.json"
    ident.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    values = json.loads(path.read_text())
    assert len(values) == 64 and all(0 <= v <= 255 for v in values)  # Solana CLI format
    loaded = Identity.load(path)
    assert loaded.peer_id == ident.peer_id
    from solders.keypair import Keypair

    assert str(Keypair.from_bytes(bytes(values)).pubkey()) == ident.address


def test_refuses_to_overwrite(tmp_path):
    path = tmp_path / "k.json"
    Identity.generate().save(path)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        Identity.generate().save(path)


def _one_line(exc: Exception, path) -> None:
    msg = str(exc)
    assert isinstance(exc, UserError) and "\n" not in msg and str(path) in msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(KeyFileError) as e:
        Identity.load(path)
    _one_line(e.value, path)
    assert "p2pnode init" in str(e.value)


def test_world_readable_file(tmp_path):
    path = tmp_path / "k.json"
    Identity.generate().save(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError) as e:
        Identity.load(path)
    _one_line(e.value, path)
    assert "chmod 600" in str(e.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file; unreadable cannot be produced")
def test_unreadable_file(tmp_path):
    path = tmp_path / "k.json"
    Identity.generate().save(path)
    path.chmod(0o000)
    with pytest.raises(KeyFileError) as e:
        Identity.load(path)
    _one_line(e.value, path)


def test_unreadable_directory_entry(tmp_path):
    # a directory where the key file should be: readable by nobody as a file, even as root
    path = tmp_path / "k.json"
    path.mkdir(mode=0o700)
    with pytest.raises(KeyFileError) as e:
        Identity.load(path)
    _one_line(e.value, path)


@pytest.mark.parametrize("text", ["not json", "[1,2,3]", json.dumps([300] * 64), json.dumps({"a": 1}),
                                  json.dumps([True] * 64), "\xff\xfe"])
def test_malformed_files(tmp_path, text):
    path = tmp_path / "k.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text)
    os.close(fd)
    with pytest.raises(KeyFileError) as e:
        Identity.load(path)
    _one_line(e.value, path)


def test_public_half_must_match(tmp_path):
    a, b = Identity.generate(), Identity.generate()
    path = tmp_path / "k.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, json.dumps(list(a.seed + b.public_key)).encode())
    os.close(fd)
    with pytest.raises(KeyFileError, match="does not match"):
        Identity.load(path)


def test_bad_peer_ids():
    for bad in ["", "0OIl", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"]:
        with pytest.raises(ValueError):
            public_key_from_peer_id(bad)
