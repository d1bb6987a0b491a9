"""A renter in its own process (so a test can SIGKILL it mid-job): rents one long attest job from <home>.

    python tests/market/renter_proc.py HOME STEPS
Prints "job <hex>" when the agreement is stored and "done" at the end.
"""

from __future__ import annotations

import os
import sys

import trio

from p2pnode.compute.jobs import JobSpec
from p2pnode.compute.jobs.attest_job import AttestSpec
from p2pnode.config import load_config
from p2pnode.market.renter_jobs import Renter
from p2pnode.market.reputation import Wanted


def attest_job(steps: int) -> JobSpec:
    return JobSpec.make("attest", AttestSpec(seed=os.urandom(32), n=256, b=64, steps=steps))


async def main(home: str, steps: int) -> None:
    def progress(phase: str, text: str) -> None:
        print(phase, text, flush=True)

    renter = Renter(load_config(home=home), progress=progress)
    async with renter.running(background_refunds=False):
        await renter.rent(attest_job(steps), [], Wanted(max_s=120))
    print("done", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
