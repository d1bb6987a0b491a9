"""The `p2pnode` Typer application and the few helpers every sub-command shares.

Sub-commands live next to each other by capability (``cli/net.py``, ``cli/chain.py``, ``cli/compute.py``,
``cli/market.py``) and register on :data:`app`; heavy libraries (libp2p, torch, solana) are imported inside
the command that needs them so ``p2pnode --help`` stays fast and the renter side never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable

import typer

from ..config import DEFAULT_HOME, NodeConfig, load_config

app = typer.Typer(
    name="p2pnode",
    help="Node of an open peer-to-peer GPU compute network: provide GPUs, rent them, settle in IO on Solana.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

HomeOpt = Annotated[Path, typer.Option("--home", envvar="P2PNODE_HOME", help="Node home (key, config, database).")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML config file (default <home>/config.toml).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]

DEFAULT_HOME_PATH = DEFAULT_HOME


def node_config(home: Path, config: Path | None = None, **sections: dict[str, Any]) -> NodeConfig:
    """Load the config the way every command does: defaults < TOML file < flags given on the command line."""
    return load_config(config, home=home, overrides=sections)


def run_trio(fn: Callable[..., Any], *args: Any) -> Any:
    """Run an async command body under trio; Ctrl-C cancels it cleanly (nurseries unwind, hosts close)."""
    import trio

    return trio.run(fn, *args)


@app.callback()
def _root() -> None:
    """Node of an open peer-to-peer GPU compute network: provide GPUs, rent them, settle in IO on Solana."""
