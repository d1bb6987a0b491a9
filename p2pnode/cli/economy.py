"""`p2pnode` sub-commands for the IO token economy: genesis, balance, `stake …` and `rewards schedule`.

Solana libraries are imported inside each command so `p2pnode --help` stays fast. `rewards_app` is the shared
`rewards` group: other capabilities add their commands to it (e.g. `rewards verify`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UserError
from .app import DEFAULT_HOME_PATH, ConfigOpt, HomeOpt, JsonOpt, app, node_config, run_trio

# no_args_is_help=False: bare `p2pnode rewards` shows this node's earnings (callback in cli/rewards.py)
rewards_app = typer.Typer(help="Hourly IO rewards: schedule, verification, earnings.", no_args_is_help=False)
app.add_typer(rewards_app, name="rewards")
stake_app = typer.Typer(help="Provider collateral: deposit, status, unstake request, withdraw.", no_args_is_help=True)
app.add_typer(stake_app, name="stake")

RpcOpt = Annotated[str | None, typer.Option("--rpc", help="Solana JSON-RPC URL (default: chain.rpc_url).")]
NetworkOpt = Annotated[Path | None, typer.Option("--network", help="network.json (default: chain.network_file).")]


def _run(body: Any) -> Any:
    """run_trio, with refusals from the chain libraries (ProtocolError: e.g. a cooldown not over) shown as the
    one-line operator errors they are here, not tracebacks."""
    from ..errors import ProtocolError

    try:
        return run_trio(body)
    except ProtocolError as exc:
        raise UserError(str(exc)) from None


def _echo(data: Any, json_out: bool, text: str) -> None:
    typer.echo(json.dumps(data, indent=2) if json_out else text)


def _ctx(home: Path, config: Path | None, rpc: str | None, network: Path | None):
    """(config, identity, network params) the way every economy command needs them."""
    from ..chain.network import NetworkParams
    from ..identity import Identity

    cfg = node_config(home, config, chain={"rpc_url": rpc, "network_file": str(network) if network else None})
    ident = Identity.load(cfg.key_file)
    return cfg, ident, NetworkParams.load(cfg.network_file)


# --- genesis --------------------------------------------------------------------------------------------------


@app.command()
def genesis(
    out: Annotated[Path, typer.Option("--out", help="Where to write network.json.")] = Path("network.json"),
    rpc: Annotated[str, typer.Option("--rpc", help="Solana JSON-RPC URL.")] = "http://127.0.0.1:8899",
    operators: Annotated[int, typer.Option("--operators", help="Devnet: generate this many operator keys.")] = 3,
    threshold: Annotated[int, typer.Option("--threshold", help="Operators' quorum m (2 <= m <= n).")] = 2,
    operator_key: Annotated[list[str] | None, typer.Option(
        "--operator-key", help="Real cluster: an operator's public key (repeat); no keys are generated.")] = None,
    payer: Annotated[Path | None, typer.Option("--payer", help="Deployer key file (default: <out dir>/deployer.json, "
                                                                  "generated on a devnet).")] = None,
    cluster: Annotated[str, typer.Option("--cluster", help="localnet | devnet | testnet | mainnet-beta")] = "localnet",
    fee_bps: Annotated[int, typer.Option("--fee-bps", help="Network fee on job payments (burned).")] = 25,
    cooldown_s: Annotated[int, typer.Option("--unstake-cooldown", help="Unstake cooldown, seconds.")] = 21 * 86400,
    epoch_s: Annotated[int, typer.Option("--epoch-s", help="Rewards epoch length in seconds (one emission hour "
                                                          "each; a devnet uses a few seconds).")] = 3600,
    json_out: JsonOpt = False,
) -> None:
    """Create the IO mint, the operators' multisig, 500M treasury + 300M rewards pool; drop the mint authority."""
    from ..chain.genesis import devnet_operator_keys, run_genesis
    from ..chain.rpc import ChainClient
    from ..identity import Identity
    from solders.pubkey import Pubkey

    if epoch_s <= 0:
        raise UserError("--epoch-s must be a positive number of seconds")
    folder = out.resolve().parent
    faucet = cluster in ("localnet", "devnet")
    if operator_key:
        try:
            op_keys = [Pubkey.from_string(k) for k in operator_key]
        except ValueError:
            raise UserError("--operator-key: not a base58 Solana public key") from None
    else:
        if not faucet:
            raise UserError(f"on {cluster} pass the operators' public keys with --operator-key (keys are generated "
                            "only for localnet/devnet)")
        if not 2 <= operators <= 10:
            raise UserError("--operators must be in 2..10")
        op_keys = [i.solana_keypair().pubkey() for i in devnet_operator_keys(folder / "operators", operators)]
    payer_file = payer or folder / "deployer.json"
    if not payer_file.exists():
        if payer is not None or not faucet:
            raise UserError(f"{payer_file}: no deployer key file; pass --payer with a funded key")
        Identity.generate().save(payer_file)
    deployer = Identity.load(payer_file).solana_keypair()

    async def body():
        async with ChainClient(rpc) as client:
            return await run_genesis(client, deployer, op_keys, threshold, out, cluster=cluster, airdrop=faucet,
                                     fee_bps=fee_bps, unstake_cooldown_s=cooldown_s, epoch_s=epoch_s)

    params, created = _run(body)
    data = json.loads(params.to_json())
    verb = "created" if created else "already exists (nothing done)"
    _echo({**data, "created": created}, json_out,
          f"network {verb}: {out}\n  mint {params.mint}\n  operators {params.threshold}-of-{len(params.operators)} "
          f"multisig {params.multisig}\n  treasury {params.treasury} (500,000,000 IO)\n"
          f"  rewards pool {params.rewards_pool} (300,000,000 IO)")


# --- balance --------------------------------------------------------------------------------------------------


@app.command()
def balance(home: HomeOpt = DEFAULT_HOME_PATH, config: ConfigOpt = None, rpc: RpcOpt = None,
            network: NetworkOpt = None, json_out: JsonOpt = False) -> None:
    """SOL and IO held by this node's key."""
    from ..chain import token as tk
    from ..chain.network import NetworkFileError, NetworkParams
    from ..chain.rpc import ChainClient
    from ..identity import Identity

    cfg = node_config(home, config, chain={"rpc_url": rpc, "network_file": str(network) if network else None})
    kp = Identity.load(cfg.key_file).solana_keypair()
    try:
        params: NetworkParams | None = NetworkParams.load(cfg.network_file)
    except NetworkFileError:
        params = None  # SOL can be shown without a network; IO needs its mint

    async def body():
        async with ChainClient(cfg.chain.rpc_url) as client:
            sol = await client.balance(kp.pubkey())
            io = None
            if params is not None:
                acc = await client.get_account(tk.ata(kp.pubkey(), tk.pubkey(params.mint)))
                io = 0 if acc is None else tk.parse_token_account(acc.data).amount
            return sol, io

    sol, io = _run(body)
    data = {"address": str(kp.pubkey()), "lamports": sol, "sol": sol / 1e9, "io_base_units": io,
            "io": None if io is None else tk.format_io(io)}
    io_text = "(no network.json: IO unknown)" if io is None else f"{tk.format_io(io)} IO"
    _echo(data, json_out, f"{kp.pubkey()}\n  {sol / 1e9:.9f} SOL\n  {io_text}")


# --- stake ----------------------------------------------------------------------------------------------------


@stake_app.command("deposit")
def stake_deposit(amount: Annotated[str, typer.Argument(help="IO to lock, e.g. 200 or 12.5")],
                  home: HomeOpt = DEFAULT_HOME_PATH, config: ConfigOpt = None, rpc: RpcOpt = None,
                  network: NetworkOpt = None, json_out: JsonOpt = False) -> None:
    """Lock IO as collateral in this provider's stake account (owned by a multisig of provider + operators)."""
    from ..chain import stake as S
    from ..chain import token as tk
    from ..chain.rpc import ChainClient

    cfg, ident, params = _ctx(home, config, rpc, network)
    units = tk.parse_amount(amount)
    kp = ident.solana_keypair()

    async def body():
        async with ChainClient(cfg.chain.rpc_url) as client:
            sig = await S.deposit(client, kp, params, units)
            return sig, await S.stake_of(client, params, kp.pubkey())

    sig, total = _run(body)
    _echo({"signature": sig, "stake": total}, json_out,
          f"deposited {tk.format_io(units)} IO ({sig}); locked stake now {tk.format_io(total)} IO")


@stake_app.command("status")
def stake_status_cmd(home: HomeOpt = DEFAULT_HOME_PATH, config: ConfigOpt = None, rpc: RpcOpt = None,
                     network: NetworkOpt = None, json_out: JsonOpt = False,
                     provider: Annotated[str | None, typer.Option("--provider", help="Another provider's address.")]
                     = None) -> None:
    """Locked stake, the account, and what it covers."""
    from ..chain import stake as S
    from ..chain import token as tk
    from ..chain.rpc import ChainClient

    cfg, ident, params = _ctx(home, config, rpc, network)
    who = provider or ident.address

    async def body():
        async with ChainClient(cfg.chain.rpc_url) as client:
            return await S.stake_status(client, params, who)

    st = _run(body)
    per = params.stake_per_device
    data = {"provider": who, "account": str(st.account), "exists": st.exists, "locked": st.locked,
            "stake": st.amount, "problem": st.problem, "stake_per_device": per,
            "unstake_cooldown_s": params.unstake_cooldown_s}
    text = (f"provider {who}\n  stake account {st.account}\n  locked {tk.format_io(st.amount)} IO"
            + (f"  ({st.problem})" if st.problem else "")
            + f"\n  covers {st.amount * 100 // max(per, 1) / 100:g} default-multiplier device(s) at "
              f"{tk.format_io(per)} IO each")
    _echo(data, json_out, text)


@stake_app.command("unstake")
def stake_unstake(amount: Annotated[str, typer.Argument(help="IO to unlock after the cooldown")],
                  home: HomeOpt = DEFAULT_HOME_PATH, config: ConfigOpt = None, rpc: RpcOpt = None,
                  network: NetworkOpt = None, json_out: JsonOpt = False) -> None:
    """Post the public unstake request (a memo); the cooldown starts at its block time."""
    from ..chain import stake as S
    from ..chain import token as tk
    from ..chain.rpc import ChainClient

    cfg, ident, params = _ctx(home, config, rpc, network)
    units = tk.parse_amount(amount)

    async def body():
        async with ChainClient(cfg.chain.rpc_url) as client:
            sig = await S.request_unstake(client, ident.solana_keypair(), params, units)
            req = await S.read_unstake_request(client, params, ident.solana_keypair().pubkey(), sig)
            return sig, req.block_time + params.unstake_cooldown_s

    sig, ready = _run(body)
    _echo({"request": sig, "withdraw_after": ready}, json_out,
          f"unstake request {sig}\n  withdraw after unix time {ready}: "
          f"`p2pnode stake withdraw --request {sig}`")


@stake_app.command("withdraw")
def stake_withdraw(request: Annotated[str, typer.Option("--request", help="Signature printed by `stake unstake`.")],
                   operator_key: Annotated[list[Path] | None, typer.Option(
                       "--operator-key", help="Devnet: an operator key file to co-sign with (repeat).")] = None,
                   home: HomeOpt = DEFAULT_HOME_PATH, config: ConfigOpt = None, rpc: RpcOpt = None,
                   network: NetworkOpt = None, json_out: JsonOpt = False) -> None:
    """Withdraw unstaked IO after the cooldown, co-signed by the operators' quorum (each refuses early)."""
    import base64

    from ..chain import stake as S
    from ..chain.multisig import decode_tx, merge
    from ..chain.rpc import ChainClient
    from ..identity import Identity

    cfg, ident, params = _ctx(home, config, rpc, network)
    kp = ident.solana_keypair()
    ops = [Identity.load(p).solana_keypair() for p in (operator_key or [])]

    async def body():
        async with ChainClient(cfg.chain.rpc_url) as client:
            req = await S.read_unstake_request(client, params, kp.pubkey(), request)
            cosigners = [o.pubkey() for o in ops] or None
            tx = await S.build_withdraw(client, kp, params, req.amount, cosigners)
            if len(ops) < params.threshold - 1:
                return None, tx
            parts = [decode_tx(tx)] + [decode_tx(await S.cosign_withdraw(client, o, params, kp.pubkey(), tx, request))
                                       for o in ops]
            return str(await client.send(merge(parts))), tx

    sig, tx = _run(body)
    if sig is None:
        _echo({"partial_tx": base64.b64encode(tx).decode()}, json_out,
              "co-signatures needed: send this provider-signed transaction and the request signature to "
              f"{params.threshold - 1} operator(s):\n{base64.b64encode(tx).decode()}")
    else:
        _echo({"signature": sig}, json_out, f"withdrawn ({sig})")


# --- rewards schedule -----------------------------------------------------------------------------------------


@rewards_app.command("schedule")
def rewards_schedule(json_out: JsonOpt = False) -> None:
    """The 20-year emission: IO per year, share of the 300M pool, cumulative supply incl. the 500M launch."""
    from ..chain import emission as em
    from ..chain.token import format_io

    rows = [{"year": y, "emitted": e, "share_of_pool": e / em.POOL, "cumulative_emitted": c, "supply": s}
            for (y, e, c, s) in em.yearly_table()]
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    lines = [f"{'year':>4}  {'IO emitted':>22}  {'share':>7}  {'cumulative supply (IO)':>24}"]
    for r in rows:
        lines.append(f"{r['year']:>4}  {format_io(r['emitted']):>22}  {r['share_of_pool'] * 100:6.2f}%  "
                     f"{format_io(r['supply']):>24}")
    lines.append(f"total {format_io(em.POOL)} IO over {em.TOTAL_HOURS} hours; hour 0 = genesis; "
                 f"first hour {format_io(em.hour_emission(0))} IO")
    typer.echo("\n".join(lines))


# `rewards verify` / `rewards earnings` / bare `rewards` live in cli/rewards.py; register them with this group
# (imported last: that module takes `rewards_app` from here).
from . import rewards as _rewards_commands  # noqa: E402,F401
