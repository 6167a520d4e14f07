"""facenet_engine.distributed on a local Ray cluster (2 CPUs, no dashboard).

Distributed encoding equals the single-process Pipeline's embeddings and keeps every input
exactly once, also when a worker is killed mid-run; its output enrols into a gallery.
Sharded identify equals the single gallery's, distances and order included; writes are routed
and durable; a killed shard actor is restarted from its file and the query retried."""

import os
import re
import shutil

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import facenet_engine as fe  # noqa: E402
from facenet_engine.distributed import (ShardedGallery, encode_dataset,  # noqa: E402
                                        enroll_dataset, list_images, shard_of)
from facenet_engine.distributed.encode import KILL_ONCE_ENV  # noqa: E402

SPEC = "synthetic/test#0123456789abcdef"


@pytest.fixture(scope="module")
def kill_marker(tmp_path_factory):
    """Where the kill test puts the file that makes one encoder actor kill itself once."""
    return tmp_path_factory.mktemp("fault") / "kill-one-encoder"


@pytest.fixture(scope="module")
def cluster(kill_marker):
    # The local cluster's workers inherit the driver's environment as ray.init finds it.
    os.environ[KILL_ONCE_ENV] = str(kill_marker)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    del os.environ[KILL_ONCE_ENV]


# ---- distributed encoding ------------------------------------------------------------------

ENCODE = dict(batch_size=8, concurrency=2, num_cpus=0.5, threads=1)  # 2 actors beside reads


@pytest.fixture(scope="module")
def photos(shared, tmp_path_factory):
    """krasserm-lfw10 (10 people x 10 LFW photos) plus one corrupt file and one photo without
    a face, in person folders."""
    root = tmp_path_factory.mktemp("photos")
    shutil.copytree(shared / "data" / "krasserm-lfw10" / "images", root / "people")
    (root / "people" / "Nobody").mkdir()
    (root / "people" / "Nobody" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    cv2 = pytest.importorskip("cv2")
    ok, png = cv2.imencode(".png", np.full((64, 64, 3), 128, np.uint8))
    (root / "people" / "Nobody" / "blank.png").write_bytes(png.tobytes())
    return root / "people"


@pytest.fixture(scope="module")
def single_process(resnet_model, photos):
    """Each input's (box, score, embedding) from one Pipeline in this process, same threads."""
    files = list_images(photos)
    results = fe.Pipeline(resnet_model, threads=1).process(files, "encode", errors="return")
    return {f: r for f, r in zip(files, results)}


def rows_by_path(rows):
    out = {}
    for r in rows:
        assert r["path"] not in out, f"{r['path']} twice in the output"
        out[r["path"]] = r
    return out


def assert_rows_equal_single_process(rows, single_process, model_spec):
    by_path = rows_by_path(rows)
    assert sorted(by_path) == sorted(single_process)  # every input, once
    for path, want in single_process.items():
        got = by_path[path]
        assert got["model"] == model_spec
        if not want.ok:
            assert got["face"] == -1 and got["embedding"] is None
            assert path in got["error"]  # names the file, not "bytes[i]"
        elif not want.faces:
            assert got["face"] == -1 and got["embedding"] is None and got["error"] == ""
        else:
            f = want.faces[0]
            assert got["face"] == 0 and tuple(got["box"]) == f.box
            assert got["score"] == np.float32(f.score)
            # Equal up to float32 rounding: oneDNN's kernels sum in an order that depends on
            # how many chips share a forward, and the batches differ between the two runs.
            np.testing.assert_allclose(np.asarray(got["embedding"], np.float32), f.embedding,
                                       rtol=0, atol=1e-6)


def test_distributed_encode_equals_the_single_process_pipeline(cluster, resnet_model, photos,
                                                              single_process):
    rows = encode_dataset(photos, resnet_model, **ENCODE).take_all()
    spec = fe.Pipeline(resnet_model).embedding_spec
    assert_rows_equal_single_process(rows, single_process, spec)
    assert sum(r["face"] == -1 for r in rows) == 2  # broken.jpg and blank.png


def test_a_killed_encoder_is_retried_and_every_input_kept_once(cluster, kill_marker,
                                                              resnet_model, photos,
                                                              single_process):
    kill_marker.write_text("")
    rows = encode_dataset(photos, resnet_model, **ENCODE).take_all()
    assert not kill_marker.exists()  # an actor took it: it died after encoding a batch
    spec = fe.Pipeline(resnet_model).embedding_spec
    assert_rows_equal_single_process(rows, single_process, spec)


def test_parquet_output_enrols_into_a_gallery(cluster, resnet_model, photos, tmp_path):
    out = encode_dataset(photos, resnet_model, output=tmp_path / "parquet", **ENCODE)
    assert list((tmp_path / "parquet").glob("*.parquet"))
    spec = fe.Pipeline(resnet_model).embedding_spec
    with fe.Gallery.create(tmp_path / "g.sqlite", model=resnet_model) as g:
        counts = enroll_dataset(out, g)
        assert counts == {"identities": 10, "embeddings": 100, "images_without_face": 1,
                          "failed": 1}
        assert [i.name for i in g.identities()] == sorted(p.name for p in photos.iterdir()
                                                          if p.name != "Nobody")
        vectors, names = g.embeddings("Tony_Blair")
        files = sorted(str(p) for p in (photos / "Tony_Blair").iterdir())
        want = fe.Pipeline(resnet_model, threads=1).encode(files)
        np.testing.assert_allclose(vectors, want, rtol=0, atol=1e-6)
    # The same rows into a sharded gallery route by name.
    sg = ShardedGallery.create(tmp_path / "sharded", 3, model=spec, dim=128)
    assert enroll_dataset(out, sg)["embeddings"] == 100
    assert sg.stats()["identities"] == 10


# ---- sharded search ------------------------------------------------------------------------


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


def test_sharded_identify_equals_the_single_gallery_at_100k_rows(cluster, tmp_path):
    """From 100,000 rows Gallery.identify stores the index as bf16 planes where the CPU runs
    bf16 (exact re-ranking, other rounding than the fp32 scan): the shards follow it."""
    rng = np.random.default_rng(3)
    path = tmp_path / "big.sqlite"
    with fe.Gallery.create(path, model=SPEC, dim=128) as g:
        for i in range(20000):
            g.enroll(f"id-{i:05d}", unit_rows(rng, 5), model=SPEC)
    probes = unit_rows(rng, 64)
    with fe.Gallery.open(path, "r") as g:
        want = g.identify(probes, k=5)
    sg = ShardedGallery.from_gallery(path, tmp_path / "sharded", 3, threads=1)
    assert sg.storage == fe._core._identify_storage(100000)
    assert_same(sg.identify(probes, k=5), want)


def test_the_readme_cluster_example_runs(cluster, photos, dlib_models, tmp_path, monkeypatch,
                                         capsys):
    """The README's Ray example as written, on the test photos (its ray.init() joins the
    module's cluster instead of starting a second one)."""
    from conftest import REPO
    text = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S)
                 if "encode_dataset" in b)
    shutil.copytree(photos, tmp_path / "people")
    shutil.copy(photos / "Tony_Blair" / "Tony_Blair_0001.jpg", tmp_path / "who.jpg")
    monkeypatch.chdir(tmp_path)
    block = block.replace("ray.init()", "ray.init(ignore_reinit_error=True)")
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == str({"identities": 11 - 1, "embeddings": 100, "images_without_face": 1,
                           "failed": 1})
    assert out[-1] == "Tony_Blair"

