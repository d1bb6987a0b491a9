"""`p2pnode devnet`: the whole network on one machine, on the embedded local chain, in one command.

What it starts (each a child process it owns and always stops, also on Ctrl-C or failure): the local chain
(``p2pnode localnet``), two bootstrap operators (``p2pnode bootstrap``; the first is the seed peer, both are the
network's arbiters and its slashing quorum, 2-of-2), and N providers (``p2pnode run``, CPU here). In this process it
runs genesis, hands IO to the providers from the launch treasury with the operators' quorum, stakes them, funds a
renter, then rents one verified, paid matmul job as a renter would and prints what happened with the balances
before and after. With ``--keep`` everything stays up for more ``p2pnode rent`` commands until Ctrl-C.

Every home lives under one folder (a temporary one unless ``--dir``): ``operators/``, ``provider-<i>/``,
``renter/``, ``ledger/``, and each process's log next to its home.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ..config import IO
from ..errors import UserError
from ..identity import Identity

_URL_RE = re.compile(r"(http://\S+)")
_P2P_RE = re.compile(r"(/ip4/127\.0\.0\.1/tcp/\d+/p2p/\S+)")
# what `p2pnode run` prints once the node is up and its first offer is out (not the log line at host start)
_LISTENING_RE = re.compile(r"^provider (\S+) listening on:$", re.M)

PROVIDER_PRICES = (36 * IO, 42 * IO, 48 * IO)  # IO base units per device-hour (36 IO/h = 0.01 IO/s)
PROVIDER_IO = 500 * IO
RENTER_IO = 1000 * IO
SOL = 10**9


class DevnetError(UserError):
    """A devnet step failed; the message says which and where its log is."""


@dataclass
class Child:
    name: str
    cmd: list[str]
    log: Path
    proc: subprocess.Popen | None = None
    since: int = 0  # where this run's output starts in the log (a restart appends to the same file)

    def start(self, cwd: Path) -> None:
        out = open(self.log, "ab")
        self.since = out.tell()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("P2PNODE_HOME", None)
        # a new session: Ctrl-C in the terminal reaches us only, and we stop the children in order
        self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=cwd, env=env, start_new_session=True)
        out.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 600) -> str:
        """The last `n` characters this run wrote (never an earlier run's lines)."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self.since)
                return f.read().decode(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        # the provider's sandbox workers live in their own sessions and die with their parent's pipes


async def wait_for_line(child: Child, pattern: re.Pattern, timeout_s: float) -> str:
    """The first match of `pattern` in the child's log (the child prints its address when ready)."""
    with trio.move_on_after(timeout_s):
        while True:
            m = pattern.search(child.tail(1 << 16))
            if m:
                return m.group(1)
            if not child.alive():
                raise DevnetError(f"{child.name} exited early; see {child.log}: {child.tail(300).strip()[-300:]}")
            await trio.sleep(0.05)
    raise DevnetError(f"{child.name} did not start within {timeout_s:g} s; see {child.log}")


@dataclass
class Devnet:
    root: Path
    providers: int = 3
    say: Callable[[str], None] = print
    children: list[Child] = field(default_factory=list)
    rpc_url: str = ""
    seed_addr: str = ""
    params: Any = None
    ops: list[Identity] = field(default_factory=list)
    provider_ids: list[Identity] = field(default_factory=list)
    renter_id: Identity | None = None
    # [market] settings every home gets: short enough that a devnet job pays while it runs and a dead peer is
    # noticed within seconds (tests shrink them further)
    market: dict[str, float] = field(default_factory=lambda: {"voucher_interval_s": 1.0, "request_timeout_s": 15.0,
                                                               "settle_retry_s": 2.0})
    compute: dict[str, Any] = field(default_factory=dict)  # [compute] settings of the providers' homes (benchmarks)

    def home(self, name: str) -> Path:
        return self.root / name

    def _spawn(self, name: str, *args: str) -> Child:
        child = Child(name, [sys.executable, "-m", "p2pnode", *args], self.root / f"{name}.log")
        self.children.append(child)
        child.start(self.root)
        return child

    def stop(self) -> None:
        """Stop every child, newest first (providers settle, then operators, then the chain)."""
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    def _write_home(self, name: str, ident: Identity, *, price: int = 0, bootstrap: str = "") -> Path:
        home = self.home(name)
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not (home / "identity.json").exists():
            ident.save(home / "identity.json")
        shutil.copy(self.root / "network.json", home / "network.json")
        lines = ["[net]", 'listen = ["/ip4/127.0.0.1/tcp/0"]']
        if bootstrap:
            lines.append(f'bootstrap = ["{bootstrap}"]')
        lines += ["", "[chain]", f'rpc_url = "{self.rpc_url}"', "", "[market]"]
        lines += [f"{k} = {v!r}" for k, v in self.market.items()]
        if price:
            lines += ["", "[offer]", f"price = {price}", "min_s = 1", "max_s = 3600", "republish_s = 30.0"]
            if self.compute:
                lines += ["", "[compute]"] + [f"{k} = {v!r}" for k, v in self.compute.items()]
        (home / "config.toml").write_text("\n".join(lines) + "\n")
        return home

    # --- the steps -----------------------------------------------------------------------------------------

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    async def start_chain(self) -> None:
        port = self.rpc_url.rsplit(":", 1)[1] if self.rpc_url else "0"  # a restart keeps the URL every home has
        child = self._spawn("localnet", "localnet", "--port", port, "--ledger", str(self.root / "ledger"), "--dev")
        self.rpc_url = await wait_for_line(child, _URL_RE, 60)
        self.say(f"chain      local chain (LiteSVM) at {self.rpc_url}")

    def stop_chain(self) -> None:
        """Stop the local chain (its ledger is kept; `start_chain` brings it back on the same URL)."""
        chain = self.child("localnet")
        chain.stop()
        self.children.remove(chain)

    def kill(self, name: str) -> None:
        """SIGKILL a child and everything in its session (a crash: nothing gets to flush or settle)."""
        child = self.child(name)
        if child.proc is not None:
            try:
                os.killpg(child.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child.proc.wait()
            child.proc = None
        self.children.remove(child)

    def restart_provider(self, i: int) -> Child:
        """Start provider-<i> again on its existing home (same key, same store)."""
        return self._spawn(f"provider-{i}", "run", "--home", str(self.home(f"provider-{i}")))

    async def genesis(self, client: Any) -> None:
        from solders.keypair import Keypair

        from ..chain.genesis import devnet_operator_keys, run_genesis

        self.ops = devnet_operator_keys(self.root / "operators", 2)
        deployer = Keypair()
        self.params, _ = await run_genesis(client, deployer, [o.solana_keypair().pubkey() for o in self.ops], 2,
                                           self.root / "network.json", escrow_grace_s=5)
        self.provider_ids = [Identity.generate() for _ in range(self.providers)]
        self.renter_id = Identity.generate()
        async with trio.open_nursery() as n:
            for ident in [*self.ops, *self.provider_ids, self.renter_id]:
                n.start_soon(client.airdrop, ident.solana_keypair().pubkey(), 2 * SOL)
        self.say(f"genesis    IO mint {self.params.mint}, operators' quorum {self.params.threshold}-of-"
                 f"{len(self.params.operators)}, fee {self.params.fee_bps} bps burned")

    async def start_operators(self) -> None:
        self._write_home("operator-1", self.ops[0])
        seed = self._spawn("operator-1", "bootstrap", "--home", str(self.home("operator-1")))
        self.seed_addr = await wait_for_line(seed, _P2P_RE, 60)
        self._write_home("operator-2", self.ops[1], bootstrap=self.seed_addr)
        self._spawn("operator-2", "bootstrap", "--home", str(self.home("operator-2")))
        self.say(f"operators  seed peer {self.seed_addr}")

    def start_providers(self) -> None:
        for i, ident in enumerate(self.provider_ids, 1):
            price = PROVIDER_PRICES[(i - 1) % len(PROVIDER_PRICES)]
            home = self._write_home(f"provider-{i}", ident, price=price, bootstrap=self.seed_addr)
            self._spawn(f"provider-{i}", "run", "--home", str(home))

    async def fund_and_stake(self, client: Any) -> None:
        from ..chain.stake import deposit, required_stake

        async def one(ident: Identity) -> None:
            await give_io(client, self.params, [o.solana_keypair() for o in self.ops], ident.address, PROVIDER_IO)
            await deposit(client, ident.solana_keypair(), self.params, required_stake(self.params, ["cpu"]))

        async with trio.open_nursery() as n:
            for ident in self.provider_ids:
                n.start_soon(one, ident)
            n.start_soon(give_io, client, self.params, [o.solana_keypair() for o in self.ops],
                         self.renter_id.address, RENTER_IO)
        from ..chain import token as tk

        stake = required_stake(self.params, ["cpu"])
        self.say(f"stake      {len(self.provider_ids)} providers staked {tk.format_io(stake)} IO each "
                 f"(cpu = {self.params.multiplier('cpu')}% of {tk.format_io(self.params.stake_per_device)} IO)")
        self.say(f"renter     {self.renter_id.address} funded with {tk.format_io(RENTER_IO)} IO")

    async def start(self, *, wait_providers: bool = True) -> None:
        """Chain, genesis, operators, providers, stakes and a funded renter key — everything `devnet` starts."""
        from ..chain.rpc import ChainClient

        await self.start_chain()
        async with ChainClient(self.rpc_url, timeout_s=20) as client:
            await self.genesis(client)
            await self.start_operators()
            self.start_providers()
            await self.fund_and_stake(client)
        if wait_providers:  # the address prints once /iog/job is served, the sandbox warm and the first offer out
            for i in range(1, self.providers + 1):
                await wait_for_line(self.child(f"provider-{i}"), _LISTENING_RE, 90)

    def renter_home(self) -> Path:
        assert self.renter_id is not None
        return self._write_home("renter", self.renter_id, bootstrap=self.seed_addr)


async def give_io(client: Any, params: Any, ops: list[Any], to: str, amount: int) -> None:
    """A quorum transfer from the launch treasury (how a devnet hands out test IO)."""
    from solders.message import Message
    from solders.transaction import Transaction

    from ..chain import token as tk
    from ..chain.multisig import sign_partial

    mint = tk.pubkey(params.mint)
    signers = ops[: params.threshold]
    owner = tk.pubkey(to)
    ixs = [tk.create_ata(signers[0].pubkey(), owner, mint),
           tk.transfer(tk.pubkey(params.treasury), mint, tk.ata(owner, mint), tk.pubkey(params.multisig), amount,
                       [s.pubkey() for s in signers])]
    bh = await client.latest_blockhash()
    await client.send(sign_partial(Transaction.new_unsigned(Message.new_with_blockhash(ixs, signers[0].pubkey(), bh)),
                                   *signers))


async def io_balance(client: Any, owner: str, mint: str) -> int:
    from ..chain import token as tk

    acc = await client.get_account(tk.ata(tk.pubkey(owner), tk.pubkey(mint)))
    return 0 if acc is None else tk.parse_token_account(acc.data).amount


def matmul_job(n: int, *, dtype: str = "fp32", batch: int = 1, seed: bytes | None = None):
    """A seed-derived matmul job (no input upload: both sides derive A and B from the seed)."""
    from ..compute.jobs import JobSpec
    from ..compute.jobs.matmul import MatmulSpec

    return JobSpec.make("matmul", MatmulSpec(dtype=dtype, batch=batch, m=n, k=n, n=n, source="seed",
                                             seed=seed or os.urandom(32)))


async def run_devnet(root: Path | None = None, *, keep: bool = False, providers: int = 3, n: int = 1024,
                     say: Callable[[str], None] = print, json_out: bool = False) -> dict[str, Any]:
    """The `p2pnode devnet` body; returns the summary (also printed). Children are always stopped on exit."""
    from ..chain import token as tk
    from ..chain.rpc import ChainClient
    from ..config import load_config
    from .renter_jobs import Renter
    from .reputation import Wanted

    t_start = time.perf_counter()
    own_tmp = root is None
    root = Path(tempfile.mkdtemp(prefix="p2pnode-devnet-")) if root is None else Path(root)
    root.mkdir(parents=True, exist_ok=True)
    net = Devnet(root, providers=providers, say=say)
    summary: dict[str, Any] = {"dir": str(root)}
    try:
        say(f"devnet     everything under {root}")
        await net.start(wait_providers=False)  # the renter below waits for their offers instead
        async with ChainClient(net.rpc_url, timeout_s=20) as client:
            rhome = net.renter_home()
            cfg = load_config(home=rhome)
            mint = net.params.mint
            watched = [net.renter_id.address] + [p.address for p in net.provider_ids]
            before = {a: await io_balance(client, a, mint) for a in watched}
            supply_before = tk.parse_mint((await client.get_account(tk.pubkey(mint))).data).supply
            renter = Renter(cfg, params=net.params, progress=lambda phase, text: say(f"rent       [{phase}] {text}"))
            async with renter.running():
                want = Wanted(max_price=max(PROVIDER_PRICES), max_s=120)
                with trio.move_on_after(60):
                    while len(await renter.wait_for_offers(want, count=providers, timeout=60)) < providers:
                        await trio.sleep(0.2)
                found = len(renter.book.offers())
                if found < providers:
                    raise DevnetError(f"only {found} of {providers} provider offers arrived; see "
                                      f"{root}/provider-*.log")
                say(f"network    {found} provider offers in the renter's book after "
                    f"{time.perf_counter() - t_start:.1f} s")
                outcome = await renter.rent(matmul_job(n), [], want)
            after = {a: await io_balance(client, a, mint) for a in watched}
            supply_after = tk.parse_mint((await client.get_account(tk.pubkey(mint))).data).supply
        summary.update(_summary(net, outcome, before, after, supply_before - supply_after, n))
        summary["seconds"] = round(time.perf_counter() - t_start, 2)
        _print_summary(summary, say)
        if keep:
            say("")
            say("the devnet keeps running; in another terminal rent more with:")
            say(f"  p2pnode rent --home {rhome} --kind matmul --n 2048")
            say(f"  p2pnode jobs --home {rhome}")
            say(f"  p2pnode offers --bootstrap {net.seed_addr}")
            say("press Ctrl-C to stop it")
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
        return summary
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(net.stop)
        if own_tmp and not keep:
            shutil.rmtree(root, ignore_errors=True)


def _summary(net: Devnet, outcome: Any, before: dict, after: dict, burned: int, n: int) -> dict[str, Any]:
    renter = net.renter_id.address
    prov_addr = next(p.address for p in net.provider_ids if p.peer_id == outcome.provider)
    return {
        "job": f"matmul {n}x{n}x{n} fp32 (seed-derived), verified by Freivalds",
        "provider": outcome.provider, "provider_address": prov_addr, "price_per_device_hour": outcome.price,
        "verified": outcome.verified, "verification": outcome.verdict, "job_seconds": round(outcome.seconds, 3),
        "deposit": outcome.deposit, "paid": outcome.paid, "fee_burned": outcome.fee, "refunded": outcome.refunded,
        "fund_tx": outcome.fund_sig, "settle_tx": outcome.settle_sig,
        "renter_io_before": before[renter], "renter_io_after": after[renter],
        "provider_io_before": before[prov_addr], "provider_io_after": after[prov_addr],
        "io_burned": burned, "timings_s": outcome.summary()["timings_s"],
        "attempts": [a.__dict__ for a in outcome.attempts],
    }


def _print_summary(s: dict[str, Any], say: Callable[[str], None]) -> None:
    from ..chain.token import format_io

    say("")
    say("== devnet job summary ==")
    say(f"job              {s['job']}")
    say(f"provider         {s['provider']} ({s['provider_address']})")
    say(f"price            {format_io(s['price_per_device_hour'])} IO per device-hour")
    say(f"verification     {'PASSED' if s['verified'] else 'FAILED'}: {s['verification']}")
    say(f"job time         {s['job_seconds']} s")
    say(f"escrow           deposit {format_io(s['deposit'])} IO; paid {format_io(s['paid'])} IO, fee burned "
        f"{format_io(s['fee_burned'])} IO, refunded {format_io(s['refunded'])} IO")
    say(f"transactions     fund {s['fund_tx']}")
    say(f"                 settle {s['settle_tx'] or '(pending)'}")
    say(f"renter IO        {format_io(s['renter_io_before'])} -> {format_io(s['renter_io_after'])}")
    say(f"provider IO      {format_io(s['provider_io_before'])} -> {format_io(s['provider_io_after'])}")
    say(f"IO supply burned {format_io(s['io_burned'])}")
    say(f"total            {s['seconds']} s")


__all__ = ["Devnet", "DevnetError", "give_io", "io_balance", "matmul_job", "run_devnet"]
