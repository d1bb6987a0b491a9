"""`p2pnode` sub-commands of the compute capability; registered on the shared Typer app."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ..errors import UserError
from .app import ConfigOpt, HomeOpt, JsonOpt, app, node_config, run_trio



@app.command()
def devices(home: HomeOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """List the devices this node can rent out and whether jobs are network-isolated."""
    from ..compute.devices import detect_devices
    from ..compute.sandbox import isolation_available

    cfg = node_config(home, config) if home is not None else None
    limit = cfg.compute.max_memory_bytes if cfg else 0
    found = detect_devices(limit)
    isolated = isolation_available()
    if json_out:
        typer.echo(json.dumps({"devices": [d.__dict__ for d in found], "network_isolated": isolated}))
        return
    for d in found:
        typer.echo(d.describe())
    typer.echo("jobs network-isolated: " + ("yes (unshare --net --map-root-user)" if isolated else
                                            "NO (this kernel does not allow unprivileged user namespaces)"))


@app.command()
def attest(
    self_: Annotated[bool, typer.Option("--self", help="Run prover and verifier locally.")] = False,
    device: Annotated[str, typer.Option(help="torch device to attest (cpu, cuda:0, ...).")] = "cpu",
    seconds: Annotated[float, typer.Option(help="Target duration of the challenge.")] = 3.0,
    json_out: JsonOpt = False,
) -> None:
    """Capacity attestation; `--self` measures this machine's TFLOPS with the real challenge."""
    if not self_:
        raise UserError("attest: only --self is available from the command line; peers are attested by the node")
    if not 0.2 <= seconds <= 600:
        raise UserError("attest: --seconds must be between 0.2 and 600")
    from ..compute.attest import attest_self

    out = run_trio(lambda: attest_self(device, target_s=seconds))
    a = out.attestation
    if json_out:
        typer.echo(json.dumps({"passed": a.passed, "tflops": a.tflops, "n": a.n, "steps": a.steps,
                               "elapsed_s": out.elapsed_s, "reason": a.reason}))
    else:
        typer.echo(f"{'PASSED' if a.passed else 'FAILED'}: {a.tflops:.4f} TFLOPS on {device} "
                   f"(n={a.n}, {a.steps} steps in {out.elapsed_s:.2f} s; {a.reason})")
    if not a.passed:
        raise typer.Exit(1)
