"""facenet_engine.FlatIndex / knn_search against a numpy brute force: results, removal, padding,
bf16 storage, input errors, zero-copy inputs, pickling, concurrent searches and the GIL."""

import concurrent.futures
import multiprocessing
import pickle

import numpy as np
import pytest

import facenet_engine as fe
from gil_probe import assert_python_keeps_running, progress_during, seconds

DIM = 16


def brute_force(queries, gallery, ids, k):
    """Squared L2 in float64, ascending, stable (ties keep gallery order), padded with inf/-1."""
    q = np.asarray(queries, np.float64)
    g = np.asarray(gallery, np.float64)
    d = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    dist = np.take_along_axis(d, order, axis=1)
    lab = np.asarray(ids, np.int64)[order]
    pad = k - dist.shape[1]
    if pad > 0:
        dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf)
        lab = np.pad(lab, ((0, 0), (0, pad)), constant_values=-1)
    return dist, lab


def assert_matches(result, expected, rtol=1e-4, atol=1e-5):
    """Distances to rtol; labels equal wherever the reference has no tie at that distance."""
    dist, lab = result
    ref_d, ref_l = expected
    assert dist.dtype == np.float32 and lab.dtype == np.int64
    assert dist.shape == ref_d.shape and lab.shape == ref_l.shape
    np.testing.assert_allclose(dist, ref_d, rtol=rtol, atol=atol)
    differ = lab != ref_l
    # A differing label is only allowed where two reference distances tie within tolerance.
    tied = np.isclose(dist, ref_d, rtol=rtol, atol=atol)
    assert np.all(tied[differ]), f"labels differ at {np.argwhere(differ)[:5]}"
    assert differ.mean() < 0.05


@pytest.fixture
def data():
    rng = np.random.default_rng(1234)
    gallery = rng.standard_normal((500, DIM)).astype(np.float32)
    queries = rng.standard_normal((37, DIM)).astype(np.float32)
    ids = rng.permutation(10**6)[:500].astype(np.int64) + 10**12  # ids beyond int32
    return gallery, queries, ids


@pytest.mark.parametrize("storage", ["fp32", "bf16"])
@pytest.mark.parametrize("nq", [1, 37])  # streaming scan and GEMM tiles
def test_search_matches_brute_force(data, storage, nq):
    gallery, queries, ids = data
    index = fe.FlatIndex(DIM, storage=storage)
    index.add(gallery, ids)
    assert len(index) == 500 and index.dim == DIM and index.storage == storage
    assert index.device == "cpu"
    assert_matches(index.search(queries[:nq], 10), brute_force(queries[:nq], gallery, ids, 10))


def test_default_ids_count_from_size(data):
    gallery, queries, _ = data
    index = fe.FlatIndex(DIM)
    index.add(gallery[:200])
    index.add(gallery[200:])
    assert_matches(index.search(queries, 5), brute_force(queries, gallery, np.arange(500), 5))


@pytest.mark.parametrize("nq", [5, 37])
def test_bf16_equals_fp32(data, nq):
    """bf16 re-ranks its candidates exactly: bit-identical to the fp32 streaming scan (few
    queries); against fp32's GEMM tiles (many queries) the same labels, distances to rounding."""
    gallery, queries, ids = data
    results = []
    for storage in ("fp32", "bf16"):
        index = fe.FlatIndex(DIM, storage=storage)
        index.add(gallery, ids)
        results.append(index.search(queries[:nq], 20))
    (d32, l32), (d16, l16) = results
    np.testing.assert_array_equal(l32, l16)
    if nq < 8:
        np.testing.assert_array_equal(d32, d16)
    else:
        np.testing.assert_allclose(d32, d16, rtol=2e-6)


def test_remove(data):
    gallery, queries, ids = data
    index = fe.FlatIndex(DIM)
    index.add(gallery, ids)
    gone = ids[::3]
    unknown = np.array([-5, 7], np.int64)
    assert index.remove(np.concatenate([gone, unknown])) == len(gone)
    keep = np.ones(len(ids), bool)
    keep[::3] = False
    assert len(index) == keep.sum()
    dist, lab = index.search(queries, 8)
    assert not np.isin(lab, gone).any()
    assert_matches((dist, lab), brute_force(queries, gallery[keep], ids[keep], 8))
    assert index.remove(gone) == 0  # already gone


def test_padding_when_k_exceeds_size(data):
    gallery, queries, ids = data
    index = fe.FlatIndex(DIM)
    index.add(gallery[:3], ids[:3])
    dist, lab = index.search(queries, 7)
    assert dist.shape == (37, 7)
    assert np.all(np.isinf(dist[:, 3:])) and np.all(lab[:, 3:] == -1)
    assert_matches((dist, lab), brute_force(queries, gallery[:3], ids[:3], 7))
    empty = fe.FlatIndex(DIM)
    dist, lab = empty.search(queries[:2], 2)
    assert np.all(np.isinf(dist)) and np.all(lab == -1)


def test_converted_inputs_give_the_same_results(data):
    gallery, queries, ids = data
    index = fe.FlatIndex(DIM)
    index.add(gallery.astype(np.float64), ids.tolist())
    expected = brute_force(queries, gallery, ids, 4)
    small = fe.FlatIndex(DIM)
    small.add(gallery[:50].tolist(), np.arange(100, 150, dtype=np.int32))
    assert_matches(small.search(queries, 2), brute_force(queries, gallery[:50], np.arange(100, 150), 2))
    assert_matches(index.search(np.asfortranarray(queries), 4), expected)
    assert_matches(index.search(queries.astype(np.float64), 4), expected)
    assert_matches(index.search(queries.tolist(), 4), expected)


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda ix: ix.add(np.zeros((2, DIM + 1), np.float32)), "vectors"),
        (lambda ix: ix.add(np.zeros(DIM, np.float32)), "vectors"),
        (lambda ix: ix.add(np.zeros((2, DIM), np.float32), np.arange(3)), "ids"),
        (lambda ix: ix.add(np.zeros((2, DIM), np.float32), np.array([0, 0])), "ids"),
        (lambda ix: ix.add(np.full((1, DIM), np.nan, np.float32)), "nan"),
        (lambda ix: ix.search(np.zeros((2, DIM - 1), np.float32), 1), "queries"),
        (lambda ix: ix.search(np.zeros((2, DIM), np.float32), 0), "k = 0"),
        (lambda ix: ix.search(np.zeros((2, DIM), np.float32), -3), "k = -3"),
        (lambda ix: ix.search(np.zeros((2, DIM), np.float32), 2**40), "k = 1099511627776"),
        (lambda ix: ix.search(np.array([[np.nan] * DIM], np.float32), 1), "queries"),
        (lambda ix: ix.search(np.array([[np.inf] * DIM], np.float32), 1), "inf"),
        (lambda ix: ix.remove(np.zeros((2, 2), np.int64)), "ids"),
    ],
)
def test_bad_inputs_name_the_argument(data, call, argument):
    index = fe.FlatIndex(DIM)
    index.add(data[0][:10])
    with pytest.raises(fe.EngineError, match=argument):
        call(index)
    assert len(index) == 10  # a failed call changes nothing


@pytest.mark.parametrize(
    "ids",
    [np.array([1.7, 2.9]), [1.7, 2.9], np.array([1.0, 2.0], np.float32), np.array([True, False]),
     np.array([1, 2], object)],
    ids=["float64", "float list", "float32", "bool", "object"],
)
def test_non_integer_ids_are_refused_not_truncated(data, ids):
    index = fe.FlatIndex(DIM)
    index.add(data[0][:10])
    with pytest.raises(TypeError, match="FlatIndex.add: ids must be integers"):
        index.add(data[0][:2], ids)
    with pytest.raises(TypeError, match="FlatIndex.remove: ids must be integers"):
        index.remove(ids)
    assert len(index) == 10


def test_uint64_ids_above_int64_are_refused_not_wrapped(data):
    gallery, queries, _ = data
    index = fe.FlatIndex(DIM)
    with pytest.raises(fe.EngineError, match=f"FlatIndex.add: ids: id {2**63} does not fit int64"):
        index.add(gallery[:2], np.array([5, 2**63], np.uint64))
    with pytest.raises(fe.EngineError, match="FlatIndex.remove: ids"):
        index.remove([2**64 - 1])  # numpy makes this list uint64
    assert len(index) == 0
    # Integer dtypes that fit int64 are converted exactly, the largest id included.
    top = np.array([2**63 - 1, 7], np.uint64)
    index.add(gallery[:2], top)
    index.add(gallery[2:4], np.array([-3, 9], np.int8))
    _, labels = index.search(gallery[:4], 1)
    assert labels[:, 0].tolist() == [2**63 - 1, 7, -3, 9]
    assert index.remove(np.array([7], np.uint16)) == 1
    assert index.remove([]) == 0


def test_engine_binding_takes_int64_ids_only(data):
    """The binding itself never casts ids (nanobind would truncate floats and wrap uint64)."""
    index = fe.FlatIndex(DIM)
    base = fe._core.FlatIndexBase
    for ids in (np.array([1.7, 2.9]), np.array([1, 2], np.uint64), np.array([1, 2], np.int32)):
        with pytest.raises(TypeError):
            base.add(index, data[0][:2], ids)
        with pytest.raises(TypeError):
            base.remove(index, ids)
    assert len(index) == 0
    base.add(index, data[0][:2], np.array([4, 5], np.int64))
    assert base.remove(index, np.array([5], np.int64)) == 1


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(dim=0), "dim"),
        (dict(dim=DIM, storage="int8"), "storage"),
        (dict(dim=DIM, device="tpu"), "device"),
        (dict(dim=DIM, threads=-1), "threads"),
    ],
)
def test_bad_constructor_arguments(kwargs, argument):
    with pytest.raises(fe.EngineError, match=argument):
        fe.FlatIndex(**kwargs)


def test_cuda_without_gpu_raises_engine_error():
    try:
        fe.FlatIndex(DIM, device="cuda")
    except fe.EngineError as e:
        assert "FlatIndex(device='cuda'): no usable CUDA GPU" in str(e)
        assert fe.has_cuda or "built without CUDA" in str(e)
    else:
        assert fe.has_cuda
        pytest.skip("a usable GPU is present")


def test_float32_inputs_are_read_in_place(data):
    gallery, queries, ids = data
    index = fe.FlatIndex(DIM)
    index.add(gallery, ids)
    assert index._last_input == gallery.ctypes.data
    # A C-contiguous view into a larger buffer: the engine must read at the view's offset.
    buffer = np.zeros((50, DIM), np.float32)
    buffer[10:20] = queries[:10]
    view = buffer[10:20]
    result = index.search(view, 3)
    assert index._last_input == view.ctypes.data == buffer.ctypes.data + 10 * DIM * 4
    assert_matches(result, brute_force(queries[:10], gallery, ids, 3))
    # Converted inputs are read from a temporary, not the caller's memory.
    as64 = queries.astype(np.float64)
    assert_matches(index.search(as64, 3), brute_force(queries, gallery, ids, 3))
    assert index._last_input not in (0, as64.ctypes.data, queries.ctypes.data)


def test_pickle_round_trip(data):
    gallery, queries, ids = data
    for storage in ("fp32", "bf16"):
        index = fe.FlatIndex(DIM, storage=storage, threads=2)
        index.add(gallery, ids)
        index.remove(ids[5:40])  # moves the last rows into holes: slot order must survive
        copy = pickle.loads(pickle.dumps(index))
        assert isinstance(copy, fe.FlatIndex)
        assert (copy.dim, copy.storage, copy.device, copy.threads, len(copy)) == (
            DIM, storage, "cpu", 2, len(index))
        for a, b in zip(index.search(queries, 12), copy.search(queries, 12)):
            np.testing.assert_array_equal(a, b)


def _search_in_worker(args):
    index, queries = args
    return index.search(queries, 6)


def test_multiprocessing_worker_gets_an_equal_index(data):
    gallery, queries, ids = data
    index = fe.FlatIndex(DIM)
    index.add(gallery, ids)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        dist, lab = pool.submit(_search_in_worker, (index, queries)).result(timeout=120)
    expected = index.search(queries, 6)
    np.testing.assert_array_equal(dist, expected[0])
    np.testing.assert_array_equal(lab, expected[1])


def test_parallel_searches_from_threads(data):
    gallery, _, ids = data
    rng = np.random.default_rng(99)
    index = fe.FlatIndex(DIM, threads=1)
    index.add(gallery, ids)
    batches = [rng.standard_normal((n, DIM)).astype(np.float32) for n in (1, 3, 40, 7) * 4]
    expected = [brute_force(q, gallery, ids, 5) for q in batches]

    def work(i):
        return [index.search(batches[i], 5) for _ in range(5)]

    def retune():  # changing the thread count waits for the searches in flight
        for t in (2, 1, 0, 1) * 10:
            index.threads = t

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        tuner = pool.submit(retune)
        outputs = list(pool.map(work, range(len(batches))))
        tuner.result()
    assert index.threads == 1
    for results, ref in zip(outputs, expected):
        for r in results:
            assert_matches(r, ref)


def test_knn_search_one_shot(data):
    gallery, queries, _ = data
    result = fe.knn_search(queries, gallery, 9)
    assert_matches(result, brute_force(queries, gallery, np.arange(len(gallery)), 9))
    with pytest.raises(fe.EngineError, match="gallery"):
        fe.knn_search(queries, gallery[0], 1)


def _long_calls(dim=64):
    """An index, and its add and search sized from a timed sample to take about 0.5 s each."""
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((20_000, dim)).astype(np.float32)
    index = fe.FlatIndex(dim, threads=1)
    index.add(gallery)
    per_query = seconds(lambda: index.search(gallery[:64], 10)) / 64
    queries = rng.standard_normal((int(min(50_000, 0.5 / per_query)), dim)).astype(np.float32)
    per_copy = seconds(lambda: fe.FlatIndex(dim).add(gallery))
    many = np.tile(gallery, (int(min(40, 0.5 / per_copy)) + 1, 1))  # at most 200 MB
    return index, (lambda: index.add(many)), (lambda: index.search(queries, 10))


def test_gil_probe_sees_a_held_gil():
    """The probe can fail: sum() over a range runs in C holding the GIL the whole time."""
    n = int(0.5 * 10**6 / seconds(lambda: sum(range(10**6))))
    duration, share = progress_during(lambda: sum(range(n)))
    if duration < 0.2:
        pytest.skip(f"sum took {duration:.3f} s, too short to judge")
    assert share < 0.1, share


@pytest.mark.parametrize("call", ["add", "search"])
def test_gil_is_released_inside_the_engine(call):
    """While one thread is inside a long add/search, another keeps running Python."""
    _, add, search = _long_calls()
    assert_python_keeps_running(add if call == "add" else search)


@pytest.mark.parametrize("accessor", ["len", "threads", "pickle"])
def test_accessors_wait_for_the_lock_without_the_gil(accessor):
    """len(), setting threads and pickling wait while an add holds the index; they must wait
    with the GIL released, or the whole interpreter waits with them."""
    index, add, _ = _long_calls()
    pokes = {"len": lambda: len(index), "threads": lambda: setattr(index, "threads", 1),
             "pickle": lambda: index._rows()}
    assert_python_keeps_running(add, poke=pokes[accessor])
