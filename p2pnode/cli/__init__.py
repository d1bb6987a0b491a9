"""`p2pnode` — one entry point, sub-commands grouped by capability (see cli/app.py)."""

from __future__ import annotations

import sys

from ..errors import UserError
from .app import app
from . import chain, compute, economy, market, net  # noqa: F401  (each registers its sub-commands on `app`)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: operator-fixable errors are one line on stderr and exit code 2, never a traceback.

    Typer (standalone mode) handles usage errors and --help itself and exits through SystemExit.
    """
    try:
        app(args=argv, prog_name="p2pnode")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except UserError as exc:
        print(f"p2pnode: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("p2pnode: interrupted", file=sys.stderr)
        return 130
    return 0


def entry() -> None:
    """The installed `p2pnode` script."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
