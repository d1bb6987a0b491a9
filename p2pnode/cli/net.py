"""`p2pnode init | run | bootstrap | offers | status` — the net capability's sub-commands.

Every flag has a TOML twin (``[net] listen / bootstrap / announce``, ``[offer] price / ...``); a flag given on the
command line wins over the file. libp2p, trio and torch are imported inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import ConfigError
from ..identity import Identity, KeyFileError
from .app import DEFAULT_HOME_PATH, ConfigOpt, HomeOpt, JsonOpt, app, node_config, run_trio

ListenOpt = Annotated[list[str] | None, typer.Option("--listen", help="Multiaddr to listen on (repeatable); "
                                                     "[net] listen.")]
BootstrapOpt = Annotated[list[str] | None, typer.Option("--bootstrap", help="Seed peer /p2p/ multiaddr "
                                                        "(repeatable); [net] bootstrap.")]
AnnounceOpt = Annotated[list[str] | None, typer.Option("--announce", help="External address to advertise "
                                                       "(repeatable); [net] announce.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log libp2p internals too.")]


def setup_logging(verbose: bool = False) -> None:
    """Our own events at INFO (joins, offers, rejections); py-libp2p's chatter only with --verbose."""
    import libp2p  # noqa: F401  (its import resets the "libp2p" logger level, so import it before setting ours)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", force=True)
    logging.getLogger("libp2p").setLevel(logging.INFO if verbose else logging.CRITICAL)
    for noisy in ("multiaddr", "zeroconf", "httpx", "httpx2", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def price_limit(text: str) -> int | None:
    """A --max-price / [client] max_price in IO ("2.5") as base units; "" means no limit."""
    if not text:
        return None
    from ..chain.token import AmountError, parse_amount

    try:
        return parse_amount(text)
    except AmountError as exc:
        raise ConfigError(f"max price: {exc}") from None


def _net_overrides(listen, bootstrap, announce) -> dict[str, Any]:
    return {"listen": listen, "bootstrap": bootstrap, "announce": announce}


@app.command()
def init(home: HomeOpt = DEFAULT_HOME_PATH,
         key: Annotated[Path | None, typer.Option("--key", help="Import this Solana CLI key file "
                                                  "instead of generating a new key.")] = None) -> None:
    """Create the node home with its one Ed25519 key (libp2p PeerID and Solana keypair, mode 0600)."""
    home = home.expanduser()
    key_file = home / "identity.json"
    if key_file.exists():
        raise KeyFileError(f"{key_file}: a key file already exists; refusing to overwrite it (use another --home)")
    ident = Identity.load(key.expanduser()) if key is not None else Identity.generate()
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    ident.save(key_file)
    config = home / "config.toml"
    if not config.exists():
        config.write_text(EXAMPLE_CONFIG)
    typer.echo(f"home      {home}")
    typer.echo(f"key file  {key_file} ({'imported from ' + str(key) if key else 'new'})")
    typer.echo(f"peer id   {ident.peer_id}")
    typer.echo(f"address   {ident.address}")


EXAMPLE_CONFIG = """\
# p2pnode configuration; every command-line flag can be set here instead.
[net]
listen = ["/ip4/0.0.0.0/tcp/4001"]
# announce = ["/ip4/203.0.113.7/tcp/4001"]   # your public address if behind NAT with a port forward
bootstrap = []                               # seed peers: "/ip4/.../tcp/4001/p2p/12D3KooW..."

[offer]
# price = 200000000      # IO base units (1e-8 IO) per device-hour
# republish_s = 60.0
# ttl_s = 300
"""


@app.command()
def run(home: HomeOpt = DEFAULT_HOME_PATH, config: ConfigOpt = None, listen: ListenOpt = None,
        bootstrap: BootstrapOpt = None, announce: AnnounceOpt = None,
        price: Annotated[int | None, typer.Option("--price", help="IO base units per device-hour; "
                                                  "[offer] price.")] = None,
        verbose: VerboseOpt = False) -> None:
    """Run a provider node until interrupted: gossip our offer, keep the offer book, answer status."""
    cfg = node_config(home, config, net=_net_overrides(listen, bootstrap, announce), offer={"price": price},
                      client={"verbose": verbose or None})
    setup_logging(cfg.client.verbose)
    from ..provider import ProviderNode

    node = ProviderNode(cfg)  # loads the key first: a key problem is a one-line error before any network work

    async def main() -> None:
        async with node.running():
            typer.echo(f"provider {node.peer_id} listening on:", err=True)
            for a in node.addrs():
                typer.echo(f"  {a}", err=True)
            await until_stopped()

    run_trio(main)


async def until_stopped() -> None:
    """Sleep until SIGTERM (systemd, docker stop) or SIGINT; both unwind the node cleanly (hosts closed)."""
    import signal

    import trio

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for sig in signals:
            logging.getLogger("p2pnode").info("stopping on %s", signal.Signals(sig).name)
            return


@app.command("bootstrap")
def bootstrap_cmd(home: HomeOpt = DEFAULT_HOME_PATH, config: ConfigOpt = None, listen: ListenOpt = None,
                  announce: AnnounceOpt = None, bootstrap: BootstrapOpt = None, verbose: VerboseOpt = False) -> None:
    """Run a seed peer: stable identity (created on first start), fixed port, DHT server, gossip relay."""
    cfg = node_config(home, config, net=_net_overrides(listen, bootstrap, announce),
                      client={"verbose": verbose or None})
    setup_logging(cfg.client.verbose)
    if not cfg.key_file.exists():
        ident = Identity.generate()
        ident.save(cfg.key_file)
        typer.echo(f"created seed identity {ident.peer_id} in {cfg.key_file}", err=True)
    from ..operator import BootstrapNode

    node = BootstrapNode(cfg)

    async def main() -> None:
        async with node.running():
            typer.echo("seed peer running; give others one of these addresses:", err=True)
            for a in node.addrs():
                typer.echo(a)
            sys.stdout.flush()
            await until_stopped()

    run_trio(main)


def _offer_rows(offers) -> list[dict[str, Any]]:
    now = time.time()
    rows = []
    for o in offers:
        rows.append({
            "peer_id": o.peer_id, "payout": o.payout, "price": o.price, "min_s": o.min_s, "max_s": o.max_s,
            "seq": o.seq, "expires_in_s": int(o.expires_at - now), "stake": o.stake, "addrs": o.addrs,
            "devices": [{"kind": d.kind, "name": d.name, "mem_bytes": d.mem_bytes, "tflops": d.tflops,
                         "attested_at": d.attested_at, "attested_by": d.attested_by} for d in o.devices],
        })
    return rows


@app.command()
def offers(home: HomeOpt = DEFAULT_HOME_PATH, config: ConfigOpt = None, bootstrap: BootstrapOpt = None,
           json_out: JsonOpt = False,
           wait: Annotated[float | None, typer.Option("--wait", help="Seconds to wait for the book to settle; "
                                                      "[client] wait_s (5).")] = None,
           kind: Annotated[str | None, typer.Option("--kind", help="Only devices of this kind (cuda|cpu); "
                                                    "[client] device_kind.")] = None,
           max_price: Annotated[str | None, typer.Option("--max-price", help="Only offers of at most this many IO "
                                                         "per device-hour; [client] max_price.")] = None,
           verbose: VerboseOpt = False) -> None:
    """Join as a light client, wait until the offer book settles, print the live offers."""
    cfg = node_config(home, config, net={"bootstrap": bootstrap, "listen": ["/ip4/0.0.0.0/tcp/0"]},
                      client={"wait_s": wait, "device_kind": kind, "max_price": max_price, "verbose": verbose or None})
    setup_logging(cfg.client.verbose)
    if not cfg.client.verbose:
        logging.getLogger("p2pnode").setLevel(logging.WARNING)
    wait, kind = cfg.client.wait_s, cfg.client.device_kind or None
    price_cap = price_limit(cfg.client.max_price)
    from ..renter import LightClient

    client = LightClient(cfg.net)

    async def main():
        async with client.running():
            joined = await client.wait_joined(min(wait, cfg.net.dial_timeout_s))
            if not joined:
                raise ConfigError(f"could not reach any seed peer ({', '.join(cfg.net.bootstrap)}); "
                                  "check the address and that the seed is running")
            await client.book.settle(quiet_s=min(1.0, wait), timeout=wait)
            return client.book.query(kind=kind, max_price=price_cap)

    found = run_trio(main)
    rows = _offer_rows(found)
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no live offers")
        return
    typer.echo(f"{'PEER':<54} {'DEVICES':<40} {'PRICE/dev-h':>14} {'JOB s':>13} {'EXPIRES':>7}")
    for r in rows:
        devs = ", ".join(f"{d['kind']}:{d['name'][:24]} {d['mem_bytes'] / 2**30:.0f}GiB" for d in r["devices"])
        typer.echo(f"{r['peer_id']:<54} {devs[:40]:<40} {r['price']:>14} {r['min_s']:>6}-{r['max_s']:<6} "
                   f"{r['expires_in_s']:>6}s")


@app.command()
def status(home: HomeOpt = DEFAULT_HOME_PATH, config: ConfigOpt = None, json_out: JsonOpt = False,
           timeout: Annotated[float | None, typer.Option("--timeout", help="Seconds to wait for the answer; "
                                                         "[client] status_timeout_s (10).")] = None,
           verbose: VerboseOpt = False) -> None:
    """Ask the node running from this home for its PeerID, addresses, peers and offer book (/iog/status/1.0.0)."""
    from ..net.node import RUNTIME_FILE

    cfg = node_config(home, config, client={"status_timeout_s": timeout, "verbose": verbose or None})
    timeout, verbose = cfg.client.status_timeout_s, cfg.client.verbose
    setup_logging(verbose)
    logging.getLogger("p2pnode").setLevel(logging.INFO if verbose else logging.WARNING)
    runtime = home.expanduser() / RUNTIME_FILE
    try:
        info = json.loads(runtime.read_text())
        peer = info["peer_id"]
        addrs = [a for a in info["addrs"] if isinstance(a, str)]
    except FileNotFoundError:
        raise ConfigError(f"{runtime}: no node is running from {home} (start one with `p2pnode run --home {home}`)")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{runtime}: unreadable ({exc}); delete it and restart the node")

    async def main():
        import trio

        from ..net.host import HostSettings, peer_info, running_host
        from ..net.status import query_status

        def local(a: str) -> str:
            return a.replace("/ip4/0.0.0.0/", "/ip4/127.0.0.1/")

        async with running_host(Identity.generate(), HostSettings(listen=["/ip4/127.0.0.1/tcp/0"])) as host:
            last: Exception | None = None
            for a in addrs:
                try:
                    target = peer_info(f"{local(a)}/p2p/{peer}")
                    with trio.fail_after(timeout):
                        await host.connect(target)
                    signed, _ = await query_status(host, target.peer_id, Identity.generate(), timeout=timeout)
                    return signed.message
                except Exception as exc:
                    last = exc
            raise ConfigError(f"the node {peer} from {runtime} does not answer on {', '.join(addrs)} "
                              f"({type(last).__name__ if last else 'no address'}); is it still running?")

    st = run_trio(main)
    data = {"peer_id": st.peer_id, "role": st.role, "version": st.version, "addrs": st.addrs,
            "peers": st.peers, "offers_in_book": st.offers, "rejected_messages": st.rejected,
            "uptime_s": round(st.uptime_s, 1), "dht_routing_table": st.routing_table, "offer_seq": st.offer_seq}
    if json_out:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(f"peer id        {st.peer_id} ({st.role}, p2pnode {st.version})")
    typer.echo(f"uptime         {st.uptime_s:.0f} s")
    typer.echo("addresses      " + ("\n               ".join(st.addrs) or "-"))
    typer.echo(f"peers          {len(st.peers)} connected")
    typer.echo(f"offers in book {st.offers}")
    typer.echo(f"our offer seq  {st.offer_seq}")
    typer.echo(f"rejected msgs  {st.rejected}")
    typer.echo(f"DHT table      {st.routing_table} peers")
