"""Genesis of an IO network: the mint, the operators' multisig, the two vaults, the fixed supply — in one transaction.

Why one atomic transaction: genesis either happened completely (800M IO exist, split 500M treasury / 300M rewards
pool, both owned by the operators' m-of-n multisig, mint authority gone) or not at all, so re-running after any
failure is safe. Every address is seeded from the deployer key (``create_account_with_seed``), which makes the
result findable and re-running detectable: if the deployer's mint already exists on the chain, genesis has run
there. Same output file and same chain: nothing is done and the existing parameters are returned (idempotent).
Otherwise genesis refuses, naming what it found, instead of creating a second token by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction

from ..errors import UserError
from ..identity import Identity
from . import token as tk
from .emission import LAUNCH_SUPPLY, POOL
from .network import NetworkFileError, NetworkParams

MINT_SEED = "iog-mint"
OPERATORS_SEED = "iog-operators"
TREASURY_SEED = "iog-treasury"
REWARDS_SEED = "iog-rewards"
GENESIS_LAMPORTS = 10**8  # 0.1 SOL covers rent of 4 accounts (~0.009 SOL) and the fee, with margin


class GenesisError(UserError):
    """Genesis cannot (or must not) run; the message says why and what to do."""


@dataclass(frozen=True)
class GenesisAddresses:
    mint: Pubkey
    multisig: Pubkey
    treasury: Pubkey
    rewards_pool: Pubkey


def genesis_addresses(deployer: Pubkey) -> GenesisAddresses:
    tok = tk.TOKEN_PROGRAM_ID
    return GenesisAddresses(tk.seeded_address(deployer, MINT_SEED, tok),
                            tk.seeded_address(deployer, OPERATORS_SEED, tok),
                            tk.seeded_address(deployer, TREASURY_SEED, tok),
                            tk.seeded_address(deployer, REWARDS_SEED, tok))


def genesis_instructions(deployer: Pubkey, operators: list[Pubkey], threshold: int, rents: dict[int, int]) -> list:
    """The whole genesis as instructions for one transaction signed by the deployer alone."""
    a = genesis_addresses(deployer)
    tok = tk.TOKEN_PROGRAM_ID
    d = deployer
    return [
        tk.create_seeded(d, d, MINT_SEED, rents[tk.MINT_LEN], tk.MINT_LEN, tok),
        tk.init_mint(a.mint, d),
        tk.create_seeded(d, d, OPERATORS_SEED, rents[tk.MULTISIG_LEN], tk.MULTISIG_LEN, tok),
        tk.init_multisig(a.multisig, operators, threshold),
        tk.create_seeded(d, d, TREASURY_SEED, rents[tk.ACCOUNT_LEN], tk.ACCOUNT_LEN, tok),
        tk.init_token_account(a.treasury, a.mint, a.multisig),
        tk.create_seeded(d, d, REWARDS_SEED, rents[tk.ACCOUNT_LEN], tk.ACCOUNT_LEN, tok),
        tk.init_token_account(a.rewards_pool, a.mint, a.multisig),
        tk.mint_to(a.mint, a.treasury, d, LAUNCH_SUPPLY),
        tk.mint_to(a.mint, a.rewards_pool, d, POOL),
        tk.drop_mint_authority(a.mint, d),
    ]


def devnet_operator_keys(folder: Path, n: int) -> list[Identity]:
    """Operator keys for a devnet, kept in `folder/operator-<i>.json` (mode 0600); reused if present."""
    out = []
    for i in range(1, n + 1):
        path = folder / f"operator-{i}.json"
        if path.exists():
            out.append(Identity.load(path))
        else:
            ident = Identity.generate()
            ident.save(path)
            out.append(ident)
    return out


async def verify_genesis(client: Any, params: NetworkParams) -> None:
    """The chain holds exactly what `params` describes (supply, vault owners, no mint authority)."""
    accs = await client.get_accounts([tk.pubkey(params.mint), tk.pubkey(params.multisig),
                                      tk.pubkey(params.treasury), tk.pubkey(params.rewards_pool)])
    if any(a is None for a in accs):
        raise GenesisError(f"the chain at {client.url} lacks this network's accounts (mint {params.mint}); wrong "
                           "--rpc, or a different chain than network.json was made for")
    mint = tk.parse_mint(accs[0].data)
    ms = tk.parse_multisig(accs[1].data)
    tre, pool = tk.parse_token_account(accs[2].data), tk.parse_token_account(accs[3].data)
    problems = []
    if mint.mint_authority is not None or mint.decimals != params.decimals:
        problems.append("mint authority still set or wrong decimals")
    if mint.supply != LAUNCH_SUPPLY + POOL:
        problems.append(f"supply {mint.supply} != 800M IO")
    if ms.m != params.threshold or [str(k) for k in tk.multisig_signers(ms)] != params.operators:
        problems.append("operators' multisig differs")
    if str(tre.owner) != params.multisig or str(pool.owner) != params.multisig:
        problems.append("vaults are not owned by the operators' multisig")
    if problems:
        raise GenesisError(f"genesis on {client.url} does not match network.json: {'; '.join(problems)}")


async def run_genesis(client: Any, deployer: Keypair, operators: list[Pubkey], threshold: int, out: Path, *,
                      cluster: str = "localnet", airdrop: bool = True, **overrides: Any) -> tuple[NetworkParams, bool]:
    """Create the network (or find it already created by this same call earlier). Returns (params, created)."""
    out = Path(out)
    if not 2 <= threshold <= len(operators):
        raise GenesisError(f"--threshold must be in 2..{len(operators)} (with 1 a provider plus nobody could unlock "
                           "its stake); use at least 2 operators")
    if len(operators) > 10 or len(set(operators)) != len(operators):
        raise GenesisError("give 2..10 distinct operators (stake multisigs hold the provider + operators <= 11)")
    addrs = genesis_addresses(deployer.pubkey())
    existing = None
    if out.exists():
        try:
            existing = NetworkParams.load(out)
        except NetworkFileError as exc:
            raise GenesisError(f"{out} exists but is not a valid network file ({exc}); move it away first") from None
    on_chain = await client.get_account(addrs.mint)
    if existing is not None:
        if await client.get_account(tk.pubkey(existing.mint)) is None:
            raise GenesisError(f"{out} describes a network whose mint {existing.mint} is not on {client.url}; refusing "
                               "to overwrite it — pass another --out for a new network on this chain")
        await verify_genesis(client, existing)
        return existing, False
    if on_chain is not None:
        raise GenesisError(f"genesis already ran on {client.url} with deployer {deployer.pubkey()} (mint {addrs.mint}) "
                           f"but {out} does not exist; use the network.json written then, or another deployer key")
    rents = {n: await client.rent_exempt(n) for n in (tk.MINT_LEN, tk.MULTISIG_LEN, tk.ACCOUNT_LEN)}
    if airdrop and await client.balance(deployer.pubkey()) < GENESIS_LAMPORTS:
        await client.airdrop(deployer.pubkey(), GENESIS_LAMPORTS)
    bh = await client.latest_blockhash()
    ixs = genesis_instructions(deployer.pubkey(), operators, threshold, rents)
    tx = Transaction([deployer], Message.new_with_blockhash(ixs, deployer.pubkey(), bh), bh)
    sig = await client.send(tx)
    params = NetworkParams(
        cluster=cluster, rpc_url=client.url, genesis_time=await client.unix_time(), mint=str(addrs.mint),
        operators=[str(o) for o in operators], threshold=threshold, multisig=str(addrs.multisig),
        treasury=str(addrs.treasury), rewards_pool=str(addrs.rewards_pool), deployer=str(deployer.pubkey()),
        genesis_signature=str(sig), **overrides)
    params.validate()
    await verify_genesis(client, params)
    params.save(out)
    return params, True


__all__ = ["GenesisError", "devnet_operator_keys", "genesis_addresses", "genesis_instructions", "run_genesis",
           "verify_genesis"]
