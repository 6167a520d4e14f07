"""facenet_engine.triplet_loss against a numpy reimplementation of the FaceNet loss and its
mining modes, the gradient against central finite differences, and input errors."""

import numpy as np
import pytest

import facenet_engine as fe

MODES = ["batch_all", "batch_hard", "semi_hard"]


def sq_dist(e):
    e = np.asarray(e, np.float64)
    return ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1)


def mine(e, labels, mining, margin):
    """The triplets each mode counts, as the engine's header defines them (ties: smallest)."""
    d = sq_dist(e)
    labels = np.asarray(labels)
    out = []
    for a in range(len(labels)):
        pos = [p for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        neg = [n for n in range(len(labels)) if labels[n] != labels[a]]
        if not pos or not neg:
            continue
        if mining == "batch_all":
            out += [(a, p, n) for p in pos for n in neg]
        elif mining == "batch_hard":
            p = pos[int(np.argmax(d[a, pos]))]
            out.append((a, p, neg[int(np.argmin(d[a, neg]))]))
        else:  # semi_hard: closest negative farther than the positive but within the margin
            for p in pos:
                semi = [n for n in neg if d[a, p] < d[a, n] < d[a, p] + margin]
                pool = semi or neg
                out.append((a, p, pool[int(np.argmin(d[a, pool]))]))
    return np.array(out, np.int64).reshape(-1, 3)


def reference(e, triplets, margin):
    """Per-triplet losses and dJ/dE of the sum for fixed triplets (float64)."""
    e = np.asarray(e, np.float64)
    a, p, n = triplets.T
    losses = np.maximum(((e[a] - e[p]) ** 2).sum(1) - ((e[a] - e[n]) ** 2).sum(1) + margin, 0)
    grad = np.zeros_like(e)
    on = losses > 0
    a, p, n = a[on], p[on], n[on]
    np.add.at(grad, a, 2 * (e[n] - e[p]))
    np.add.at(grad, p, 2 * (e[p] - e[a]))
    np.add.at(grad, n, 2 * (e[a] - e[n]))
    return losses, grad


@pytest.fixture
def batch():
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(5), 5)
    rng.shuffle(labels)
    centres = rng.standard_normal((5, 8)) * 0.4
    e = (centres[labels] + 0.35 * rng.standard_normal((len(labels), 8))).astype(np.float32)
    return e, labels


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mining", MODES)
def test_mined_loss_matches_numpy(batch, mining, dtype):
    e, labels = batch
    e = e.astype(dtype)
    margin = float(np.float32(0.3))  # the engine's margin is a float32, in both precisions
    r = fe.triplet_loss(e, labels, mining=mining, margin=margin, return_triplets=True)
    triplets = mine(e, labels, mining, margin)
    losses, grad = reference(e, triplets, margin)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert isinstance(r, fe.TripletLossResult)
    assert r.count == len(triplets) > 0
    assert r.active == int((losses > 0).sum()) > 0
    np.testing.assert_allclose(r.loss_sum, losses.sum(), rtol=rtol)
    np.testing.assert_allclose(r.loss_mean, losses.sum() / len(triplets), rtol=rtol)
    assert r.grad.dtype == dtype and r.grad.shape == e.shape
    np.testing.assert_allclose(r.grad, grad, rtol=rtol * 10, atol=rtol * 10)
    # batch_all lists only the active triplets; the others list every counted one.
    listed = triplets[losses > 0] if mining == "batch_all" else triplets
    assert r.triplets.dtype == np.int32
    np.testing.assert_array_equal(r.triplets, listed[np.lexsort(listed.T[::-1])])


def test_explicit_triplets(batch):
    e, _ = batch
    rng = np.random.default_rng(3)
    triplets = rng.integers(0, len(e), size=(40, 3))
    r = fe.triplet_loss(e, triplets=triplets, margin=0.5, return_triplets=True)
    losses, grad = reference(e, triplets, 0.5)
    assert r.count == 40 and r.active == int((losses > 0).sum())
    np.testing.assert_array_equal(r.triplets, triplets)  # explicit: kept in the given order
    np.testing.assert_allclose(r.losses, losses, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.loss_sum, losses.sum(), rtol=1e-5)
    np.testing.assert_allclose(r.grad, grad, rtol=1e-4, atol=1e-5)


def test_result_type_does_not_clash_with_the_torch_module():
    # facenet_engine.torch.TripletLoss is the nn.Module; the result dataclass has its own name.
    assert "TripletLossResult" in fe.__all__ and "TripletLoss" not in fe.__all__
    assert not hasattr(fe, "TripletLoss")


def test_grad_and_triplets_only_when_asked(batch):
    e, labels = batch
    r = fe.triplet_loss(e, labels, grad=False)
    assert r.grad is None and r.triplets is None and r.losses is None
    assert r.loss_sum > 0


def test_no_valid_triplet_gives_zero(batch):
    e, _ = batch
    r = fe.triplet_loss(e, np.arange(len(e)))  # every label distinct: no positive anywhere
    assert (r.count, r.active, r.loss_sum, r.loss_mean) == (0, 0, 0.0, 0.0)
    assert not r.grad.any()


@pytest.mark.parametrize("mining", MODES)
def test_gradient_matches_central_differences(batch, mining):
    e, labels = batch
    e = e.astype(np.float64)
    r = fe.triplet_loss(e, labels, mining=mining, margin=0.3)
    h = 1e-6
    rng = np.random.default_rng(11)
    for i, j in zip(rng.integers(0, e.shape[0], 30), rng.integers(0, e.shape[1], 30)):
        up, down = e.copy(), e.copy()
        up[i, j] += h
        down[i, j] -= h
        numeric = (fe.triplet_loss(up, labels, mining=mining, margin=0.3, grad=False).loss_sum
                   - fe.triplet_loss(down, labels, mining=mining, margin=0.3, grad=False).loss_sum)
        np.testing.assert_allclose(r.grad[i, j], numeric / (2 * h), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(labels=None), "exactly one of labels and triplets"),
        (dict(labels=np.zeros(25, int), triplets=np.zeros((1, 3), int)), "exactly one"),
        (dict(labels=np.zeros(24, int)), "labels"),
        (dict(labels=np.array([2**40] * 25)), "labels"),
        (dict(labels=np.zeros(25), ), "labels"),
        (dict(labels=np.zeros(25, int), mining="hardest"), "mining"),
        (dict(labels=np.zeros(25, int), margin=-1.0), "margin"),
        (dict(triplets=np.array([[0, 1, 99]])), "triplet"),
        (dict(triplets=np.zeros((2, 2), int)), "triplets"),
        (dict(labels=np.zeros(25, int), device="tpu"), "device"),
    ],
)
def test_bad_arguments_name_the_argument(batch, kwargs, argument):
    e, _ = batch
    with pytest.raises(fe.EngineError, match=argument):
        fe.triplet_loss(e, **kwargs)


def test_nan_embedding_is_named(batch):
    e, labels = batch
    e = e.copy()
    e[3, 2] = np.nan
    with pytest.raises(fe.EngineError, match="embeddings row 3"):
        fe.triplet_loss(e, labels)


def test_cuda_float64_is_refused(batch):
    e, labels = batch
    with pytest.raises(fe.EngineError, match="float32"):
        fe.triplet_loss(e.astype(np.float64), labels, device="cuda")


def test_cuda_matches_cpu(batch):
    e, labels = batch
    try:
        gpu = fe.triplet_loss(e, labels, mining="semi_hard", device="cuda", deterministic=True)
    except fe.EngineError as error:
        assert "no usable CUDA GPU" in str(error)
        pytest.skip(f"no GPU: {error}")
    cpu = fe.triplet_loss(e, labels, mining="semi_hard")
    assert (gpu.count, gpu.active) == (cpu.count, cpu.active)
    np.testing.assert_allclose(gpu.loss_sum, cpu.loss_sum, rtol=1e-5)
    np.testing.assert_allclose(gpu.grad, cpu.grad, rtol=1e-4, atol=1e-5)
