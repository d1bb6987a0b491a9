"""`p2pnode` sub-commands for the IO token economy: genesis, stake, rewards; registered on the shared Typer app."""

from __future__ import annotations

from .app import app  # noqa: F401
