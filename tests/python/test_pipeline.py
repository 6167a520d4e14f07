"""facenet_engine.Pipeline: the front door from Python against the CLI, bad inputs, threads,
pickling, known boxes, progress."""

import concurrent.futures
import json
import pickle
import threading

import numpy as np
import pytest
from PIL import Image

import facenet_engine as fe

from conftest import run_cli

EXAMPLES = ("lennon-1.jpg", "lennon-2.jpg", "clapton-1.jpg", "clapton-2.jpg", "longoria-cooper.jpg")


@pytest.fixture(scope="module")
def photos(shared):
    d = shared / "data" / "openface-examples" / "images" / "examples"
    return [d / name for name in EXAMPLES]


@pytest.fixture(scope="module")
def pipeline(resnet_model):
    return fe.Pipeline(resnet_model, threads=2)


def cli_embeddings(cli, model, files, *extra):
    out = run_cli(cli, "encode", "--model", model, "--align", "largest", *extra, *files).stdout
    return np.array([json.loads(line)["embedding"] for line in out.splitlines()], np.float32)


def test_embeddings_equal_the_clis(pipeline, resnet_model, facenet_cli, photos):
    py = pipeline.encode(photos)
    assert py.shape == (len(photos), 128) and py.dtype == np.float32
    cli = cli_embeddings(facenet_cli, resnet_model, photos)
    np.testing.assert_allclose(py, cli, atol=1e-5)
    # The same people are near, different people far (dlib's 0.6 on plain L2).
    assert np.linalg.norm(py[0] - py[1]) < 0.6
    assert np.linalg.norm(py[0] - py[2]) > 0.6


def test_pixels_bytes_and_paths_give_the_same_embedding(pipeline, photos):
    path = photos[0]
    rgb = np.asarray(Image.open(path).convert("RGB"))
    by_path = pipeline.encode(path)
    assert by_path.shape == (128,)
    np.testing.assert_allclose(pipeline.encode(path.read_bytes()), by_path, atol=1e-6)
    np.testing.assert_allclose(pipeline.encode(rgb), by_path, atol=1e-5)
    np.testing.assert_allclose(pipeline.encode(rgb[:, :, ::-1], color="bgr"), by_path, atol=1e-5)
    # A view with a row stride (a crop of a wider array) and a stacked batch.
    wide = np.zeros((rgb.shape[0], rgb.shape[1] + 40, 3), np.uint8)
    wide[:, 20:20 + rgb.shape[1]] = rgb
    np.testing.assert_allclose(pipeline.encode(wide[:, 20:20 + rgb.shape[1]]), by_path, atol=1e-5)
    stacked = pipeline.encode(np.stack([rgb, rgb]))
    assert stacked.shape == (2, 128)
    np.testing.assert_allclose(stacked[1], by_path, atol=1e-5)


def test_all_faces_and_the_detectors_order(pipeline, photos):
    two = photos[4]
    largest_first = pipeline.encode(two, align="all")
    assert largest_first.shape == (2, 128)
    detected = pipeline.detect(two, align="all-as-detected")
    boxes = [f.box for f in detected.faces]
    areas = [(b[2] - b[0] + 1) * (b[3] - b[1] + 1) for b in boxes]
    by_area = pipeline.detect(two, align="all")
    assert sorted(areas, reverse=True) == [
        (b[2] - b[0] + 1) * (b[3] - b[1] + 1) for b in (f.box for f in by_area.faces)]
    for f in detected.faces:
        assert f.landmarks.shape == (68, 2) and f.landmarks5.shape == (5, 2)
        left, top, right, bottom = f.box
        assert left <= f.landmarks[30, 0] <= right and top <= f.landmarks[30, 1] <= bottom


def test_known_boxes_skip_detection(pipeline, photos):
    r = pipeline.detect(photos[4], align="all")
    boxes = [r.faces[1].box, r.faces[0].box]
    given = pipeline.process(photos[4], "encode", boxes=boxes)
    assert [f.box for f in given.faces] == boxes
    assert all(f.score == 0 for f in given.faces)
    detected = pipeline.encode(photos[4], align="all")
    np.testing.assert_allclose(given.faces[0].embedding, detected[1], atol=1e-6)
    none = pipeline.process(photos[4], "encode", boxes=[])
    assert none.ok and none.faces == []
    with pytest.raises(fe.EngineError, match="face box 0"):
        pipeline.process(photos[4], "encode", boxes=[(10, 10, 5, 20)])


def test_alignment_from_68_points_is_another_chip_of_the_same_face(pipeline, photos):
    five = pipeline.encode(photos[0])
    sixty_eight = pipeline.encode(photos[0], alignment="dlib-chip-150-0.25-68")
    assert 0 < np.linalg.norm(five - sixty_eight) < 0.3
    chips = pipeline.align(photos[0], alignment="dlib-chip-150-0.25-68").faces[0].chips
    assert chips.shape == (1, 150, 150, 3) and chips.std() > 10


def test_chips_come_in_the_calls_color_order(pipeline, photos):
    rgb = pipeline.align(photos[2]).faces[0].chips
    bgr = pipeline.align(photos[2], color="bgr").faces[0].chips
    np.testing.assert_array_equal(rgb, bgr[..., ::-1])
    assert not np.array_equal(rgb, bgr)
    mirrored = pipeline.align(photos[2], mirror=True).faces[0].chips
    assert mirrored.shape == (2, 150, 150, 3)
    np.testing.assert_array_equal(mirrored[1], mirrored[0][:, ::-1])


def test_bad_inputs_are_named_and_the_good_ones_kept(pipeline, photos, tmp_path):
    junk = tmp_path / "not-an-image.jpg"
    junk.write_bytes(b"\xff\xd8 this is no jpeg")
    missing = tmp_path / "missing.jpg"
    with pytest.raises(fe.InputError) as info:
        pipeline.encode([photos[0], missing, junk])
    assert str(missing) in str(info.value) and "1 more failed" in str(info.value)
    results = info.value.results
    assert [r.status for r in results] == ["ok", "unreadable", "undecodable"]
    assert str(junk) in results[2].error
    assert results[0].faces[0].embedding.shape == (128,)
    kept = pipeline.process([photos[0], missing], errors="return")
    assert [r.ok for r in kept] == [True, False]
    with pytest.raises(fe.EngineError, match="upsample 7"):
        pipeline.encode(photos[0], upsample=7)
    with pytest.raises(fe.EngineError, match="unknown detector"):
        pipeline.encode(photos[0], detector="nope")
    with pytest.raises(TypeError, match="uint8"):
        pipeline.encode(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(TypeError, match="unknown option"):
        pipeline.encode(photos[0], upsampel=1)
    with pytest.raises(fe.EngineError, match="cannot read model file"):
        fe.Pipeline("/nonexistent/model.safetensors")


def test_a_photo_without_a_face_gives_a_nan_row(pipeline, photos):
    blank = np.full((200, 300, 3), 128, np.uint8)
    rows = pipeline.encode([blank, photos[0]])
    assert np.isnan(rows[0]).all() and np.isfinite(rows[1]).all()
    assert pipeline.detect(blank).faces == []


def test_threads_calling_at_once_get_their_own_answers(pipeline, photos):
    expected = pipeline.encode(photos)

    def one(i):
        return i, pipeline.encode(photos[i % len(photos)])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for i, row in pool.map(one, range(40)):
            np.testing.assert_allclose(row, expected[i % len(photos)], atol=1e-5)


def test_pickled_pipeline_encodes_the_same(pipeline, photos):
    clone = pickle.loads(pickle.dumps(pipeline))
    assert clone.model == pipeline.model and clone.dim == 128
    np.testing.assert_allclose(clone.encode(photos[0]), pipeline.encode(photos[0]), atol=1e-6)


def test_progress_is_reported_for_every_image(pipeline, photos):
    seen = []
    pipeline.encode(photos, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i + 1, len(photos)) for i in range(len(photos))]


def test_detection_only_pipeline(photos):
    p = fe.Pipeline()
    assert p.dim == 0
    r = p.detect(photos[4])
    assert len(r.faces) == 2
    with pytest.raises(fe.InputError):
        p.encode(photos[0])


def test_enrol_and_identify_through_a_gallery(pipeline, photos, tmp_path):
    path = tmp_path / "people.db"
    with fe.Gallery.create(path) as g:
        pipeline.enroll(g, "lennon", photos[0])
        pipeline.enroll(g, "clapton", photos[2])
        assert sorted(i.name for i in g.identities()) == ["clapton", "lennon"]
    pipeline_rows = pipeline.set_gallery(path)
    assert pipeline_rows == 2
    results = pipeline.identify([photos[1], photos[3], photos[4]], threshold=0.6)
    assert results[0].faces[0].match.best == "lennon"
    assert results[1].faces[0].match.best == "clapton"
    assert {f.match.best for f in results[2].faces} == {"unknown"}
    assert 0 < results[0].faces[0].match.distance < 0.6
    with fe.Gallery.open(path) as g:
        v = g.verify("lennon", pipeline.encode(photos[1]), threshold=0.6)
        assert v.match and abs(v.distance - results[0].faces[0].match.distance) < 1e-5


def test_crops_are_encoded_whole(pipeline, photos):
    chip = pipeline.align(photos[0]).faces[0].chips[0]
    whole = pipeline.encode(chip, detector="none")
    np.testing.assert_allclose(whole, pipeline.encode(photos[0]), atol=1e-5)


def test_a_run_stopped_by_its_progress_callback_frees_nothing_in_use(photos):
    p = fe.Pipeline(workers=2)  # detection only: many big images, each slow to prepare

    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop

    with pytest.raises(Stop):
        p.detect([np.full((900, 900, 3), 128, np.uint8) for _ in range(16)], progress=stop)
    # Pipeline.run waited for what it had queued: nothing still reads the freed arrays.
    assert p.stats()["in_flight"] == 0
    assert len(p.detect(photos[4]).faces) == 2


def test_torch_tensors_and_other_array_likes_are_images(pipeline, photos):
    torch = pytest.importorskip("torch")
    rgb = np.array(Image.open(photos[0]).convert("RGB"))
    want = pipeline.encode(photos[0])
    np.testing.assert_allclose(pipeline.encode(torch.from_numpy(rgb)), want, atol=1e-5)
    np.testing.assert_allclose(pipeline.encode([torch.from_numpy(rgb)])[0], want, atol=1e-5)
    np.testing.assert_allclose(pipeline.encode(Image.open(photos[0]).convert("RGB")), want,
                               atol=1e-5)
    with pytest.raises(TypeError, match="uint8"):
        pipeline.encode([torch.zeros((50, 50, 3))])  # float pixels are not silently truncated
    with pytest.raises(TypeError, match="uint8"):
        pipeline.encode(rgb.astype(np.float32) / 255)
    flipped = pipeline.encode(np.ascontiguousarray(rgb[::-1])[::-1])  # a negative row stride
    np.testing.assert_allclose(flipped, want, atol=1e-5)


def test_box_errors_name_the_image_and_the_box(pipeline, photos):
    with pytest.raises(fe.EngineError, match=r"boxes\[0\]\[1\].*4 integers"):
        pipeline.process(photos[0], "detect", boxes=[(1, 2, 30, 30), (1.5, 2, 30, 30)])
    with pytest.raises(fe.EngineError, match=r"boxes\[0\]\[0\]"):
        pipeline.process(photos[0], "detect", boxes=[(1, 2, 30)])
    with pytest.raises(fe.EngineError, match="2 lists of boxes for 1 images"):
        pipeline.process([photos[0]], "detect", boxes=[None, None])


def test_results_and_errors_pickle(pipeline, photos, tmp_path):
    r = pipeline.align(photos[4], align="all")
    back = pickle.loads(pickle.dumps(r))
    assert (back.name, back.status, back.width, back.height) == (r.name, r.status, r.width,
                                                                  r.height)
    assert [f.box for f in back.faces] == [f.box for f in r.faces]
    np.testing.assert_array_equal(back.faces[1].landmarks, r.faces[1].landmarks)
    np.testing.assert_array_equal(back.faces[0].chips, r.faces[0].chips)
    enc = pickle.loads(pickle.dumps(pipeline.process(photos[0])))
    np.testing.assert_array_equal(enc.faces[0].embedding, pipeline.encode(photos[0]))
    with pytest.raises(fe.InputError) as info:
        pipeline.encode(tmp_path / "missing.jpg")
    err = pickle.loads(pickle.dumps(info.value))
    assert str(err) == str(info.value) and err.results[0].status == "unreadable"


def test_a_pickled_pipeline_keeps_its_gallery(pipeline, photos, tmp_path):
    path = tmp_path / "g.db"
    with fe.Gallery.create(path) as g:
        pipeline.enroll(g, "lennon", photos[0])
    p = fe.Pipeline(pipeline.model, threads=1)
    p.set_gallery(path)
    clone = pickle.loads(pickle.dumps(p))
    match = clone.identify(photos[1], threshold=0.6).faces[0].match
    assert match.best == "lennon" and match.distance < 0.6
    assert match == p.identify(photos[1], threshold=0.6).faces[0].match


def test_thresholds_are_checked(pipeline, photos, tmp_path):
    path = tmp_path / "g.db"
    with fe.Gallery.create(path) as g:
        pipeline.enroll(g, "lennon", photos[0])
    pipeline.set_gallery(path)
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(fe.EngineError, match="threshold"):
            pipeline.identify(photos[1], threshold=bad)
    # None: the model's own threshold (dlib's 0.6), not the 0.7 fallback.
    assert pipeline.default_threshold == pytest.approx(0.6)


def test_constructor_defaults_hold_in_encode(resnet_model, pipeline, photos):
    chip = pipeline.align(photos[0]).faces[0].chips[0]
    crops = fe.Pipeline(resnet_model, detector="none", align="all", threads=1)
    rows = crops.encode([chip, chip])
    assert isinstance(rows, np.ndarray) and rows.shape == (2, 128)
