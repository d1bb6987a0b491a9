"""The economy commands as an operator runs them, against the real localnet (in-process CLI, real HTTP)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from p2pnode.chain.network import NetworkParams
from p2pnode.chain.rpc import ChainClient
from p2pnode.cli import main
from p2pnode.config import IO
from p2pnode.identity import Identity

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: make the sibling helper importable
from economy_helpers import give_io  # noqa: E402


def run_json(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_rewards_schedule_table(capsys):
    assert main(["rewards", "schedule"]) == 0
    out = capsys.readouterr().out
    assert "300000000 IO over 175200 hours" in out and len(out.strip().splitlines()) == 22
    rows = run_json(capsys, "rewards", "schedule")
    assert len(rows) == 20 and sum(r["emitted"] for r in rows) == 300_000_000 * IO
    assert rows[-1]["supply"] == 800_000_000 * IO


def test_genesis_stake_balance_cli(localnet, tmp_path, capsys):
    home = tmp_path / "home"
    ident = Identity.generate()
    ident.save(home / "identity.json")
    kp = ident.solana_keypair()
    net = home / "network.json"
    gen = run_json(capsys, "genesis", "--rpc", localnet.url, "--operators", "3", "--threshold", "2",
                   "--out", str(net))
    assert gen["created"] and NetworkParams.load(net).mint == gen["mint"]
    again = run_json(capsys, "genesis", "--rpc", localnet.url, "--operators", "3", "--threshold", "2",
                     "--out", str(net))
    assert not again["created"] and again["mint"] == gen["mint"]
    params = NetworkParams.load(net)
    ops = [Identity.load(home / "operators" / f"operator-{i}.json").solana_keypair() for i in (1, 2, 3)]

    async def fund():
        async with ChainClient(localnet.url) as c:
            for k in (kp, *ops):
                await c.airdrop(k.pubkey(), 10**9)
            await give_io(c, params, ops, kp, 1000 * IO)

    trio.run(fund)
    common = ["--home", str(home), "--rpc", localnet.url]
    bal = run_json(capsys, "balance", *common)
    assert bal["io_base_units"] == 1000 * IO and bal["lamports"] > 0 and bal["address"] == str(kp.pubkey())

    dep = run_json(capsys, "stake", "deposit", "250", *common)
    assert dep["stake"] == 250 * IO
    st = run_json(capsys, "stake", "status", *common)
    assert st["locked"] and st["stake"] == 250 * IO
    req = run_json(capsys, "stake", "unstake", "50", *common)["request"]
    # the operator's library refuses before the cooldown: a one-line error, exit 2, stake untouched
    capsys.readouterr()
    code = main(["stake", "withdraw", "--request", req, "--operator-key", str(home / "operators" / "operator-1.json"),
                 *common])
    err = capsys.readouterr().err
    assert code == 2 and "cooldown" in err and "Traceback" not in err
    assert run_json(capsys, "stake", "status", *common)["stake"] == 250 * IO
    # bad amount: operator-fixable error
    assert main(["stake", "deposit", "12.123456789", *common]) == 2


def test_genesis_epoch_length_for_a_devnet(localnet, tmp_path, capsys):
    """Issue 6: the epoch length is a genesis parameter (seconds on a devnet); the hour index is unaffected."""
    net = tmp_path / "network.json"
    assert main(["genesis", "--rpc", localnet.url, "--epoch-s", "0", "--out", str(net)]) == 2
    assert "--epoch-s" in capsys.readouterr().err and not net.exists()
    gen = run_json(capsys, "genesis", "--rpc", localnet.url, "--epoch-s", "5", "--out", str(net))
    assert gen["created"] and gen["epoch_s"] == 5 and NetworkParams.load(net).epoch_s == 5


def test_rewards_approve_needs_the_quorum(localnet, tmp_path, capsys):
    """`p2pnode rewards approve`: the quorum's SPL Approve making one operator the pool's capped delegate."""
    from solana.rpc.async_api import AsyncClient

    from p2pnode.chain.rewards_distribute import Pool, allowance
    from p2pnode.chain import token as tk

    home = tmp_path / "home"
    Identity.generate().save(home / "identity.json")
    (home / "config.toml").write_text(f'[chain]\nrpc_url = "{localnet.url}"\n')
    net = home / "network.json"
    run_json(capsys, "genesis", "--rpc", localnet.url, "--operators", "3", "--threshold", "2", "--out", str(net))
    params = NetworkParams.load(net)
    keys = [str(home / "operators" / f"operator-{i}.json") for i in (1, 2, 3)]
    common = ["--home", str(home), "--distributor", params.operators[0], "--amount", "1000"]
    # one operator (even twice) is not the quorum; a non-operator distributor is refused
    assert main(["rewards", "approve", *common, "--operator-key", keys[0], "--operator-key", keys[0]]) == 2
    assert "needs 2 of the 3" in capsys.readouterr().err
    assert main(["rewards", "approve", "--home", str(home), "--distributor", str(Identity.generate().address),
                 "--amount", "1", "--operator-key", keys[0], "--operator-key", keys[1]]) == 2
    assert "not one of the network's operators" in capsys.readouterr().err

    async def fund_ops():
        async with ChainClient(localnet.url) as c:
            for k in keys[:2]:
                await c.airdrop(Identity.load(Path(k)).solana_keypair().pubkey(), 10**9)

    trio.run(fund_ops)
    out = run_json(capsys, "rewards", "approve", *common, "--operator-key", keys[1], "--operator-key", keys[2])
    assert out["allowance"] == 1000 * IO

    async def read():
        async with AsyncClient(localnet.url) as rpc:
            return await allowance(rpc, Pool.from_network(params), tk.pubkey(params.operators[0]))

    assert trio.run(read) == 1000 * IO


def test_rewards_commands_on_a_fresh_node_are_one_line_errors(localnet, tmp_path, capsys):
    """A node that has stored nothing yet (no database): typed one-line errors, never a traceback."""
    home = tmp_path / "home"
    Identity.generate().save(home / "identity.json")
    (home / "config.toml").write_text(f'[chain]\nrpc_url = "{localnet.url}"\n')
    run_json(capsys, "genesis", "--rpc", localnet.url, "--out", str(home / "network.json"))
    assert main(["rewards", "verify", "--epoch", "3", "--home", str(home)]) == 2
    err = capsys.readouterr().err
    assert "no rewards manifest for epoch 3" in err and len(err.strip().splitlines()) == 1
    rows = run_json(capsys, "rewards", "--home", str(home))  # bare `rewards`: nothing earned yet
    assert rows == [{"token_account": rows[0]["token_account"], "balance": 0, "earned": 0, "received": 0,
                     "paid_check": "ok"}]


def test_rewards_approve_across_machines(localnet, tmp_path, capsys):
    """Operator 1 prepares and signs a durable-nonce approval naming operator 3 as co-signer; operator 3 (another
    machine: only the file travels) checks the terms, signs and sends it. A wrong amount is refused."""
    from solana.rpc.async_api import AsyncClient

    from p2pnode.chain import token as tk
    from p2pnode.chain.rewards_distribute import Pool, allowance

    home = tmp_path / "home"
    Identity.generate().save(home / "identity.json")
    (home / "config.toml").write_text(f'[chain]\nrpc_url = "{localnet.url}"\n')
    net = home / "network.json"
    run_json(capsys, "genesis", "--rpc", localnet.url, "--out", str(net))
    params = NetworkParams.load(net)
    key = {i: str(home / "operators" / f"operator-{i}.json") for i in (1, 2, 3)}

    async def fund():
        async with ChainClient(localnet.url) as c:
            await c.airdrop(Identity.load(Path(key[1])).solana_keypair().pubkey(), 10**9)

    trio.run(fund)
    txf = tmp_path / "approval.b64"
    dist = params.operators[1]
    first = run_json(capsys, "rewards", "approve", "--home", str(home), "--distributor", dist, "--amount", "250",
                     "--operator-key", key[1], "--tx", str(txf), "--signer", params.operators[2])
    assert first["signature"] is None and first["missing_signers"] == [params.operators[2]] and txf.exists()
    assert main(["rewards", "approve", "--home", str(home), "--distributor", dist, "--amount", "251",
                 "--operator-key", key[3], "--tx", str(txf)]) == 2
    assert "approval refused" in capsys.readouterr().err
    done = run_json(capsys, "rewards", "approve", "--home", str(home), "--distributor", dist, "--amount", "250",
                    "--operator-key", key[3], "--tx", str(txf))
    assert done["signature"] and done["missing_signers"] == []

    async def read():
        async with AsyncClient(localnet.url) as rpc:
            return await allowance(rpc, Pool.from_network(params), tk.pubkey(dist))

    assert trio.run(read) == 250 * IO
