"""The provider node: a network node that publishes its capacity offer and keeps the offer book.

Composition, not inheritance of behaviour: :class:`ProviderNode` owns a :class:`~p2pnode.net.node.NetNode`
(host, gossip, discovery, book, status) and an :class:`~p2pnode.market.offers.OfferPublisher`. The marketplace
adds job handling by registering stream handlers on ``node.net.host`` and starting tasks in ``node.nursery``
inside the same ``async with`` — nothing here needs to change for that.

    async with ProviderNode.start(cfg) as node:     # or: ProviderNode(cfg, identity=...).running()
        await trio.sleep_forever()

Capacity attestation: the node answers operators' challenges on ``/iog/attest/1.0.0``
(:class:`~p2pnode.compute.attest_service.AttestServer`, one challenge at a time per device; only the network's
operators when a network.json is present, anyone otherwise) and, like every role, validates and stores
``/iog/attest/1`` attestations and ``/iog/rewards/1`` manifests (:mod:`p2pnode.reward_topics`), so
``p2pnode rewards verify`` and ``p2pnode rewards earnings`` work on the provider's own home.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import trio

from .config import NodeConfig
from .identity import Identity
from .market.offers import OfferPublisher, offer_devices_from_config
from .net.node import PROVIDER, NetNode
from .store import Store
from .wire import Device

log = logging.getLogger(__name__)


class ProviderNode:
    """A provider: gossips its offer (devices from the compute capability unless given) and books everyone's."""

    def __init__(self, cfg: NodeConfig, *, identity: Identity | None = None, store: Store | None = None,
                 devices: Sequence[Device] | Callable[[], Sequence[Device]] | None = None,
                 jobs: bool | None = None, job_runner: Callable | None = None,
                 job_tamper: Callable | None = None, attest: bool = True,
                 attest_prover: Callable | None = None) -> None:
        self.cfg = cfg
        self.identity = identity or Identity.load(cfg.key_file)
        self._own_store = store is None
        self.store = store if store is not None else Store(cfg.db_file)
        if devices is None:
            detected = offer_devices_from_config(cfg)
            self._devices: Callable[[], Sequence[Device]] = lambda: detected
        elif callable(devices):
            self._devices = devices
        else:
            fixed = list(devices)
            self._devices = lambda: fixed
        self.net = NetNode(self.identity, cfg.net, PROVIDER, home=cfg.home)
        self.params = self._network_params()
        self.topics = None  # reward_topics.RewardTopics once running
        # answer capacity challenges (the network's operators only, when we know the network)
        self.attest = self._attest_server(attest_prover) if attest else None
        # the marketplace: jobs are served when the node knows its network (network.json), unless told otherwise
        self.jobs = self._job_service(jobs, job_runner, job_tamper)
        self.publisher = OfferPublisher(self.identity, self.store, cfg.offer, self._publish,
                                        self.jobs.offer_devices if self.jobs is not None else self._devices,
                                        self._offer_addrs, self._stake_account)
        self.nursery: trio.Nursery | None = None

    @classmethod
    @asynccontextmanager
    async def start(cls, cfg: NodeConfig, **kwargs) -> AsyncIterator["ProviderNode"]:
        node = cls(cfg, **kwargs)
        async with node.running():
            yield node

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    @property
    def book(self):
        return self.net.book

    def addrs(self) -> list[str]:
        return self.net.addrs()

    def _network_params(self):
        """network.json when the home has one (a node without it gossips offers only, as before)."""
        if not self.cfg.network_file.exists():
            return None
        from .chain.network import NetworkParams

        return NetworkParams.load(self.cfg.network_file)

    def _attest_server(self, prover_factory: Callable | None):
        from .compute.attest_service import AttestServer, operator_peer_ids

        operators = operator_peer_ids(self.params) if self.params is not None else None
        return AttestServer(self.identity, self._devices, operators=operators, store=self.store,
                            prover_factory=prover_factory, cpu_threads=self.cfg.compute.cpu_threads)

    def _job_service(self, enabled: bool | None, runner: Callable | None, tamper: Callable | None):
        if enabled is False or (enabled is None and not self.cfg.network_file.exists()):
            return None
        from .chain.network import NetworkParams
        from .chain.rpc import ChainClient
        from .market.provider_jobs import JobService

        params = self.params if self.params is not None else NetworkParams.load(self.cfg.network_file)
        self.chain = ChainClient(self.cfg.chain.rpc_url, timeout_s=self.cfg.chain.confirm_timeout_s)
        return JobService(self.identity, self.store, self.cfg, params, self.chain, list(self._devices()),
                          on_capacity=lambda: self.publisher.changed(), runner=runner, tamper=tamper)

    def _stake_account(self) -> str:
        if self.jobs is None:
            return ""
        from .chain.stake import stake_addresses

        return str(stake_addresses(self.identity.address).account)

    def _offer_addrs(self) -> list[str]:
        return self.net.addrs()

    async def _publish(self, topic: str, data: bytes) -> None:
        assert self.net.gossip is not None
        await self.net.gossip.publish(topic, data)

    @asynccontextmanager
    async def running(self) -> AsyncIterator["ProviderNode"]:
        try:
            async with self.net.running(), trio.open_nursery() as nursery:
                self.nursery = nursery
                from .reward_topics import subscribe_reward_topics

                self.topics = await subscribe_reward_topics(self.net.gossip, params=self.params, store=self.store)
                # Serve /iog/attest and /iog/job before the first offer announces us.
                if self.attest is not None:
                    await nursery.start(self.attest.run, self.net.host)
                if self.jobs is not None:
                    await nursery.start(self.jobs.run, self.net.host)
                    # an offer means a job can start now: no renter waits for (and pays for) the sandbox's torch
                    # import, seconds on a busy machine
                    try:
                        await self.jobs.warm()
                    except trio.TooSlowError:
                        log.warning("the job sandbox is not warm yet; offering anyway")
                # First offer once a seed peer is connected (or we gave up waiting), so it is not lost.
                with trio.move_on_after(self.cfg.net.dial_timeout_s):
                    await self.net.discovery.bootstrapped.wait()
                await nursery.start(self.publisher.run)
                nursery.start_soon(self._track_seq)
                try:
                    yield self
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self.nursery = None
            if self.jobs is not None:
                with trio.CancelScope(shield=True):
                    await self.chain.aclose()
            if self._own_store:
                self.store.close()

    async def _track_seq(self) -> None:
        while True:
            if self.publisher.current is not None:
                self.net.offer_seq = self.publisher.current.seq
            await trio.sleep(0.5)

    async def run(self) -> None:
        """Run until cancelled (Ctrl-C in the CLI)."""
        async with self.running():
            await trio.sleep_forever()
