"""A batch whose stored transaction expired without landing is rebuilt (new blockhash), and still paid once.

Uses a localnet with 10 ms slots so a blockhash expires (150 slots) in a couple of seconds.
"""

from __future__ import annotations

import pytest
import trio

from p2pnode.chain.emission import hour_emission
from p2pnode.chain.rewards import RewardEntry, split
from p2pnode.chain.rewards_distribute import Distributor, _accounts, _block_height, approve_allowance
from p2pnode.chain import token
from p2pnode.store import Store


@pytest.fixture
async def localnet(nursery):
    from p2pnode.chain.localnet import LocalnetServer

    server = LocalnetServer(host="127.0.0.1", port=0, slot_s=0.01)
    await nursery.start(server.serve)
    return server


class Crash(Exception):
    pass


async def test_expired_unsent_batch_is_rebuilt_and_paid_once(world, h, tmp_path):
    w = world
    await approve_allowance(w.rpc, w.pool, w.distributor.pubkey(), 10 * hour_emission(2), w.operators[:2], w.payer)
    payees = [h.addr(i) for i in range(3)]
    alloc = split(2, emission=hour_emission(2), carry_in=0,
                  inputs=[RewardEntry(address=a, amount=0, cls=1, issued=1, answered=1, stake=0, required=0)
                          for a in payees])
    db = tmp_path / "op.db"

    class CrashBeforeSend(Distributor):
        async def _before_send_hook(self, epoch, batch):
            raise Crash()

    with pytest.raises(Crash):
        await CrashBeforeSend(w.rpc, Store(db), w.distributor, w.pool).pay(alloc)
    (old_sig, last_valid), = [tuple(r) for r in Store(db).query(
        "SELECT signature, last_valid FROM reward_batches WHERE epoch = 2")]
    with trio.fail_after(30):
        while await _block_height(w.rpc) <= last_valid:
            await trio.sleep(0.1)
    d = Distributor(w.rpc, Store(db), w.distributor, w.pool)
    await d.pay(alloc)
    new_sig = d.store.query("SELECT signature FROM reward_batches WHERE epoch = 2")[0][0]
    assert new_sig != old_sig  # rebuilt with a fresh blockhash only because the old one can never land
    accs = await _accounts(w.rpc, [token.ata(__import__("solders.pubkey", fromlist=["x"]).Pubkey.from_string(a),
                                             w.pool.mint) for a in payees])
    got = {a: token.parse_token_account(bytes(acc.data)).amount for a, acc in zip(payees, accs)}
    assert got == {e.address: e.amount for e in alloc.entries}
