"""`p2pnode` sub-commands of the net capability; registered on the shared Typer app."""

from __future__ import annotations

from .app import app  # noqa: F401
