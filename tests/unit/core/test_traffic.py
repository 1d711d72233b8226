"""Traffic split by weight over a model's versions, in process on a ModelManager: requests that name no
version and no label are routed by weight, a sticky header keeps one user on one version, weights are checked.
Over HTTP and gRPC against a real server (every answer says its version, weights change by reload with no
failed request, the service JSON's traffic): tests/e2e/test_traffic.py."""

import asyncio
import collections
import math

import pytest

from serving.core.model_config import ConfigError, ModelSpec, VersionPolicy, parse_model_config
from serving.core.repository import ModelManager
from tests.helpers import make_linear, pbtxt

ALL = VersionPolicy("all")


def two_versions(base):
    make_linear(base, 1, weights=[1.0], bias=0.0)
    make_linear(base, 2, weights=[1.0], bias=100.0)


def within(count, n, p, sigmas=5.0):
    """`count` of `n` draws at probability `p`, within `sigmas` standard deviations."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_a_90_10_split_over_10000_requests_and_a_sticky_header(tmp_path):
    two_versions(tmp_path)

    async def go():
        m = ModelManager()
        await m.apply([ModelSpec("m", str(tmp_path), "linear", ALL, traffic={1: 90, 2: 10})])
        counts = collections.Counter(m.get("m").version for _ in range(10_000))
        assert within(counts[2], 10_000, 0.10), counts
        assert m.get("m", version=2).version == 2 and m.get("m", version=1).version == 1  # named: as named
        m.sticky_header = "x-user"
        for user in (b"alice", b"bob", b"carol"):
            assert len({m.get("m", carrier={b"x-user": user}).version for _ in range(50)}) == 1
        users = collections.Counter(m.get("m", carrier={b"x-user": b"user-%d" % i}).version for i in range(2000))
        assert within(users[2], 2000, 0.10), users
        await m.shutdown()

    asyncio.run(go())


def test_weights_must_sum_to_100_and_name_versions_the_policy_serves(tmp_path):
    with pytest.raises(ConfigError, match="sum to 95, not 100"):
        parse_model_config(pbtxt({"name": "m", "base_path": str(tmp_path), "platform": "linear",
                                  "traffic": {1: 90, 2: 5}}))
    two_versions(tmp_path)

    async def go():
        m = ModelManager()
        await m.apply([ModelSpec("m", str(tmp_path), "linear", ALL, traffic={1: 50, 2: 50})])
        # The latest policy serves only version 2: weights on version 1 are refused, the old ones stay.
        with pytest.raises(ConfigError, match="names version 1, which is not one it serves"):
            await m.apply([ModelSpec("m", str(tmp_path), "linear", VersionPolicy("latest"), traffic={1: 50, 2: 50})])
        assert m.models["m"].traffic == {1: 50, 2: 50}
        await m.shutdown()

    asyncio.run(go())


def test_a_weighted_version_that_is_not_available_gives_its_share_to_the_others(tmp_path):
    two_versions(tmp_path)
    (tmp_path / "2" / "linear.json").write_text("{broken")

    async def go():
        m = ModelManager()
        await m.apply([ModelSpec("m", str(tmp_path), "linear", ALL, traffic={1: 10, 2: 90})])
        assert {m.get("m").version for _ in range(200)} == {1}
        await m.shutdown()

    asyncio.run(go())
