"""facenet_engine.Gallery: enrolment round trips, verify/identify against numpy brute force,
errors, modes, concurrent connections, pickling, and agreement with the facenet CLI."""

import concurrent.futures
import json
import multiprocessing
import os
import pickle
import threading

import re

import numpy as np
import pytest

import facenet_engine as fe
from conftest import run_cli
from gil_probe import assert_python_keeps_running, seconds
from facenet_engine import EngineError, Gallery

MODEL = "test-net/v1#00000000deadbeef"
DIM = 16
SEED = 1234


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    """n random L2-normalised float32 rows, like real embeddings."""
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def people() -> dict:
    rng = np.random.default_rng(SEED)
    return {"alice": unit_rows(rng, 3), "bob": unit_rows(rng, 2), "carol": unit_rows(rng, 1)}


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "gallery.db")


@pytest.fixture
def enrolled(path, people) -> str:
    """A gallery file holding `people`, enrolled in order, alice with metadata."""
    with Gallery.create(path) as g:
        for name, x in people.items():
            g.enroll(name, x, model=MODEL, metadata={"team": "a"} if name == "alice" else None)
    return path


def min_distances(people: dict, probe: np.ndarray) -> dict:
    """Brute force: per identity, the smallest plain L2 distance to `probe`, in float64."""
    p = probe.astype(np.float64)
    return {n: float(np.min(np.linalg.norm(x.astype(np.float64) - p, axis=1)))
            for n, x in people.items()}


def test_round_trip(path, people):
    with Gallery.create(path) as g:
        assert g.mode == "w" and str(g.path) == path
        assert len(g) == 0 and g.stats()["model"] is None
        alice = g.enroll("alice", people["alice"], model=MODEL, metadata={"team": "a", "n": 1},
                         sources=[f"a{i}.jpg" for i in range(3)])
        assert (alice.name, alice.embeddings, alice.metadata) == ("alice", 3, {"team": "a", "n": 1})
        g.enroll("bob", people["bob"], model=MODEL)
        carol = g.enroll("carol", people["carol"][0], model=MODEL)  # one (D,) vector
        assert carol.embeddings == 1 and carol.metadata == {}

        assert [i.name for i in g.identities()] == ["alice", "bob", "carol"]
        assert [i.embeddings for i in g.identities()] == [3, 2, 1]
        assert g.identity("alice") == alice
        assert "bob" in g and "dave" not in g and 3 not in g
        assert len(g) == 3
        stats = g.stats()
        assert (stats["identities"], stats["embeddings"]) == (3, 6)
        assert (stats["model"], stats["dim"]) == (MODEL, DIM)
        assert stats["schema_version"] >= 1 and stats["file_bytes"] > 0

        vectors, names = g.embeddings()
        assert vectors.dtype == np.float32 and vectors.shape == (6, DIM)
        np.testing.assert_array_equal(vectors, np.concatenate(list(people.values())))
        assert names == ["alice"] * 3 + ["bob"] * 2 + ["carol"]
        bob_vectors, bob_names = g.embeddings("bob")
        np.testing.assert_array_equal(bob_vectors, people["bob"])
        assert bob_names == ["bob", "bob"]

        # An existing name gets more embeddings; its metadata stays.
        more = g.enroll("alice", people["carol"], model=MODEL, metadata={"ignored": True})
        assert more.embeddings == 4 and more.metadata == {"team": "a", "n": 1}
        assert more.id == alice.id

        assert g.remove("bob") == 2
        assert "bob" not in g and len(g) == 2
        assert g.stats()["embeddings"] == 5
        assert g.remove_many(["alice", "carol"]) == {"alice": 4, "carol": 1}
        assert len(g) == 0
        assert g.check() == "ok"


def test_empty_gallery(path):
    with Gallery.create(path, model=MODEL, dim=DIM) as g:
        vectors, names = g.embeddings()
        assert vectors.shape == (0, DIM) and names == []
        with pytest.raises(EngineError, match="empty"):
            g.identify(np.zeros(DIM, np.float32))


def test_verify_matches_numpy(enrolled, people):
    rng = np.random.default_rng(SEED + 1)
    with Gallery.open(enrolled) as g:
        for probe in unit_rows(rng, 4):
            want = min_distances(people, probe)
            for name, distance in want.items():
                v = g.verify(name, probe)
                assert v.name == name
                assert v.distance == pytest.approx(distance, rel=1e-5)
                assert v.threshold == fe.DEFAULT_THRESHOLD == 0.7
                assert v.match == (v.distance <= 0.7)
        # An enrolled vector verifies at distance 0 against its owner.
        exact = g.verify("bob", people["bob"][1], threshold=0.1)
        assert exact.distance == pytest.approx(0, abs=1e-6) and exact.match
        assert exact.threshold == 0.1
        far = g.verify("bob", -people["bob"][1], threshold=0.1)
        assert not far.match and far.distance > 1.0


def test_identify_matches_numpy(enrolled, people):
    rng = np.random.default_rng(SEED + 2)
    probes = unit_rows(rng, 5)
    probes[0] = people["carol"][0] + 0.01 * rng.standard_normal(DIM).astype(np.float32)
    with Gallery.open(enrolled) as g:
        found = g.identify(probes, k=2, threshold=0.5)
        assert len(found) == len(probes)
        for probe, result in zip(probes, found):
            ranked = sorted(min_distances(people, probe).items(), key=lambda t: t[1])
            assert [n for n, _ in result.top] == [n for n, _ in ranked[:2]]
            for (_, got), (_, want) in zip(result.top, ranked):
                assert got == pytest.approx(want, rel=1e-4, abs=1e-5)
            assert result.distance == pytest.approx(ranked[0][1], rel=1e-4, abs=1e-5)
            assert result.best == (ranked[0][0] if ranked[0][1] <= 0.5 else "unknown")
        assert found[0].best == "carol"
        # k larger than the gallery lists every identity once; one (D,) probe is one result.
        (single,) = g.identify(probes[1], k=10, threshold=0.0)
        assert sorted(n for n, _ in single.top) == ["alice", "bob", "carol"]
        assert single.best == "unknown"


def test_unknown_name_raises_naming_it(enrolled, people):
    with Gallery.open(enrolled, "w") as g:
        for call in (lambda: g.verify("nobody", people["bob"][0]), lambda: g.identity("nobody"),
                     lambda: g.remove("nobody"), lambda: g.embeddings("nobody")):
            with pytest.raises(EngineError, match="nobody") as err:
                call()
            assert enrolled in str(err.value)
        # remove_many is all or nothing: alice stays when another name is unknown.
        with pytest.raises(EngineError, match="nobody"):
            g.remove_many(["alice", "nobody"])
        assert "alice" in g


def test_model_mismatch_refused(enrolled, people):
    other = "other-net/v2#0123456789abcdef"
    with Gallery.open(enrolled, "w") as g:
        with pytest.raises(EngineError, match="other-net") as err:
            g.enroll("dave", people["bob"], model=other)
        assert MODEL in str(err.value) and enrolled in str(err.value)
        with pytest.raises(EngineError, match="dimensional"):
            g.enroll("dave", np.ones((1, DIM + 1), np.float32), model=MODEL)
        with pytest.raises(EngineError, match="other-net"):
            g.embeddings(model=other)
        with pytest.raises(EngineError, match="other-net"):
            g.verify("bob", people["bob"][0], model=other)
        with pytest.raises(EngineError, match="other-net"):
            g.identify(people["bob"], model=other)
        assert "dave" not in g
        assert g.verify("bob", people["bob"][0], model=MODEL).match


def test_fixed_model_at_create(path, people):
    with Gallery.create(path, model=MODEL, dim=DIM) as g:
        assert (g.stats()["model"], g.stats()["dim"]) == (MODEL, DIM)
        with pytest.raises(EngineError, match="refusing"):
            g.enroll("x", people["bob"], model="another/v#1")


def test_bad_inputs_raise(enrolled, people):
    with Gallery.open(enrolled, "w") as g:
        with pytest.raises(EngineError, match="shape"):
            g.enroll("dave", np.zeros((1, 2, DIM), np.float32), model=MODEL)
        bad = people["bob"].copy()
        bad[1, 3] = np.nan
        with pytest.raises(EngineError, match="non-finite"):
            g.enroll("dave", bad, model=MODEL)
        assert "dave" not in g  # nothing half-enrolled
        with pytest.raises(EngineError, match="sources"):
            g.enroll("dave", people["bob"], model=MODEL, sources=["only-one.jpg"])
        with pytest.raises(EngineError, match="JSON object"):
            g.enroll("dave", people["bob"], model=MODEL, metadata=[1, 2])
        with pytest.raises(EngineError, match="shape"):
            g.verify("bob", people["bob"])
        with pytest.raises(EngineError, match=f"{DIM + 2} values"):
            g.verify("bob", np.zeros(DIM + 2, np.float32))
        with pytest.raises(EngineError, match=f"{DIM - 1} values"):
            g.identify(np.zeros((2, DIM - 1), np.float32))
        with pytest.raises(EngineError, match="k must be"):
            g.identify(people["bob"], k=0)
        with pytest.raises(EngineError, match="threshold"):
            g.verify("bob", people["bob"][0], threshold=-1)
        with pytest.raises(EngineError, match="threshold"):
            g.identify(people["bob"], threshold=float("inf"))
        with pytest.raises(EngineError, match="device 'tpu'") as err:
            g.identify(people["bob"], device="tpu")
        assert enrolled in str(err.value)


def test_open_and_create_errors(enrolled, tmp_path):
    missing = str(tmp_path / "missing.db")
    with pytest.raises(EngineError, match="missing.db"):
        Gallery.open(missing)
    with pytest.raises(EngineError, match="exists"):
        Gallery.create(enrolled)
    with pytest.raises(EngineError, match="mode"):
        Gallery.open(enrolled, "a")
    not_a_gallery = tmp_path / "junk.db"
    not_a_gallery.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(EngineError, match="junk.db"):
        Gallery.open(not_a_gallery)


def test_read_only_refuses_writes(enrolled, people):
    with Gallery.open(enrolled, "r") as g:
        assert g.mode == "r"
        with pytest.raises(EngineError):
            g.enroll("dave", people["bob"], model=MODEL)
        with pytest.raises(EngineError):
            g.remove("alice")
        with pytest.raises(EngineError):
            g.remove_many(["alice"])
        assert len(g) == 3 and "alice" in g
        assert g.identity("alice").metadata == {"team": "a"}


def test_closed_gallery_raises(enrolled):
    with Gallery.open(enrolled) as g:
        pass
    assert g.closed
    with pytest.raises(EngineError, match="closed"):
        g.identities()
    g.close()  # closing twice is harmless


def test_two_connections_see_each_others_commits(enrolled, people):
    with Gallery.open(enrolled, "w") as writer, Gallery.open(enrolled, "r") as reader:
        assert len(reader) == 3
        writer.enroll("dave", people["bob"], model=MODEL)
        assert "dave" in reader and len(reader) == 4
        vectors, names = reader.embeddings()
        assert names.count("dave") == 2 and vectors.shape == (8, DIM)
        writer.remove("alice")
        assert "alice" not in reader
        assert reader.identify(people["bob"][0], threshold=0.1)[0].best in ("bob", "dave")


def test_model_file_as_model(path, nn4_model):
    info = fe.model_info(nn4_model)
    dim = info["embedding_dim"]
    with Gallery.create(path, model=nn4_model) as g:
        assert (g.stats()["model"], g.stats()["dim"]) == (info["embedding_spec"], dim)
        x = unit_rows(np.random.default_rng(SEED), 2, dim)
        g.enroll("a", x, model=nn4_model)  # the file, or its spec string
        g.enroll("b", x, model=info["embedding_spec"])
        assert g.verify("a", x[0], model=str(nn4_model)).match
        with pytest.raises(EngineError, match=f"{dim + 1} values"):
            g.enroll("c", np.zeros(dim + 1, np.float32), model=nn4_model)
    with pytest.raises(EngineError, match="dim=7"):
        Gallery.create(path + "2", model=nn4_model, dim=7)


@pytest.mark.parametrize(
    "missing",
    [lambda d: d / "nn4.safetensors", lambda d: str(d / "nn4.safetensors"),
     lambda d: d / "model-without-suffix", lambda d: str(d / "model-without-suffix"),
     lambda d: "nn4.safetensors", lambda d: "models/nn4"],
    ids=["Path", "str", "Path, no suffix", "str with separator", "bare .safetensors",
         "relative"],
)
def test_missing_model_file_raises_and_fixes_nothing(path, people, tmp_path, missing):
    """A mistyped model path is an error naming it, never a model spec that locks the gallery."""
    model = missing(tmp_path)
    named = re.escape(os.fspath(model))
    with pytest.raises(EngineError, match=f"model file '{named}' not found"):
        Gallery.create(path, model=model)
    assert not os.path.exists(path)
    with Gallery.create(path) as g:
        with pytest.raises(EngineError, match=f"model file '{named}' not found") as err:
            g.enroll("alice", people["alice"], model=model)
        assert path in str(err.value)
        assert g.stats()["model"] is None and len(g) == 0  # still open to any model
        g.enroll("alice", people["alice"], model=MODEL)
        for call in (lambda: g.verify("alice", people["alice"][0], model=model),
                     lambda: g.identify(people["alice"], model=model),
                     lambda: g.embeddings(model=model)):
            with pytest.raises(EngineError, match=f"model file '{named}' not found"):
                call()
        # A spec is name/variant#fingerprint: its '/' does not make it a path.
        assert g.verify("alice", people["alice"][0], model=MODEL).match
        assert g.stats()["model"] == MODEL


def test_closed_does_not_wait_for_a_long_identify(path):
    """`closed` is read while another thread's identify holds the connection: it must not wait
    for the connection's lock holding the GIL, which would stall every Python thread."""
    rng = np.random.default_rng(SEED + 5)
    with Gallery.create(path) as g:
        g.enroll("many", unit_rows(rng, 20_000, 128), model=MODEL)
        probes = unit_rows(rng, 64, 128)
        per_probe = seconds(lambda: g.identify(probes, k=1)) / len(probes)
        probes = unit_rows(rng, int(min(20_000, 0.5 / per_probe)), 128)
        assert_python_keeps_running(lambda: g.identify(probes, k=1), poke=lambda: g.closed)
        assert not g.closed


def test_pickle_reopens(enrolled, people):
    with Gallery.open(enrolled, "w") as g:
        copy = pickle.loads(pickle.dumps(g))
    assert g.closed and not copy.closed  # its own connection
    assert copy.mode == "w" and os.path.samefile(copy.path, enrolled)
    assert [i.name for i in copy.identities()] == ["alice", "bob", "carol"]
    copy.enroll("dave", people["bob"], model=MODEL)
    copy.close()
    with Gallery.open(enrolled) as g:
        assert "dave" in g


def _names_in_worker(gallery: Gallery) -> list:
    return [i.name for i in gallery.identities()]


def test_pickle_to_worker_process(enrolled):
    ctx = multiprocessing.get_context("spawn")
    with Gallery.open(enrolled) as g, \
            concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        assert pool.submit(_names_in_worker, g).result(timeout=120) == ["alice", "bob", "carol"]


def test_threads_with_their_own_gallery(enrolled):
    rng = np.random.default_rng(SEED + 3)
    batches = {f"t{t}-p{p}": unit_rows(rng, 2) for t in range(4) for p in range(5)}
    errors = []

    def work(t: int) -> None:
        try:
            with Gallery.open(enrolled, "w") as g:
                for p in range(5):
                    name = f"t{t}-p{p}"
                    g.enroll(name, batches[name], model=MODEL)
                    v = g.verify(name, batches[name][0])
                    assert v.match and v.distance < 1e-5
        except Exception as e:  # noqa: BLE001 - reported below with the thread's failure
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    with Gallery.open(enrolled) as g:
        assert len(g) == 3 + len(batches)
        vectors, names = g.embeddings()
        for name, x in batches.items():
            np.testing.assert_array_equal(vectors[[i for i, n in enumerate(names) if n == name]], x)


def test_threads_sharing_one_gallery(path):
    rng = np.random.default_rng(SEED + 4)
    x = unit_rows(rng, 40)
    with Gallery.create(path) as g:
        g.enroll("seed", x[:1], model=MODEL)

        def work(i: int) -> float:
            g.enroll(f"p{i}", x[i], model=MODEL)
            return g.identify(x[i], k=1)[0].distance

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            distances = list(pool.map(work, range(1, 40)))
        assert max(distances) < 1e-5
        assert len(g) == 40


def test_cli_reads_what_python_enrolled(enrolled, facenet_cli):
    lines = run_cli(facenet_cli, "gallery", "list", "--gallery", enrolled).stdout.splitlines()
    listed = [json.loads(line) for line in lines]
    with Gallery.open(enrolled) as g:
        want = [{"id": i.id, "name": i.name, "embeddings": i.embeddings,
                 "created_at": i.created_at, "metadata": i.metadata} for i in g.identities()]
        assert listed == want
        stats = json.loads(run_cli(facenet_cli, "gallery", "stats", "--gallery", enrolled).stdout)
        # file_bytes counts the write-ahead log, which a closing connection may checkpoint.
        python_stats = g.stats()
        assert stats.pop("file_bytes") > 0 and python_stats.pop("file_bytes") > 0
        assert stats == python_stats
        # And the other way: what the CLI removes, Python no longer sees.
        run_cli(facenet_cli, "gallery", "remove", "--gallery", enrolled, "--name", "bob")
        assert "bob" not in g and len(g) == 2
