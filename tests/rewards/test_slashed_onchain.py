"""`not slashed` comes from the chain: a quorum slashing that landed during the epoch excludes the provider (even
with enough stake left), a look-alike memo that moves nothing out of the stake account does not; and `rewards
verify` does not take the manifest's word for who was slashed."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

from solders.keypair import Keypair
from solders.message import Message
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction

sys.path.insert(0, str(Path(__file__).parents[1] / "chain"))  # importlib mode: the chain tests' helpers
from economy_helpers import give_io, make_network  # noqa: E402

from p2pnode.chain import stake as S  # noqa: E402
from p2pnode.chain import token as tk  # noqa: E402
from p2pnode.chain.multisig import decode_tx, merge  # noqa: E402
from p2pnode.chain.rewards import EpochClock, Excluded, address_key, split  # noqa: E402
from p2pnode.chain.rewards_inputs import compute_allocation, record_manifest  # noqa: E402
from p2pnode.chain.rewards_manifest import RewardsManifest, sign_manifest  # noqa: E402
from p2pnode.chain.rpc import ChainClient  # noqa: E402
from p2pnode.cli.rewards import verify_epoch  # noqa: E402
from p2pnode.compute.attest import Attestation, record_attestation  # noqa: E402
from p2pnode.identity import Identity  # noqa: E402
from p2pnode.store import Store  # noqa: E402
from p2pnode.wire import Device, open_envelope, seal  # noqa: E402


async def test_slashing_on_chain_excludes_and_lookalike_memo_does_not(localnet, tmp_path):
    async with ChainClient(localnet.url) as client:
        params, ops = await make_network(client, tmp_path, operators=3, threshold=2, epoch_s=3600)
        op = Identity.load(tmp_path / "operators" / "operator-1.json")
        device = Device(kind="cpu", name="cpu", mem_bytes=2**30)
        need = S.required_stake(params, [device])
        honest, slashed, griefed = (Identity.generate() for _ in range(3))
        store = Store(tmp_path / "op.db")
        now = int(time.time())
        for p in (honest, slashed, griefed):
            kp = p.solana_keypair()
            await client.airdrop(kp.pubkey(), 10**9)
            await give_io(client, params, ops, kp, 3 * need)
            await S.deposit(client, kp, params, 2 * need)  # slashing 1 IO leaves more than required
            att = Attestation(provider=p.peer_id, device=device, device_index=0, tflops=1.0,
                              challenge=hashlib.sha256(p.address.encode()).digest(), passed=True,
                              verifier=op.peer_id, time=now)
            record_attestation(store, open_envelope(seal(att, op), Attestation))
        clock = EpochClock(params.genesis_time, params.epoch_s)
        epoch = clock.epoch_at(now)
        # the quorum slashes one provider (evidence hash in the memo)
        evidence = hashlib.sha256(b"forged fingerprints").digest()
        quorum = [o.pubkey() for o in ops[:2]]
        unsigned = await S.build_slash(client, params, slashed.solana_keypair().pubkey(), 10**8, evidence, quorum)
        await client.send(merge([decode_tx(S.cosign_slash(o, params, slashed.solana_keypair().pubkey(), 10**8,
                                                          evidence, unsigned)) for o in ops[:2]]))
        # a griefer writes the same kind of memo into the other provider's stake-account history (1 lamport in)
        griefer = Keypair()
        await client.airdrop(griefer.pubkey(), 10**9)
        victim = S.stake_addresses(griefed.solana_keypair().pubkey()).account
        ixs = [transfer(TransferParams(from_pubkey=griefer.pubkey(), to_pubkey=victim, lamports=1)),
               tk.memo(f"{S.SLASH_MEMO} {griefed.address} {evidence.hex()}")]
        await client.send(Transaction([griefer], Message.new_with_blockhash(ixs, griefer.pubkey(),
                                                                            await client.latest_blockhash()),
                                      await client.latest_blockhash()))
        assert clock.epoch_at(time.time()) == epoch, "the test straddled an epoch boundary"
        assert await S.stake_of(client, params, slashed.address) >= need  # still staked enough

        alloc = await compute_allocation(store, client, params, epoch, carry_in=0)
        assert {x.address: x.reason for x in alloc.excluded} == {slashed.address: "slashed"}
        assert {e.address for e in alloc.entries} == {honest.address, griefed.address}
        # the next epoch is governed by the remaining stake again: the slashing is not seen there
        later = await compute_allocation(store, client, params, epoch + 1, carry_in=0)
        assert later.excluded == ()

        # an operator manifest that calls the griefed provider "slashed" is a mismatch for `rewards verify`
        excluded = sorted([*alloc.excluded, Excluded(address=griefed.address, reason="slashed")],
                          key=lambda x: address_key(x.address))
        forged = split(epoch, emission=alloc.emission, carry_in=0,
                       inputs=[e for e in alloc.entries if e.address == honest.address], excluded=excluded)
        node = Store(tmp_path / "node.db")
        for (raw,) in store.query("SELECT envelope FROM attestations"):
            record_attestation(node, open_envelope(bytes(raw), Attestation))
        record_manifest(node, open_envelope(sign_manifest(forged, op, pool=params.rewards_pool, epoch_s=3600,
                                                          created_at=now), RewardsManifest))
        res = await verify_epoch(node, client, params, epoch)
        assert not res["match"], res
        assert griefed.address in {d["address"] for d in res["differences"]}, (res, griefed.address)
