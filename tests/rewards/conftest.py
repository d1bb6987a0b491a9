"""Fixtures for the rewards tests: deterministic provider identities and observation builders."""

from __future__ import annotations

import hashlib
import os

import pytest

from p2pnode.chain.rewards import EpochClock, Observation, StakeState
from p2pnode.chain.network import NetworkParams
from p2pnode.compute.attest import Attestation, record_attestation
from p2pnode.identity import Identity
from p2pnode.wire import Device, open_envelope, seal


def ident(i: int) -> Identity:
    """A deterministic identity per index (tests must be reproducible)."""
    return Identity(hashlib.sha256(b"rewards-test-%d" % i).digest())


def addr(i: int) -> str:
    return ident(i).address


def obs(provider: str, *, at: int, passed: bool = True, tflops_milli: int = 1000, device: str = "cpu0",
        n: int = 0) -> Observation:
    return Observation(provider=provider, device=device, passed=passed, tflops_milli=tflops_milli, at=at,
                       challenge=hashlib.sha256(f"{provider}/{at}/{n}/{device}".encode()).digest())


@pytest.fixture
def clock() -> EpochClock:
    return EpochClock(genesis_time=1_700_000_000, epoch_s=3600)


STAKED = StakeState(stake=200 * 10**8, required=200 * 10**8)


class _Helpers:
    ident = staticmethod(ident)
    addr = staticmethod(addr)
    obs = staticmethod(obs)
    STAKED = STAKED


@pytest.fixture(scope="session")
def h() -> type[_Helpers]:
    """The helpers above as a fixture (importlib mode: test modules cannot import conftest)."""
    return _Helpers


# --- a real localnet (LiteSVM behind JSON-RPC over HTTP) with an IO mint and a multisig-owned rewards pool -----

from dataclasses import dataclass as _dataclass  # noqa: E402


@_dataclass
class PoolWorld:
    """What a distribution test needs: RPC, the pool, the operators' keys (local on a devnet) and a distributor."""

    url: str
    rpc: object
    pool: object  # rewards_distribute.Pool
    operators: list
    threshold: int
    payer: object  # funds set-up transactions
    distributor: object  # Keypair


async def _airdrop(rpc, key, lamports):
    from p2pnode.chain.rewards_distribute import _confirm

    sig = (await rpc.request_airdrop(key, lamports)).value
    assert await _confirm(rpc, sig, timeout_s=20)


@pytest.fixture
async def localnet(nursery):
    from p2pnode.chain.localnet import LocalnetServer

    server = LocalnetServer(host="127.0.0.1", port=0)
    await nursery.start(server.serve)
    return server


@pytest.fixture
async def world(localnet):
    from solana.rpc.async_api import AsyncClient
    from solders.keypair import Keypair
    from solders.system_program import CreateAccountParams, create_account
    from spl.token.constants import ACCOUNT_LEN, MINT_LEN, MULTISIG_LEN, TOKEN_PROGRAM_ID

    from p2pnode.chain import token
    from p2pnode.chain.rewards_distribute import Pool, submit

    rpc = AsyncClient(localnet.url, timeout=30)
    payer, distributor = Keypair(), Keypair()
    operators = [Keypair() for _ in range(3)]
    await _airdrop(rpc, payer.pubkey(), 100 * 10**9)
    await _airdrop(rpc, distributor.pubkey(), 100 * 10**9)
    mint, ms, pool = Keypair(), Keypair(), Keypair()

    async def rent(n):
        return (await rpc.get_minimum_balance_for_rent_exemption(n)).value

    def create(acc, space, lamports):
        return create_account(CreateAccountParams(from_pubkey=payer.pubkey(), to_pubkey=acc.pubkey(),
                                                  lamports=lamports, space=space, owner=TOKEN_PROGRAM_ID))

    await submit(rpc, payer, [
        create(mint, MINT_LEN, await rent(MINT_LEN)), token.init_mint(mint.pubkey(), payer.pubkey()),
        create(ms, MULTISIG_LEN, await rent(MULTISIG_LEN)),
        token.init_multisig(ms.pubkey(), [k.pubkey() for k in operators], 2),
        create(pool, ACCOUNT_LEN, await rent(ACCOUNT_LEN)),
        token.init_token_account(pool.pubkey(), mint.pubkey(), ms.pubkey()),
        token.mint_to(mint.pubkey(), pool.pubkey(), payer.pubkey(), 300_000_000 * 10**8),
    ], extra=[mint, ms, pool])
    w = PoolWorld(url=localnet.url, rpc=rpc, pool=Pool(pool=pool.pubkey(), mint=mint.pubkey(), multisig=ms.pubkey()),
                  operators=operators, threshold=2, payer=payer, distributor=distributor)
    yield w
    await rpc.close()


EPOCH_S = 10  # devnet-length epochs for the operator-service tests
GENESIS = 1_700_000_000


def params_for(w, operators, *, threshold: int):
    """network.json for a PoolWorld: these operators, this quorum, `EPOCH_S` epochs from `GENESIS`."""
    return NetworkParams(cluster="localnet", rpc_url=w.url, genesis_time=GENESIS, mint=str(w.pool.mint),
                         operators=[o.address for o in operators], threshold=threshold, multisig=str(w.pool.multisig),
                         treasury=str(w.pool.pool), rewards_pool=str(w.pool.pool), deployer=str(w.payer.pubkey()),
                         stake_per_device=0, epoch_s=EPOCH_S).validate()


def attest(store, verifier, provider, *, at, passed=True, tflops=2.0):
    """A signed attestation of `provider`'s cpu device by `verifier`, stored as gossip would store it."""
    att = Attestation(provider=provider.peer_id, device=Device(kind="cpu", name="cpu", mem_bytes=2**30),
                      device_index=0, tflops=tflops, challenge=os.urandom(32), passed=passed,
                      verifier=verifier.peer_id, time=at)
    raw = seal(att, verifier)
    record_attestation(store, open_envelope(raw, Attestation))
    return raw
