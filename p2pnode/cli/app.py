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
from ..errors import UserError

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
    """Run an async command body under trio; Ctrl-C cancels it cleanly (nurseries unwind, hosts close).

    A UserError raised inside nested nurseries arrives wrapped in ExceptionGroups; unwrap a lone one so the CLI
    prints its one line instead of a traceback.
    """
    import trio

    try:
        return trio.run(fn, *args)
    except BaseExceptionGroup as group:
        leaf = _lone_leaf(group)
        if isinstance(leaf, (UserError, KeyboardInterrupt)):
            raise leaf from None
        raise


def _lone_leaf(exc: BaseException) -> BaseException | None:
    """The single non-group exception inside nested groups, or None when there are several."""
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


@app.callback()
def _root() -> None:
    """Node of an open peer-to-peer GPU compute network: provide GPUs, rent them, settle in IO on Solana."""
