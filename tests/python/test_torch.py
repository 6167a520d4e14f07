"""facenet_engine with PyTorch: DLPack inputs read in place, torch in -> torch out, the autograd
triplet loss (gradcheck in float64, a training step), and CUDA tensors when a GPU is present."""

import numpy as np
import pytest

import facenet_engine as fe

torch = pytest.importorskip("torch")
fet = pytest.importorskip("facenet_engine.torch")

DIM = 16


def needs_cuda():
    if not torch.cuda.is_available() or not fe.has_cuda:
        pytest.skip("needs torch CUDA and a CUDA build of facenet_engine")


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(5)
    gallery = torch.randn(300, DIM, generator=g)
    queries = torch.randn(21, DIM, generator=g)
    return gallery, queries


def reference(queries, gallery, k):
    d = torch.cdist(queries.double(), gallery.double()) ** 2
    dist, lab = torch.sort(d, dim=1, stable=True)
    return dist[:, :k], lab[:, :k]


def test_search_tensors_in_place_and_torch_out(data):
    gallery, queries = data
    index = fe.FlatIndex(DIM)
    index.add(gallery)
    assert index._last_input == gallery.data_ptr()
    dist, lab = index.search(queries, 6)
    assert index._last_input == queries.data_ptr()
    assert isinstance(dist, torch.Tensor) and isinstance(lab, torch.Tensor)
    assert dist.dtype == torch.float32 and lab.dtype == torch.int64
    ref_d, ref_l = reference(queries, gallery, 6)
    torch.testing.assert_close(dist.double(), ref_d, rtol=1e-4, atol=1e-5)
    assert torch.equal(lab, ref_l)
    # numpy in -> numpy out, same numbers.
    nd, nl = index.search(queries.numpy(), 6)
    assert isinstance(nd, np.ndarray)
    np.testing.assert_array_equal(nd, dist.numpy())
    np.testing.assert_array_equal(nl, lab.numpy())


def test_tensors_that_need_conversion(data):
    gallery, queries = data
    index = fe.FlatIndex(DIM)
    index.add(gallery.double().requires_grad_(), torch.arange(300) * 3)
    dist, lab = index.search(queries.t().contiguous().t(), 4)  # a transposed (F-order) view
    ref_d, ref_l = reference(queries, gallery, 4)
    torch.testing.assert_close(dist.double(), ref_d, rtol=1e-4, atol=1e-5)
    assert torch.equal(lab, ref_l * 3)


def test_tensor_ids_must_be_integers(data):
    gallery, queries = data
    index = fe.FlatIndex(DIM)
    with pytest.raises(TypeError, match="FlatIndex.add: ids must be integers"):
        index.add(gallery[:2], torch.tensor([1.7, 2.9]))
    with pytest.raises(TypeError, match="FlatIndex.remove: ids must be integers"):
        index.remove(torch.tensor([1.0], dtype=torch.bfloat16))
    index.add(gallery[:3], torch.tensor([40, 41, 42], dtype=torch.int32))
    assert torch.equal(index.search(gallery[:3], 1)[1][:, 0], torch.tensor([40, 41, 42]))
    assert index.remove(torch.tensor([41, 99])) == 1


def test_dlpack_round_trip(data):
    gallery, queries = data
    from torch.utils import dlpack

    index = fe.FlatIndex(DIM)
    capsule_tensor = dlpack.from_dlpack(dlpack.to_dlpack(gallery))
    assert capsule_tensor.data_ptr() == gallery.data_ptr()
    index.add(capsule_tensor)
    assert index._last_input == gallery.data_ptr()

    class Foreign:
        """A DLPack producer that is neither numpy nor torch: numpy comes back."""

        def __init__(self, t):
            self.t = t

        def __dlpack__(self, stream=None):
            return self.t.__dlpack__()

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

    dist, lab = index.search(Foreign(queries), 3)
    assert isinstance(dist, np.ndarray) and index._last_input == queries.data_ptr()
    # And the results go back into torch without a copy.
    back = torch.from_dlpack(dist)
    assert back.data_ptr() == dist.ctypes.data
    assert torch.equal(torch.from_numpy(lab), reference(queries, gallery, 3)[1])


def test_knn_search_on_tensors(data):
    gallery, queries = data
    dist, lab = fet.knn_search(queries, gallery, 5)
    assert isinstance(lab, torch.Tensor)
    assert torch.equal(lab, reference(queries, gallery, 5)[1])


def test_triplet_loss_torch_in_torch_out():
    g = torch.Generator().manual_seed(1)
    e = torch.randn(20, 8, generator=g)
    labels = torch.arange(20) % 4
    r = fe.triplet_loss(e, labels, mining="batch_all")
    n = fe.triplet_loss(e.numpy(), labels.numpy(), mining="batch_all")
    assert isinstance(r.grad, torch.Tensor) and r.grad.dtype == torch.float32
    assert (r.count, r.active) == (n.count, n.active) and r.loss_sum == n.loss_sum
    np.testing.assert_array_equal(r.grad.numpy(), n.grad)


@pytest.mark.parametrize("mining", ["batch_all", "batch_hard", "semi_hard"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_autograd_gradient_is_the_engines(mining, reduction):
    g = torch.Generator().manual_seed(2)
    e = torch.randn(24, 8, generator=g, requires_grad=True)
    labels = torch.arange(24) % 5
    loss = fet.triplet_loss(e, labels, mining, 0.4, reduction)
    (3.0 * loss).backward()
    r = fe.triplet_loss(e.detach(), labels, mining=mining, margin=0.4)
    assert r.count > 0
    value = r.loss_mean if reduction == "mean" else r.loss_sum
    assert loss.item() == pytest.approx(value, rel=1e-6)
    scale = 3.0 / r.count if reduction == "mean" else 3.0
    torch.testing.assert_close(e.grad, r.grad * scale)


@pytest.mark.parametrize("mining", ["batch_all", "batch_hard", "semi_hard"])
def test_gradcheck_double(mining):
    g = torch.Generator().manual_seed(3)
    e = torch.randn(12, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(12) % 3
    assert torch.autograd.gradcheck(
        lambda x: fet.triplet_loss(x, labels, mining, 0.5, "mean"), (e,), eps=1e-6, atol=1e-6)


def test_explicit_triplets_autograd():
    g = torch.Generator().manual_seed(4)
    e = torch.randn(10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    triplets = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 0, 1]])
    loss = fet.triplet_loss(e, triplets=triplets, margin=1.0, reduction="sum")
    a, p, n = triplets.T
    expected = torch.clamp(((e[a] - e[p]) ** 2).sum(1) - ((e[a] - e[n]) ** 2).sum(1) + 1.0, min=0).sum()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    grad = e.grad.clone()
    e.grad = None
    expected.backward()
    torch.testing.assert_close(grad, e.grad)


def test_training_step_lowers_the_loss():
    torch.manual_seed(0)
    labels = torch.arange(64) % 8
    centres = torch.randn(8, 32)
    x = centres[labels] + 0.8 * torch.randn(64, 32)
    model = torch.nn.Linear(32, 16)
    criterion = fet.TripletLoss(mining="batch_hard", margin=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses, grad_norms = [], []
    for _ in range(30):
        opt.zero_grad()
        loss = criterion(model(x), labels)
        loss.backward()
        grad_norms.append(model.weight.grad.norm().item())
        opt.step()
        losses.append(loss.item())
    assert grad_norms[0] > 0 and losses[0] > 0
    assert losses[-1] < 0.5 * losses[0], losses


def test_module_equals_function():
    e = torch.randn(16, 8)
    labels = torch.arange(16) % 4
    module = fet.TripletLoss("semi_hard", 0.3, "sum")
    assert module(e, labels).item() == fet.triplet_loss(e, labels, "semi_hard", 0.3, "sum").item()
    with pytest.raises(fe.EngineError, match="reduction"):
        fet.triplet_loss(e, labels, reduction="max")


# ---- CUDA (skipped without a GPU) -----------------------------------------------------------


def test_cuda_index_on_cuda_tensors(data):
    needs_cuda()
    gallery, queries = data
    index = fe.FlatIndex(DIM, device="cuda")
    index.add(gallery.cuda())
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        q = queries.cuda() * 1.0  # produced on the side stream: the search must wait for it
        dist, lab = index.search(q, 7)
        assert dist.is_cuda and lab.is_cuda
        assert index._last_input == q.data_ptr()
        # Copied on the same stream: ordered after the search without an explicit sync.
        dist_host, lab_host = dist.cpu(), lab.cpu()
    ref_d, ref_l = reference(queries, gallery, 7)
    torch.testing.assert_close(dist_host.double(), ref_d, rtol=1e-4, atol=1e-4)
    assert (lab_host == ref_l).float().mean() > 0.95
    # Host queries on the same index: the engine's synchronous host path, same results.
    host_d, host_l = index.search(queries.numpy(), 7)
    np.testing.assert_allclose(host_d, dist_host.numpy(), rtol=1e-5, atol=1e-5)
    assert (torch.from_numpy(host_l) == lab_host).float().mean() > 0.95
    empty = fe.FlatIndex(DIM, device="cuda")
    d, l = empty.search(queries.cuda(), 2)
    assert torch.isinf(d).all() and (l == -1).all()


def test_cuda_search_outputs_are_never_converted(data):
    """Results written into a converted copy of an output would be lost: the binding refuses."""
    needs_cuda()
    gallery, queries = data
    index = fe.FlatIndex(DIM, device="cuda")
    index.add(gallery)
    q = queries.cuda()
    stream = torch.cuda.current_stream().cuda_stream
    labels = torch.empty((21, 3), dtype=torch.int64, device="cuda")
    wide = torch.empty((21, 3), dtype=torch.float64, device="cuda")
    strided = torch.empty((3, 21), dtype=torch.float32, device="cuda").t()
    for distances in (wide, strided):
        with pytest.raises(TypeError):
            index._search_cuda(q, 3, distances, labels, stream)
    with pytest.raises(TypeError):
        index._search_cuda(q, 3, torch.empty((21, 3), device="cuda"), labels.int(), stream)
    distances = torch.empty((21, 3), dtype=torch.float32, device="cuda")
    index._search_cuda(q, 3, distances, labels, stream)
    assert (labels.cpu() == reference(queries, gallery, 3)[1]).float().mean() > 0.95


def test_cuda_tensors_with_cpu_index(data):
    needs_cuda()
    gallery, queries = data
    index = fe.FlatIndex(DIM)
    index.add(gallery.cuda())
    dist, lab = index.search(queries.cuda(), 3)
    assert lab.is_cuda
    assert torch.equal(lab.cpu(), reference(queries, gallery, 3)[1])


def test_cuda_triplet_loss_autograd():
    needs_cuda()
    e = torch.randn(32, 16, device="cuda", requires_grad=True)
    labels = (torch.arange(32) % 4).cuda()
    loss = fet.triplet_loss(e, labels, "batch_hard")
    loss.backward()
    cpu = fe.triplet_loss(e.detach().cpu(), labels.cpu(), mining="batch_hard")
    assert loss.item() == pytest.approx(cpu.loss_mean, rel=1e-4)
    torch.testing.assert_close(e.grad.cpu(), cpu.grad / cpu.count, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("storage", ["fp32", "fp16"])
def test_cuda_index_pickles_and_matches_cpu(data, storage):
    needs_cuda()
    import pickle

    gallery, queries = data
    index = fe.FlatIndex(DIM, storage=storage, device="cuda")
    index.add(gallery.numpy(), np.arange(300) + 7)
    index.remove(np.arange(7, 40))
    copy = pickle.loads(pickle.dumps(index))
    assert (copy.device, copy.storage, len(copy)) == ("cuda", storage, 267)
    for a, b in zip(index.search(queries.numpy(), 5), copy.search(queries.numpy(), 5)):
        np.testing.assert_array_equal(a, b)
    cpu = fe.FlatIndex(DIM)
    cpu.add(gallery.numpy()[33:], np.arange(33, 300) + 7)
    tol = 1e-2 if storage == "fp16" else 1e-4
    np.testing.assert_allclose(index.search(queries.numpy(), 5)[0], cpu.search(queries.numpy(), 5)[0],
                               rtol=tol, atol=tol)
