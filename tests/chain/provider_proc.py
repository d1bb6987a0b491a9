"""A provider process for the crash test: accept a voucher durably, then hang (killed with SIGKILL), or settle.

Usage: provider_proc.py accept DB AGREEMENT_FILE VOUCHER_FILE
       provider_proc.py settle DB KEY_FILE RPC_URL
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main() -> None:
    from p2pnode.chain import escrow as E
    from p2pnode.store import Store

    mode, db = sys.argv[1], sys.argv[2]
    store = Store(db)
    if mode == "accept":
        a = E.Agreement.decode(Path(sys.argv[3]).read_bytes())
        v = E.Voucher.decode_body(Path(sys.argv[4]).read_bytes())
        E.record_agreement(store, a, "provider")
        cum = E.accept_voucher(store, v)
        print(f"ACCEPTED {cum}", flush=True)  # acknowledged only after the store committed it
        time.sleep(120)  # "working" — the test kills us here
    elif mode == "settle":
        import trio

        from p2pnode.chain.rpc import ChainClient
        from p2pnode.identity import Identity

        kp = Identity.load(Path(sys.argv[3])).solana_keypair()

        async def run() -> None:
            async with ChainClient(sys.argv[4], timeout_s=20) as client:
                for job_id, result in await E.settle_pending(client, store, kp):
                    print(f"SETTLED {job_id.hex()} {result}", flush=True)

        trio.run(run)


if __name__ == "__main__":
    main()
