"""`p2pnode` sub-commands of the chain capability; registered on the shared Typer app."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserError
from .app import app, run_trio


class LocalnetError(UserError):
    """The localnet cannot start (port taken, ledger unusable)."""


@app.command()
def localnet(
    port: Annotated[int, typer.Option("--port", help="TCP port for JSON-RPC (0 = any free port).")] = 8899,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    ledger: Annotated[Path | None, typer.Option("--ledger", help="Keep the chain's state in DIR across restarts.")]
    = None,
    dev: Annotated[bool, typer.Option("--dev", help="Enable dev-only RPC methods (p2pnode_warpClock).")] = False,
) -> None:
    """Run the embedded local Solana chain (LiteSVM) behind standard JSON-RPC; Ctrl-C stops it cleanly."""
    from ..chain.localnet import run_localnet

    def announce(server) -> None:  # type: ignore[no-untyped-def]
        state = f"ledger {server.ledger_dir}, slot {server.chain.slot}" if server.ledger_dir else "no ledger"
        print(f"p2pnode localnet: RPC listening on {server.url} ({state}{', dev' if dev else ''})", flush=True)

    if not 0 <= port <= 65535:
        raise LocalnetError(f"--port {port}: must be in 0..65535")
    try:
        run_trio(run_localnet, host, port, ledger, dev, announce)
    except BaseExceptionGroup as group:  # a UserError raised inside the server's nursery (e.g. ledger write)
        user = group.subgroup(lambda e: isinstance(e, UserError))
        if user is None:
            raise
        first = user
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    except OSError as exc:
        raise LocalnetError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port") from None
    print("p2pnode localnet: stopped", file=sys.stderr, flush=True)
