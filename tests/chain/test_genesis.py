"""Genesis on the real localnet over HTTP: supply split, vault ownership, no mint authority, idempotence, refusals."""

from __future__ import annotations

import json

import pytest
from solders.keypair import Keypair

from p2pnode.chain import token as tk
from p2pnode.chain.emission import LAUNCH_SUPPLY, POOL
from p2pnode.chain.genesis import GenesisError, devnet_operator_keys, run_genesis
from p2pnode.chain.network import NetworkFileError, NetworkParams
from p2pnode.config import IO


async def test_genesis_creates_the_fixed_supply(client, tmp_path):
    deployer = Keypair()
    ops = devnet_operator_keys(tmp_path / "ops", 3)
    for i in range(1, 4):
        assert (tmp_path / "ops" / f"operator-{i}.json").stat().st_mode & 0o777 == 0o600
    op_keys = [o.solana_keypair().pubkey() for o in ops]
    out = tmp_path / "network.json"
    params, created = await run_genesis(client, deployer, op_keys, 2, out)
    assert created and out.exists()
    loaded = NetworkParams.load(out)
    assert loaded == params
    assert loaded.operators == [str(k) for k in op_keys] and loaded.threshold == 2
    assert loaded.fee_bps == 25 and loaded.decimals == 8

    mint = tk.parse_mint((await client.get_account(tk.pubkey(params.mint))).data)
    assert mint.supply == 800_000_000 * IO and mint.decimals == 8
    assert mint.mint_authority is None and mint.freeze_authority is None
    assert await client.token_balance(tk.pubkey(params.treasury)) == LAUNCH_SUPPLY == 500_000_000 * IO
    assert await client.token_balance(tk.pubkey(params.rewards_pool)) == POOL == 300_000_000 * IO
    for vault in (params.treasury, params.rewards_pool):
        ta = tk.parse_token_account((await client.get_account(tk.pubkey(vault))).data)
        assert str(ta.owner) == params.multisig
    ms = tk.parse_multisig((await client.get_account(tk.pubkey(params.multisig))).data)
    assert ms.m == 2 and tk.multisig_signers(ms) == op_keys

    # idempotent: same deployer, same out -> nothing new, same params
    again, created2 = await run_genesis(client, deployer, op_keys, 2, out)
    assert not created2 and again == params
    assert (await client.get_account(tk.pubkey(params.mint))) is not None

    # refuses a second genesis by the same deployer on the same chain when the file is elsewhere
    with pytest.raises(GenesisError, match="already ran"):
        await run_genesis(client, deployer, op_keys, 2, tmp_path / "other.json")
    assert not (tmp_path / "other.json").exists()

    # refuses to reuse a network file that belongs to another chain
    other = json.loads(out.read_text())
    other["mint"] = str(Keypair().pubkey())
    (tmp_path / "foreign.json").write_text(json.dumps(other))
    with pytest.raises(GenesisError, match="not on"):
        await run_genesis(client, Keypair(), op_keys, 2, tmp_path / "foreign.json")


async def test_genesis_rejects_bad_quorum(client, tmp_path):
    ops = [Keypair().pubkey() for _ in range(3)]
    for m in (0, 1, 4):
        with pytest.raises(GenesisError, match="threshold"):
            await run_genesis(client, Keypair(), ops, m, tmp_path / "n.json")
    with pytest.raises(GenesisError, match="distinct"):
        await run_genesis(client, Keypair(), [ops[0], ops[0]], 2, tmp_path / "n.json")


def test_network_file_errors(tmp_path):
    with pytest.raises(NetworkFileError, match="no network file"):
        NetworkParams.load(tmp_path / "missing.json")
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(NetworkFileError, match="not valid JSON"):
        NetworkParams.load(p)
    good = dict(cluster="localnet", rpc_url="http://x", genesis_time=0, mint=str(Keypair().pubkey()),
                operators=[str(Keypair().pubkey()) for _ in range(3)], threshold=2, multisig=str(Keypair().pubkey()),
                treasury=str(Keypair().pubkey()), rewards_pool=str(Keypair().pubkey()),
                deployer=str(Keypair().pubkey()))
    assert NetworkParams.from_dict(good).fee_bps == 25
    for key, value, match in [("threshold", 5, "threshold"), ("mint", "nope", "mint"), ("fee_bps", "25", "integer"),
                              ("surprise", 1, "unknown"), ("operators", [], "operators"),
                              ("arbiters", [str(Keypair().pubkey())], "not an operator")]:
        with pytest.raises(NetworkFileError, match=match):
            NetworkParams.from_dict({**good, key: value})
    bad = dict(good)
    del bad["mint"]
    with pytest.raises(NetworkFileError, match="missing key 'mint'"):
        NetworkParams.from_dict(bad)
    params = NetworkParams.from_dict(good)
    params.save(tmp_path / "n.json")
    assert NetworkParams.load(tmp_path / "n.json") == params
    assert params.multiplier("NVIDIA H100 80GB") == 300 and params.multiplier("mystery") == 100
