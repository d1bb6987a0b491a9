"""Fixtures for real libp2p nodes on loopback (tcp/0: the OS picks the ports, the real address is read back)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from p2pnode.config import NetConfig, NodeConfig, OfferConfig
from p2pnode.identity import Identity
from p2pnode.wire import Device

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
CPU = [Device(kind="cpu", name="test cpu", mem_bytes=8 << 30)]


def net_config(bootstrap: list[str] | None = None, **kw) -> NetConfig:
    return NetConfig(listen=[LOOPBACK], bootstrap=list(bootstrap or []), heartbeat_s=0.5, dial_timeout_s=5.0, **kw)


def node_config(home: Path, bootstrap: list[str] | None = None, *, price: int = 100, ttl_s: int = 600,
                republish_s: float = 60.0) -> NodeConfig:
    cfg = NodeConfig(home=home)
    cfg.net = net_config(bootstrap)
    cfg.offer = OfferConfig(price=price, ttl_s=ttl_s, republish_s=republish_s, min_s=1, max_s=3600)
    return cfg


def make_home(tmp_path: Path, name: str) -> tuple[Path, Identity]:
    home = tmp_path / name
    ident = Identity.generate()
    ident.save(home / "identity.json")
    return home, ident


@pytest.fixture
def homes(tmp_path):
    def _make(name: str):
        return make_home(tmp_path, name)
    return _make


class Running:
    """A node running in its own task: `stop()` cancels it and waits until its host is closed."""

    def __init__(self, node) -> None:
        self.node = node
        self.scope = trio.CancelScope()
        self.done = trio.Event()

    async def _run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self.scope:
                async with self.node.running():
                    task_status.started(self)
                    await trio.sleep_forever()
        finally:
            self.done.set()

    async def stop(self) -> None:
        self.scope.cancel()
        with trio.fail_after(10):
            await self.done.wait()


async def start(nursery, node) -> Running:
    return await nursery.start(Running(node)._run)


async def eventually(predicate, timeout: float = 10.0, interval: float = 0.1) -> bool:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(interval)
        return True
    return False
