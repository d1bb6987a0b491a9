"""Fixtures for the rewards tests: deterministic provider identities and observation builders."""

from __future__ import annotations

import hashlib

import pytest

from p2pnode.chain.rewards import EpochClock, Observation, StakeState
from p2pnode.identity import Identity


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
