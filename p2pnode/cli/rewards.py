"""`p2pnode rewards verify --epoch N` (anyone recomputes a manifest) and `p2pnode rewards earnings` (a provider).

Both read what the node stored from gossip (manifests on /iog/rewards/1, attestations on /iog/attest/1) in its
database, plus chain state over RPC, and never trust the manifest's own numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

import trio

from ..errors import UserError
from .app import DEFAULT_HOME_PATH, ConfigOpt, HomeOpt, JsonOpt, app, node_config, run_trio

try:  # chain B's economy commands own the `rewards` group when present
    from .economy import rewards_app  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on which capabilities have landed
    rewards_app = typer.Typer(help="Hourly IO rewards: schedule, verification, earnings.", no_args_is_help=True)
    app.add_typer(rewards_app, name="rewards")


class NoManifest(UserError):
    """The node has not stored a manifest for the epoch."""


def _open(home, config):
    from ..chain.network import NetworkParams
    from ..store import Store

    from ..chain import rewards_distribute, rewards_inputs  # noqa: F401  (register their tables before opening)
    from ..compute import attest  # noqa: F401  (the attestations table)

    cfg = node_config(home, config)
    params = NetworkParams.load(cfg.network_file)
    return cfg, params, Store(cfg.db_file)


async def verify_epoch(store, client, params, epoch: int) -> dict:
    """Validate the stored manifest, recompute the epoch from stored attestations + chain, compare."""
    import base58

    from ..chain.rewards_inputs import compute_allocation, stored_manifest
    from ..chain.rewards_manifest import ManifestValidator

    signed = stored_manifest(store, epoch)
    if signed is None:
        raise NoManifest(f"no rewards manifest for epoch {epoch} in {store.path}; run the node so it receives "
                         f"/iog/rewards/1 gossip (or wait for the epoch to close)")
    ManifestValidator(operators=[base58.b58decode(o) for o in params.operators],
                      pool=params.rewards_pool).validate(signed.raw)
    m = signed.message
    # slashed = slashings that landed on chain in the epoch (+ exclusions recorded here): never taken from the
    # manifest itself, so an operator cannot exclude a provider by claiming it was slashed
    mine = await compute_allocation(store, client, params, epoch, carry_in=m.carry_in)
    theirs = {e.address: e for e in m.entries}
    ours = {e.address: e for e in mine.entries}
    diffs = []
    for addr in sorted(set(theirs) | set(ours)):
        a, b = theirs.get(addr), ours.get(addr)
        if a != b:
            diffs.append({"address": addr, "manifest": a.to_wire() if a else None, "recomputed": b.to_wire() if b else None})
    return {"epoch": epoch, "match": mine.root == m.root, "manifest_root": m.root.hex(), "recomputed_root": mine.root.hex(),
            "signer": signed.signer_peer_id, "entries": len(m.entries), "differences": diffs}


async def earnings(store, client, params, address: str, rpc=None) -> list[dict]:
    """Per stored manifest: this address's amount, whether its Merkle proof checks against the root, and whether
    the transfer on chain (from the rewards pool to its token account, in a batch whose memo names this epoch and
    root) carries exactly that amount; the last row sums up with the account's balance.

    `rpc` is a solana-py AsyncClient for the history lookups (getSignaturesForAddress, getTransaction); without it
    the on-chain check is skipped ("onchain": null).
    """
    from solders.pubkey import Pubkey

    from ..chain import token
    from ..chain.rewards import address_key, merkle_proof, verify_proof
    from ..chain.rewards_manifest import RewardsManifest
    from ..chain.rewards_onchain import reward_transfers
    from ..wire import open_envelope

    rows = store.query("SELECT envelope FROM reward_manifests ORDER BY epoch")
    manifests = [open_envelope(bytes(raw), RewardsManifest).message for (raw,) in rows]
    ata = token.ata(Pubkey.from_string(address), Pubkey.from_string(params.mint))
    paid: dict[int, list] = {}
    if rpc is not None and manifests:
        for t in await reward_transfers(rpc, ata, Pubkey.from_string(params.rewards_pool),
                                        stop_below=manifests[0].epoch):
            if t.dest == ata:
                paid.setdefault(t.epoch, []).append(t)
    out, total, onchain_total = [], 0, 0
    key = address_key(address)
    for m in manifests:
        e = m.entry_for(address)
        got = paid.get(m.epoch, [])
        received = sum(t.amount for t in got if t.root == m.root)
        onchain_total += received
        if e is None:
            x = next((x for x in m.excluded if x.address == address), None)
            out.append({"epoch": m.epoch, "amount": 0, "excluded": x.reason if x else None,
                        "onchain": None if rpc is None else ("ok" if not got else f"unexpected transfer {received}")})
            continue
        leaves = [(address_key(x.address), x.amount) for x in m.entries]
        ok = verify_proof(m.epoch, key, e.amount, merkle_proof(m.epoch, leaves, key), m.root)
        total += e.amount
        if rpc is None:
            onchain = None
        elif not got:
            onchain = "not paid yet"
        elif any(t.root != m.root for t in got):
            onchain = "paid under another root"
        elif received != e.amount:
            onchain = f"paid {received}, manifest says {e.amount}"
        else:
            onchain = "ok"
        out.append({"epoch": m.epoch, "amount": e.amount, "proof_ok": ok, "cumulative": total, "onchain": onchain,
                    "signatures": sorted({t.signature for t in got})})
    acc = await client.get_account(ata)
    balance = token.parse_token_account(acc.data).amount if acc is not None else 0
    out.append({"token_account": str(ata), "balance": balance, "earned": total, "received": onchain_total,
                "paid_check": "ok" if balance >= total else "balance below earned: unpaid or moved"})
    return out


@rewards_app.command("verify")
def verify_cmd(epoch: Annotated[int, typer.Option("--epoch", help="Epoch (= schedule hour) to recompute.")],
               home: HomeOpt = DEFAULT_HOME_PATH, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Recompute an epoch's manifest from gossiped attestations and chain state and compare Merkle roots."""
    cfg, params, store = _open(home, config)

    async def body():
        from ..chain.rpc import ChainClient

        async with ChainClient(cfg.chain.rpc_url) as client:
            return await verify_epoch(store, client, params, epoch)

    res = run_trio(body)
    if json_out:
        typer.echo(json.dumps(res, indent=2))
    else:
        verdict = "MATCH" if res["match"] else "MISMATCH"
        typer.echo(f"epoch {epoch}: {verdict}  manifest {res['manifest_root'][:16]}  recomputed "
                   f"{res['recomputed_root'][:16]}  ({res['entries']} entries, signed by {res['signer']})")
        for d in res["differences"]:
            typer.echo(f"  {d['address']}: manifest {d['manifest']} recomputed {d['recomputed']}")
    if not res["match"]:
        raise typer.Exit(1)


@rewards_app.callback(invoke_without_command=True)
def rewards_default(ctx: typer.Context, home: HomeOpt = DEFAULT_HOME_PATH, config: ConfigOpt = None,
                    json_out: JsonOpt = False) -> None:
    """Hourly IO rewards. Without a sub-command: this node's per-epoch earnings (as `p2pnode rewards earnings`)."""
    if ctx.invoked_subcommand is None:
        earnings_cmd(home=home, config=config, json_out=json_out, address=None)


@rewards_app.command("earnings")
def earnings_cmd(home: HomeOpt = DEFAULT_HOME_PATH, config: ConfigOpt = None, json_out: JsonOpt = False,
                 address: Annotated[str | None, typer.Option("--address", help="Payee (default: this node).")] = None
                 ) -> None:
    """This provider's per-epoch rewards, each checked against the manifest's root and the on-chain balance."""
    from ..identity import Identity

    cfg, params, store = _open(home, config)
    addr = address or Identity.load(cfg.key_file).address

    async def body():
        from ..chain.rpc import ChainClient

        from solana.rpc.async_api import AsyncClient

        import httpx
        from solana.exceptions import SolanaRpcException
        from solana.rpc.core import RPCException

        from ..chain.rewards_onchain import OnChainError

        async with ChainClient(cfg.chain.rpc_url) as client:
            rpc = AsyncClient(cfg.chain.rpc_url, timeout=cfg.chain.confirm_timeout_s)
            try:
                with trio.fail_after(max(60.0, 4 * cfg.chain.confirm_timeout_s)):
                    return await earnings(store, client, params, addr, rpc)
            except trio.TooSlowError:
                raise UserError(f"{cfg.chain.rpc_url}: reading the reward history timed out; try again") from None
            except OnChainError as exc:
                raise UserError(str(exc)) from None
            except (SolanaRpcException, RPCException, httpx.HTTPError, OSError) as exc:
                # transport or RPC errors from the history lookups: one line, not a traceback
                raise UserError(f"{cfg.chain.rpc_url}: cannot read the reward history ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
            finally:
                with trio.CancelScope(shield=True):
                    await rpc.close()

    rows = run_trio(body)
    bad = any(r.get("proof_ok") is False or r.get("onchain") not in (None, "ok", "not paid yet") for r in rows[:-1])
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        if bad:
            raise typer.Exit(1)
        return
    from ..chain.token import format_io

    for r in rows[:-1]:
        if r["amount"]:
            typer.echo(f"epoch {r['epoch']:>7}  {format_io(r['amount']):>16} IO  proof {'ok' if r['proof_ok'] else 'BAD'}"
                       f"  on chain: {r['onchain']}")
        else:
            typer.echo(f"epoch {r['epoch']:>7}  {'0':>16} IO  {r['excluded'] or 'not in manifest'}"
                       + (f"  on chain: {r['onchain']}" if r["onchain"] not in (None, "ok") else ""))
    last = rows[-1]
    typer.echo(f"earned {format_io(last['earned'])} IO, received {format_io(last['received'])} IO on chain; "
               f"{last['token_account']} holds {format_io(last['balance'])} IO ({last['paid_check']})")
    if bad:  # an entry that does not check out: exit 1 so scripts notice
        raise typer.Exit(1)


@rewards_app.command("approve")
def approve_cmd(
    distributor: Annotated[str, typer.Option("--distributor", help="Operator address to make the pool's delegate.")],
    amount: Annotated[str, typer.Option("--amount", help="Allowance in IO (e.g. one day of emission: 110000).")],
    operator_key: Annotated[list[Path], typer.Option(
        "--operator-key", help="An operator key file to sign with (repeat; the quorum's worth).")],
    tx_file: Annotated[Path | None, typer.Option(
        "--tx", help="Operators on separate machines: the approval being co-signed (durable nonce). Without the "
                     "file: prepare it and sign first; with it: check the terms, add signatures, submit when "
                     "complete.")] = None,
    signer: Annotated[list[str] | None, typer.Option(
        "--signer", help="With --tx: another operator's address that will co-sign (repeat).")] = None,
    home: HomeOpt = DEFAULT_HOME_PATH, config: ConfigOpt = None, json_out: JsonOpt = False,
) -> None:
    """The operators' quorum approves a capped delegate allowance on the rewards pool (replaces the previous one).

    The distributing operator then pays each epoch alone, up to the allowance; see rewards_distribute.py for why.
    With `threshold` operator keys here it is signed and sent at once; otherwise use --tx to pass a durable-nonce
    approval between operators, each checking the distributor and amount before signing.
    """
    from ..chain import token as tk
    from ..chain.rewards_distribute import DistributionError, Pool, approve_allowance
    from ..identity import Identity

    cfg, params, _store = _open(home, config)
    _store.close()
    try:
        dist = tk.pubkey(distributor)
    except Exception:
        raise UserError(f"--distributor {distributor!r}: not a base58 Solana address") from None
    if distributor not in params.operators:
        raise UserError(f"--distributor {distributor} is not one of the network's operators (network.json)")
    units = tk.parse_amount(amount)
    keys = [Identity.load(p).solana_keypair() for p in operator_key]
    signers = list({str(k.pubkey()): k for k in keys if str(k.pubkey()) in params.operators}.values())
    if tx_file is not None:
        _approve_via_file(cfg, params, dist, units, signers, tx_file, signer or [], json_out)
        return
    if len(signers) < params.threshold:
        raise UserError(f"the approval needs {params.threshold} of the {len(params.operators)} operators' keys; "
                        f"got {len(signers)} operator key(s) ({len(keys) - len(signers)} not operators)")
    signers = signers[: params.threshold]

    async def body():
        import httpx
        from solana.exceptions import SolanaRpcException
        from solana.rpc.async_api import AsyncClient
        from solana.rpc.core import RPCException

        rpc = AsyncClient(cfg.chain.rpc_url, timeout=cfg.chain.confirm_timeout_s)
        try:
            with trio.fail_after(2 * cfg.chain.confirm_timeout_s + 10):
                return str(await approve_allowance(rpc, Pool.from_network(params), dist, units, signers,
                                                   signers[0], timeout_s=cfg.chain.confirm_timeout_s))
        except DistributionError as exc:
            raise UserError(f"approval refused: {str(exc).splitlines()[0]}") from None
        except trio.TooSlowError:
            raise UserError(f"{cfg.chain.rpc_url}: the approval was not confirmed in time; check `p2pnode rewards "
                            "approve` again (a repeat approval is harmless: it replaces the allowance)") from None
        except (SolanaRpcException, RPCException, httpx.HTTPError, OSError) as exc:
            raise UserError(f"{cfg.chain.rpc_url}: cannot reach the chain ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        finally:
            with trio.CancelScope(shield=True):
                await rpc.close()

    sig = run_trio(body)
    from ..chain.token import format_io

    if json_out:
        typer.echo(json.dumps({"signature": sig, "distributor": distributor, "allowance": units}))
    else:
        typer.echo(f"{distributor} may now pay up to {format_io(units)} IO from the rewards pool ({sig})")


def _approve_via_file(cfg, params, dist, units: int, keys: list, tx_file: Path, others: list[str],
                      json_out: bool) -> None:
    """The multi-machine path of `rewards approve` (see p2pnode.chain.rewards_approval)."""
    import base64

    from ..chain import token as tk
    from ..chain.multisig import MultisigError, decode_tx, missing_signers
    from ..chain.rewards_approval import ApprovalError, cosign_approval, prepare_approval, ready, submit_approval
    from ..chain.rpc import ChainClient

    if not keys:
        raise UserError("--operator-key: none of the given keys is a network operator")
    try:
        extra = [tk.pubkey(a) for a in others]
    except Exception:
        raise UserError("--signer: not a base58 Solana address") from None

    async def body():
        async with ChainClient(cfg.chain.rpc_url) as client:
            if not tx_file.exists():
                wanted = [k.pubkey() for k in keys] + [a for a in extra if a not in {k.pubkey() for k in keys}]
                _, raw = await prepare_approval(client, params, keys[0], dist, units, wanted)
                for k in keys[1:]:
                    raw = cosign_approval(params, k, dist, units, raw)
            else:
                try:
                    raw = base64.b64decode(tx_file.read_text().strip(), validate=True)
                except (OSError, ValueError) as exc:
                    raise UserError(f"{tx_file}: not a base64 approval transaction ({exc})") from None
                for k in keys:
                    raw = cosign_approval(params, k, dist, units, raw)
            tx_file.write_text(base64.b64encode(raw).decode() + "\n")
            if ready(raw):
                return raw, await submit_approval(client, raw)
            return raw, None

    try:
        raw, sig = run_trio(body)
    except (ApprovalError, MultisigError) as exc:
        raise UserError(f"approval refused: {exc}") from None
    missing = [str(k) for k in missing_signers(decode_tx(raw))]
    if json_out:
        typer.echo(json.dumps({"signature": sig, "tx_file": str(tx_file), "missing_signers": missing}))
    elif sig:
        typer.echo(f"approval complete and sent ({sig}): {dist} may pay up to {tk.format_io(units)} IO")
    else:
        typer.echo(f"signed; {tx_file} still needs: {', '.join(missing)} — each runs `p2pnode rewards approve "
                   f"--distributor {dist} --amount {tk.format_io(units)} --tx {tx_file.name} --operator-key KEY`")
