"""`p2pnode devnet | rent | jobs` — the marketplace's sub-commands; registered on the shared Typer app.

`rent` is the renter light client: no torch, no offers, no execution — it finds offers, negotiates, funds the
escrow, uploads, pays by voucher while the job runs, verifies the result with numpy and prints a summary.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserError
from .app import DEFAULT_HOME_PATH, ConfigOpt, HomeOpt, JsonOpt, app, node_config, run_trio

BootstrapOpt = Annotated[list[str] | None, typer.Option("--bootstrap", help="Seed peer /p2p/ multiaddr "
                                                        "(repeatable); [net] bootstrap.")]


def _quiet_logging(verbose: bool) -> None:
    from .net import setup_logging

    setup_logging(verbose)
    if not verbose:
        logging.getLogger("p2pnode").setLevel(logging.WARNING)


@app.command()
def devnet(keep: Annotated[bool, typer.Option("--keep", help="Leave the network running for more `p2pnode rent` "
                                              "commands (Ctrl-C stops it).")] = False,
           dir: Annotated[Path | None, typer.Option("--dir", help="Keep every home, ledger and log here "
                                                    "(default: a temporary folder, removed at the end).")] = None,
           providers: Annotated[int, typer.Option("--providers", help="How many providers to start.")] = 3,
           n: Annotated[int, typer.Option("--n", help="Size of the demo matmul job (n x n x n).")] = 1024,
           json_out: JsonOpt = False,
           verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log our own events too.")] = False) -> None:
    """Run the whole network on this machine (local chain, operators, providers), rent one verified paid job."""
    if not 1 <= providers <= 16:
        raise UserError(f"--providers {providers}: give 1..16")
    if not 1 <= n <= 8192:
        raise UserError(f"--n {n}: give 1..8192")
    _quiet_logging(verbose)
    from ..market.devnet import run_devnet

    say = (lambda text: None) if json_out else (lambda text: typer.echo(text))
    summary = run_trio(lambda: run_devnet(dir, keep=keep, providers=providers, n=n, say=say))
    if json_out:
        typer.echo(json.dumps(summary, indent=2))


@app.command()
def rent(home: HomeOpt = DEFAULT_HOME_PATH, config: ConfigOpt = None, bootstrap: BootstrapOpt = None,
         kind: Annotated[str, typer.Option("--kind", help="Job kind (the CLI builds matmul jobs).")] = "matmul",
         n: Annotated[int, typer.Option("--n", help="Matrix size: C = A @ B with n x n matrices.")] = 1024,
         batch: Annotated[int, typer.Option("--batch", help="Batched GEMM count.")] = 1,
         dtype: Annotated[str, typer.Option("--dtype", help="fp32 | bf16 | fp16.")] = "fp32",
         max_price: Annotated[str | None, typer.Option("--max-price", help="Most IO you pay per device-hour "
                                                       "(e.g. 2.5); [client] max_price.")] = None,
         gpu: Annotated[str | None, typer.Option("--gpu", help="Device name must contain this; [client] gpu.")] = None,
         min_tflops: Annotated[float | None, typer.Option("--min-tflops", help="Minimum attested TFLOPS; "
                                                          "[client] min_tflops.")] = None,
         max_s: Annotated[int, typer.Option("--max-s", help="Longest the job may run (and the escrow covers).")] = 600,
         wait: Annotated[float | None, typer.Option("--wait", help="Seconds to wait for a fitting offer to show up; "
                                                    "[client] rent_wait_s (30).")] = None,
         json_out: JsonOpt = False,
         verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log internals.")] = False) -> None:
    """Rent a verified job from the best fitting provider and pay for it in IO (live progress, then a summary)."""
    if kind != "matmul":
        raise UserError(f"--kind {kind}: the command line builds matmul jobs; use `from p2pnode import Renter` "
                        "for infer and attest jobs")
    if dtype not in ("fp32", "bf16", "fp16"):
        raise UserError(f"--dtype {dtype}: give fp32, bf16 or fp16")
    if not 1 <= n <= 65536 or not 1 <= batch <= 4096 or max_s < 1:
        raise UserError("--n must be in 1..65536, --batch in 1..4096 and --max-s positive")
    cfg = node_config(home, config, net={"bootstrap": bootstrap, "listen": ["/ip4/0.0.0.0/tcp/0"]},
                      client={"max_price": max_price, "gpu": gpu, "min_tflops": min_tflops, "rent_wait_s": wait,
                              "verbose": verbose or None})
    _quiet_logging(cfg.client.verbose)
    from ..market.devnet import matmul_job
    from ..market.renter_jobs import Renter
    from ..market.reputation import Wanted

    try:
        spec = matmul_job(n, dtype=dtype, batch=batch)
    except Exception as exc:
        raise UserError(f"job too large or malformed: {exc}") from None

    def say(phase: str, text: str) -> None:  # live progress on stderr; stdout carries the result (JSON or table)
        typer.echo(f"[{phase:<11}] {text}", err=True)

    from .net import price_limit

    c = cfg.client
    want = Wanted(max_price=price_limit(c.max_price), gpu=c.gpu or None, min_tflops=c.min_tflops, max_s=max_s)
    renter = Renter(cfg, progress=say)

    async def main():
        async with renter.running(background_refunds=False):
            out = await renter.rent(spec, [], want, discover_s=c.rent_wait_s)
            await renter.refund_due()
            return out

    outcome = run_trio(main)
    data = outcome.summary()
    if json_out:
        typer.echo(json.dumps(data, indent=2))
        return
    from ..chain.token import format_io

    typer.echo(f"provider      {outcome.provider}")
    typer.echo(f"price         {format_io(outcome.price)} IO per device-hour")
    typer.echo(f"verification  {'PASSED' if outcome.verified else 'FAILED'}: {outcome.verdict}")
    typer.echo(f"job time      {outcome.seconds:.3f} s")
    typer.echo(f"paid          {format_io(outcome.paid)} IO (+ fee burned {format_io(outcome.fee)} IO)")
    typer.echo(f"refunded      {format_io(outcome.refunded)} IO of the {format_io(outcome.deposit)} IO deposit")
    typer.echo(f"fund tx       {outcome.fund_sig}")
    typer.echo(f"settle tx     {outcome.settle_sig or '(pending: the provider settles it)'}")
    if len(outcome.attempts) > 1:
        typer.echo("tried first   " + "; ".join(f"{a.peer_id[-8:]} {a.outcome}: {a.detail}"
                                                for a in outcome.attempts[:-1]))


@app.command()
def jobs(home: HomeOpt = DEFAULT_HOME_PATH, json_out: JsonOpt = False,
         limit: Annotated[int, typer.Option("--limit", help="Most recent jobs to show.")] = 50) -> None:
    """List past jobs from this node's store (as renter or provider)."""
    from ..market.agreements import Agreements
    from ..store import Store

    db = home.expanduser() / "node.db"
    if not db.exists():
        raise UserError(f"{db}: no store here; run jobs from this home first (or pass --home)")
    store = Store(db)
    try:
        rows = Agreements(store).list(limit=limit)
    finally:
        store.close()
    if json_out:
        typer.echo(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    if not rows:
        typer.echo("no jobs yet")
        return
    from ..chain.token import format_io

    typer.echo(f"{'JOB':<10} {'ROLE':<8} {'KIND':<7} {'STATE':<10} {'PAID IO':>14} {'REFUND IO':>14} {'PEER':<20} "
               "VERDICT")
    for r in rows:
        typer.echo(f"{r.job_id.hex()[:8]:<10} {r.role:<8} {r.kind:<7} {r.state:<10} {format_io(r.cumulative):>14} "
                   f"{format_io(r.refunded):>14} {r.peer[-20:]:<20} {r.verdict[:40]}")
