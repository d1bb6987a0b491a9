"""Distribution against the real localnet over HTTP: delegate allowance, batched v0 transfers, at-most-once."""

from __future__ import annotations

import pytest

from p2pnode.chain import token
from p2pnode.chain.rewards import RewardEntry, split
from p2pnode.chain.rewards_distribute import (
    AllowanceTooLow,
    Distributor,
    allowance,
    approve_allowance,
)
from p2pnode.store import Store


def make_alloc(epoch, payees, h, carry_in=0):
    inputs = [RewardEntry(address=a, amount=0, cls=1 + i % 5, issued=2, answered=1 + i % 2, stake=1, required=1)
              for i, a in enumerate(payees)]
    return split(epoch, emission=h_emission(epoch), carry_in=carry_in, inputs=inputs)


def h_emission(epoch):
    from p2pnode.chain.emission import hour_emission

    return hour_emission(epoch)


async def balances(rpc, pool, owners):
    from p2pnode.chain.rewards_distribute import _accounts

    atas = [token.ata(__import__("solders.pubkey", fromlist=["Pubkey"]).Pubkey.from_string(o), pool.mint)
            for o in owners]
    out = {}
    for o, acc in zip(owners, await _accounts(rpc, atas)):
        out[o] = 0 if acc is None else token.parse_token_account(bytes(acc.data)).amount
    return out


async def test_pay_epoch_batched_once(world, h, tmp_path):
    w = world
    await approve_allowance(w.rpc, w.pool, w.distributor.pubkey(), 10 * h_emission(0), w.operators[:2], w.payer)
    assert await allowance(w.rpc, w.pool, w.distributor.pubkey()) == 10 * h_emission(0)
    payees = [h.addr(i) for i in range(70)]
    alloc = make_alloc(0, payees, h)
    d = Distributor(w.rpc, Store(tmp_path / "op.db"), w.distributor, w.pool)
    res = await d.pay(alloc)
    assert res.transfers == 70 and res.amount == h_emission(0)
    got = await balances(w.rpc, w.pool, payees)
    assert got == {e.address: e.amount for e in alloc.entries}
    n_batches = d.store.query("SELECT batches FROM reward_epochs WHERE epoch = 0")[0][0]
    assert 2 <= n_batches <= 3  # ~50 transfers fit one v0 transaction
    # paying again is a no-op
    again = await d.pay(alloc)
    assert again.transactions == 0
    assert await balances(w.rpc, w.pool, payees) == got
    assert await allowance(w.rpc, w.pool, w.distributor.pubkey()) == 9 * h_emission(0)


async def test_distributor_cannot_spend_without_quorum_approval(world, h, tmp_path):
    w = world
    d = Distributor(w.rpc, Store(tmp_path / "op.db"), w.distributor, w.pool)
    with pytest.raises(AllowanceTooLow):
        await d.pay(make_alloc(0, [h.addr(1)], h))
    # one operator alone cannot approve a 2-of-3 multisig's delegate
    from p2pnode.chain.rewards_distribute import DistributionError

    with pytest.raises(DistributionError):
        await approve_allowance(w.rpc, w.pool, w.distributor.pubkey(), 10**12, w.operators[:1], w.payer)
    assert await allowance(w.rpc, w.pool, w.distributor.pubkey()) == 0


class Crash(Exception):
    pass


async def test_crash_mid_distribution_then_restart_pays_each_entry_once(world, h, tmp_path):
    w = world
    await approve_allowance(w.rpc, w.pool, w.distributor.pubkey(), 10 * h_emission(0), w.operators[1:], w.payer)
    payees = [h.addr(i) for i in range(120)]
    alloc = make_alloc(3, payees, h)
    db = tmp_path / "op.db"

    class CrashAfterSend(Distributor):
        """Dies after batch 1 was committed and *sent*, before it saw the confirmation."""

        async def _before_send_hook(self, epoch, batch):
            if batch == 1:
                self.crash_next = True

    d1 = CrashAfterSend(w.rpc, Store(db), w.distributor, w.pool)
    d1.crash_next = False
    from p2pnode.chain import rewards_distribute as rd

    real_send = rd._send

    async def send_then_crash(rpc, raw):
        await real_send(rpc, raw)
        if d1.crash_next:
            raise Crash()

    rd._send = send_then_crash
    try:
        with pytest.raises(Crash):
            await d1.pay(alloc)
    finally:
        rd._send = real_send
    d1.store.close()
    statuses = Store(db).query("SELECT batch, status FROM reward_batches WHERE epoch = 3 ORDER BY batch")
    assert [tuple(r) for r in statuses][:2] == [(0, "done"), (1, "sent")]

    # restart: a new process with the same database and key
    d2 = Distributor(w.rpc, Store(db), w.distributor, w.pool)
    await d2.pay(alloc)
    got = await balances(w.rpc, w.pool, payees)
    assert got == {e.address: e.amount for e in alloc.entries}  # each exactly once, none doubled
    assert await allowance(w.rpc, w.pool, w.distributor.pubkey()) == 10 * h_emission(0) - alloc.paid


async def test_crash_before_send_resends_the_same_transaction(world, h, tmp_path):
    w = world
    await approve_allowance(w.rpc, w.pool, w.distributor.pubkey(), 10 * h_emission(0), w.operators[:2], w.payer)
    payees = [h.addr(i) for i in range(5)]
    alloc = make_alloc(1, payees, h)
    db = tmp_path / "op.db"

    class CrashBeforeSend(Distributor):
        async def _before_send_hook(self, epoch, batch):
            raise Crash()

    with pytest.raises(Crash):
        await CrashBeforeSend(w.rpc, Store(db), w.distributor, w.pool).pay(alloc)
    assert (await balances(w.rpc, w.pool, payees)) == {a: 0 for a in payees}
    stored = Store(db).query("SELECT signature FROM reward_batches WHERE epoch = 1")[0][0]
    d = Distributor(w.rpc, Store(db), w.distributor, w.pool)
    await d.pay(alloc)
    assert await balances(w.rpc, w.pool, payees) == {e.address: e.amount for e in alloc.entries}
    # the blockhash was still valid, so the very same bytes were sent (no second transaction could exist)
    assert d.store.query("SELECT signature FROM reward_batches WHERE epoch = 1")[0][0] == stored


async def test_missed_epochs_caught_up_in_order(world, h, tmp_path):
    w = world
    await approve_allowance(w.rpc, w.pool, w.distributor.pubkey(), 10 * h_emission(0), w.operators[:2], w.payer)
    payees = [h.addr(i) for i in range(4)]
    allocs = [make_alloc(e, payees, h) for e in (5, 6, 7)]
    d = Distributor(w.rpc, Store(tmp_path / "op.db"), w.distributor, w.pool)
    order = []
    real_pay = d.pay

    async def spy(alloc):
        order.append(alloc.epoch)
        return await real_pay(alloc)

    d.pay = spy
    await d.pay_pending(list(reversed(allocs)))
    assert order == [5, 6, 7]
    assert d.last_paid_epoch() == 7
    want = {a: sum(x.amount for al in allocs for x in al.entries if x.address == a) for a in payees}
    assert await balances(w.rpc, w.pool, payees) == want
    await d.pay_pending(allocs)  # already paid: nothing moves
    assert await balances(w.rpc, w.pool, payees) == want
