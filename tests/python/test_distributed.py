"""ShardedGallery on a local Ray cluster (2 CPUs, no dashboard): sharded identify equals the
single gallery's, distances and order included; writes routed and durable; a killed shard
actor is restarted from its file and the query retried."""

import shutil

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import facenet_engine as fe  # noqa: E402
from facenet_engine.distributed import ShardedGallery, shard_of  # noqa: E402

SPEC = "synthetic/test#0123456789abcdef"


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def unit_rows(rng, n, d=128):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """A 300-identity gallery file, 1-4 rows each, a duplicate row under two names (a tie)."""
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("single") / "g.sqlite"
    with fe.Gallery.create(path, model=SPEC, dim=128) as g:
        for i in range(300):
            g.enroll(f"person-{i:03d}", unit_rows(rng, 1 + i % 4), model=SPEC)
        dup = g.embeddings("person-010")[0][:1]
        g.enroll("twin-of-010", dup, model=SPEC)
    return path


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.best == y.best
        assert x.distance == y.distance  # bitwise: the same float32 sqrt of the same distance
        assert [tuple(t) for t in x.top] == [tuple(t) for t in y.top]


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_sharded_identify_equals_the_single_gallery(cluster, single, tmp_path, shards):
    sg = ShardedGallery.from_gallery(single, tmp_path / "sharded", shards)
    assert sg.stats()["identities"] == 301
    rng = np.random.default_rng(11)
    with fe.Gallery.open(single) as g:
        rows, _ = g.embeddings()
        probes = np.concatenate([unit_rows(rng, 40), rows[::37] + 0.01])
        for k in (1, 5, 12):
            assert_same(sg.identify(probes, k=k, threshold=0.9),
                        g.identify(probes, k=k, threshold=0.9))


def test_routed_writes_are_durable_and_match_the_single_gallery(cluster, single, tmp_path):
    root = tmp_path / "sharded"
    sg = ShardedGallery.from_gallery(single, root, 2)
    rng = np.random.default_rng(3)
    new = unit_rows(rng, 2)
    mirror = tmp_path / "mirror.sqlite"
    shutil.copy(single, mirror)
    sg.enroll("newcomer", new)
    assert sg.remove("person-005") >= 1
    with fe.Gallery.open(mirror, "w") as g:
        g.enroll("newcomer", new, model=SPEC)
        g.remove("person-005")
    # The writes are in the owning shard's file, without the actors.
    with fe.Gallery.open(root / f"shard-{shard_of('newcomer', 2):04d}.sqlite") as part:
        assert "newcomer" in part and "person-005" not in part
    reopened = ShardedGallery.open(root)
    with fe.Gallery.open(mirror) as g:
        probes = np.concatenate([new, unit_rows(rng, 10)])
        assert_same(reopened.identify(probes, k=5), g.identify(probes, k=5))


def test_a_killed_shard_is_restarted_and_the_query_retried(cluster, single, tmp_path):
    sg = ShardedGallery.from_gallery(single, tmp_path / "sharded", 4)
    rng = np.random.default_rng(5)
    probes = unit_rows(rng, 20)
    want = sg.identify(probes, k=5)
    added = unit_rows(rng, 1)
    sg.enroll("acknowledged", added)
    for actor in sg._actors[:2]:
        ray.kill(actor, no_restart=False)
    got = sg.identify(np.concatenate([probes, added]), k=5)
    assert_same(got[:20], want)  # "acknowledged" is far from every probe
    assert got[20].best == "acknowledged" and got[20].distance == 0.0
    sg.enroll("after-restart", unit_rows(rng, 1))
    assert sg.stats()["identities"] == 303
