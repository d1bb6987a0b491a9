"""`p2pnode devices` and `p2pnode attest --self` through the real CLI entry point."""

import json

from p2pnode.cli import main


def test_devices_json(capsys):
    assert main(["devices", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["devices"][0]["kind"] == "cpu" and isinstance(out["network_isolated"], bool)


def test_attest_self(capsys):
    assert main(["attest", "--self", "--seconds", "0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] and out["tflops"] > 0


def test_attest_without_self_is_a_user_error(capsys):
    assert main(["attest"]) == 2
    assert "--self" in capsys.readouterr().err
