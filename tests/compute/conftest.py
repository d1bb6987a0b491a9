"""Shared helpers for compute tests: a framed in-memory stream pair and identities."""

import pytest
import trio
import trio.testing

from p2pnode.identity import Identity
from p2pnode.wire import FramedStream, trio_stream_adapter


def framed_pair():
    a, b = trio.testing.memory_stream_pair()
    return FramedStream(trio_stream_adapter(a)), FramedStream(trio_stream_adapter(b))


@pytest.fixture
def ids():
    return Identity.generate(), Identity.generate()
