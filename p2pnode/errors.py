"""The root of every exception p2pnode raises on purpose.

Two families matter to callers:

* :class:`UserError` — something the person running the command can fix (a missing key file, a bad flag,
  an unreachable RPC). The CLI prints its message as one line and exits non-zero, never a traceback, so the
  message must name the thing and the fix.
* :class:`ProtocolError` — bad input from the network. It is raised, counted, the message is dropped and the
  node keeps serving; it is never shown to a user as a crash.

Each capability (wire, net, chain, compute, market) subclasses these with precise types, in the trio style:
catch the narrowest type you can handle.
"""

from __future__ import annotations


class P2PNodeError(Exception):
    """Base class of every error p2pnode raises deliberately."""


class UserError(P2PNodeError):
    """A problem the operator can fix; its message is printed as one line by the CLI."""


class ConfigError(UserError):
    """A configuration file or flag is missing, malformed or inconsistent."""


class ProtocolError(P2PNodeError):
    """Input from a peer was rejected; the message is dropped and the node keeps serving."""
