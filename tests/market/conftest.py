"""A whole network across processes on loopback, for the marketplace tests.

``market_net`` (module scoped) is :class:`p2pnode.market.devnet.Devnet` itself — the same orchestration as
``p2pnode devnet``: a real localnet (LiteSVM behind JSON-RPC) with ``--dev`` time warp, genesis, two bootstrap
operators (seed peer, arbiters, 2-of-2 slashing quorum) and two staked CPU providers, each a ``p2pnode`` child
process. Tests add renters in-process (real libp2p hosts) with :func:`new_renter`. Tests that kill or restart a
child take the ``fresh_net`` fixture instead, so the shared network stays healthy.

Provider 1 is the cheapest (36 IO per device-hour), so a renter with no history asks it first.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Iterator

import pytest
import trio

from p2pnode.chain import token as tk
from p2pnode.chain.rpc import ChainClient
from p2pnode.config import IO, load_config
from p2pnode.identity import Identity
from p2pnode.market.devnet import _LISTENING_RE as _LISTENING  # noqa: F401  (tests wait for restarts with it)
from p2pnode.market.devnet import Devnet, give_io, io_balance
from p2pnode.market.renter_jobs import Renter

# Short protocol timers so dead peers are noticed in seconds; vouchers every 0.25 s so a few flow in any job.
TEST_MARKET = {"voucher_interval_s": 0.25, "request_timeout_s": 10.0, "settle_retry_s": 1.0, "fund_timeout_s": 20.0,
               "result_grace_s": 10.0, "quote_ttl_s": 20}


def make_net(root: Path, providers: int = 2) -> Devnet:
    net = Devnet(root, providers=providers, say=lambda text: None, market=dict(TEST_MARKET))
    try:
        trio.run(net.start)
    except BaseException:
        net.stop()
        raise
    return net


@pytest.fixture(scope="module")
def market_net(tmp_path_factory) -> Iterator[Devnet]:
    net = make_net(tmp_path_factory.mktemp("market"))
    try:
        yield net
    finally:
        net.stop()


@pytest.fixture
def fresh_net(tmp_path) -> Iterator[Devnet]:
    net = make_net(tmp_path / "net")
    try:
        yield net
    finally:
        net.stop()


async def new_renter(net: Devnet, name: str, *, io: int = 200 * IO, progress: Any = None) -> Renter:
    """A funded renter (SOL for fees, IO from the launch treasury by the operators' quorum) with its own home."""
    ident = Identity.generate()
    async with ChainClient(net.rpc_url, timeout_s=20) as client:
        await client.airdrop(ident.solana_keypair().pubkey(), 2 * 10**9)
        await give_io(client, net.params, [o.solana_keypair() for o in net.ops], ident.address, io)
    home = net._write_home(name, ident, bootstrap=net.seed_addr)
    return Renter(load_config(home=home), identity=ident, params=net.params,
                  progress=progress or (lambda phase, text: None))


async def balances(net: Devnet, *addresses: str) -> dict[str, int]:
    async with ChainClient(net.rpc_url, timeout_s=20) as client:
        return {a: await io_balance(client, a, net.params.mint) for a in addresses}


async def supply(net: Devnet) -> int:
    async with ChainClient(net.rpc_url, timeout_s=20) as client:
        return tk.parse_mint((await client.get_account(tk.pubkey(net.params.mint))).data).supply


def provider_jobs(net: Devnet, i: int) -> list[dict]:
    """The provider process's own record of its jobs (read-only: it is another process's database)."""
    db = sqlite3.connect(f"file:{net.home(f'provider-{i}') / 'node.db'}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM market_jobs ORDER BY created_at")]
    except sqlite3.OperationalError:  # no job yet: the table is created with the first one
        return []
    finally:
        db.close()


def provider_address(net: Devnet, i: int) -> str:
    return net.provider_ids[i - 1].address


def provider_peer(net: Devnet, i: int) -> str:
    return net.provider_ids[i - 1].peer_id


def _leaves(exc: BaseException):
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            yield from _leaves(e)
    else:
        yield exc


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Show the leaf exceptions of a failure: trio nests them deeper than pytest prints (max_group_depth)."""
    import traceback

    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and isinstance(call.excinfo.value, BaseExceptionGroup):
        text = "\n".join("".join(traceback.format_exception(type(e), e, e.__traceback__)[-8:])
                         for e in _leaves(call.excinfo.value))
        report.sections.append(("leaf exceptions", text))
