"""facenet_engine.face_recognition against what face_recognition 1.3.0 promises (README and
docstrings, on the shared photos), against the engine's own CLI (same embeddings), and against
the real face_recognition + dlib run in their own venv and process (same boxes and landmarks,
encodings within 1e-4). The real package never shares a process with facenet_engine."""

import json
import os
import pathlib
import subprocess
import sys
import threading

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

import facenet_engine.face_recognition as face_recognition
from facenet_engine.face_recognition import api, face_detection_cli, face_recognition_cli

from conftest import REPO, run_cli

PEER_SH = REPO / "tools" / "peer_face_recognition.sh"
PEER_PY = REPO / "tools" / "peer_face_recognition.py"
N_LFW = 13  # + the 7 OpenFace example photos = 20 photos compared with the real package


def _examples(shared) -> pathlib.Path:
    return shared / "data" / "openface-examples" / "images" / "examples"


def lfw_files(shared, n):
    """The first `n` distinct LFW files in pairs.txt order."""
    root = shared / "data" / "lfw"
    seen = []
    for line in (root / "pairs.txt").read_text().splitlines()[1:]:
        f = line.split("\t")
        pairs = [(f[0], f[1]), (f[0], f[2])] if len(f) == 3 else [(f[0], f[1]), (f[2], f[3])]
        for name, number in pairs:
            path = root / "lfw-deepfunneled" / name / f"{name}_{int(number):04d}.jpg"
            if path not in seen:
                seen.append(path)
        if len(seen) >= n:
            return seen[:n]
    return seen


@pytest.fixture(scope="module")
def photos(shared):
    return sorted(_examples(shared).glob("*.jpg")) + lfw_files(shared, N_LFW)


@pytest.fixture(scope="module")
def example(shared):
    """name -> loaded RGB image of the OpenFace examples."""
    return {p.stem: face_recognition.load_image_file(p) for p in _examples(shared).glob("*.jpg")}


def _first_encoding(img):
    found = face_recognition.face_encodings(img)
    assert len(found) == 1
    return found[0]


# --- what face_recognition's README and docstrings promise ---------------------------------


def test_package_names_match_face_recognition():
    for name in ["load_image_file", "face_locations", "batch_face_locations", "face_landmarks",
                 "face_encodings", "compare_faces", "face_distance"]:
        assert getattr(face_recognition, name) is getattr(api, name)
    assert face_recognition.__author__ == "Adam Geitgey"
    assert face_recognition.__version__ == "1.2.3"  # what 1.3.0's __init__ says


def test_load_image_file_modes(shared):
    path = _examples(shared) / "lennon-1.jpg"
    rgb = face_recognition.load_image_file(path)
    assert rgb.shape == (1050, 1400, 3) and rgb.dtype == np.uint8
    gray = face_recognition.load_image_file(path, mode="L")
    assert gray.shape == (1050, 1400)
    with open(path, "rb") as f:  # a file object, as the docstring allows
        np.testing.assert_array_equal(face_recognition.load_image_file(f), rgb)


def test_face_locations_two_faces_in_bounds(example):
    img = example["longoria-cooper"]
    locations = face_recognition.face_locations(img)
    assert len(locations) == 2
    for top, right, bottom, left in locations:
        assert all(isinstance(v, int) for v in (top, right, bottom, left))
        assert 0 <= top < bottom <= img.shape[0] and 0 <= left < right <= img.shape[1]
    # Longoria is left, Cooper right: two different, side-by-side boxes.
    lefts = sorted(loc[3] for loc in locations)
    assert lefts[1] - lefts[0] > 50


def test_upsampling_finds_small_faces_only_when_asked(example):
    img = np.array(PIL.Image.fromarray(example["longoria-cooper"]).resize((146, 236)))
    assert len(face_recognition.face_locations(img, number_of_times_to_upsample=0)) == 0
    assert len(face_recognition.face_locations(img, number_of_times_to_upsample=2)) == 2


def test_recognition_as_in_readme(example):
    known = [_first_encoding(example["lennon-1"]), _first_encoding(example["clapton-1"])]
    assert face_recognition.compare_faces(known, _first_encoding(example["lennon-2"])) == [True, False]
    assert face_recognition.compare_faces(known, _first_encoding(example["clapton-2"])) == [False, True]
    for unknown in face_recognition.face_encodings(example["longoria-cooper"]):
        assert face_recognition.compare_faces(known, unknown) == [False, False]
    distances = face_recognition.face_distance(known, _first_encoding(example["lennon-2"]))
    assert isinstance(distances, np.ndarray) and distances.shape == (2,)
    assert distances[0] < 0.6 < distances[1]
    assert face_recognition.compare_faces(known, known[0], tolerance=0.0) == [True, False]


def test_encodings_are_float64_128(example):
    (enc,) = face_recognition.face_encodings(example["clapton-2"])
    assert enc.shape == (128,) and enc.dtype == np.float64 and np.isfinite(enc).all()


def test_face_distance_empty():
    for empty in ([], np.array([])):
        d = face_recognition.face_distance(empty, np.zeros(128))
        assert isinstance(d, np.ndarray) and d.shape == (0,)
        assert face_recognition.compare_faces(empty, np.zeros(128)) == []


def test_face_landmarks_keys_and_counts(example):
    img = example["clapton-2"]
    ((top, right, bottom, left),) = face_recognition.face_locations(img)
    (large,) = face_recognition.face_landmarks(img)
    counts = {"chin": 17, "left_eyebrow": 5, "right_eyebrow": 5, "nose_bridge": 4,
              "nose_tip": 5, "left_eye": 6, "right_eye": 6, "top_lip": 12, "bottom_lip": 12}
    assert {k: len(v) for k, v in large.items()} == counts
    for x, y in large["nose_tip"] + large["left_eye"] + large["right_eye"]:
        assert isinstance(x, int) and left <= x <= right and top <= y <= bottom
    # The image's left eye (smaller x) is face_recognition's "left_eye".
    assert np.mean([p[0] for p in large["left_eye"]]) < np.mean([p[0] for p in large["right_eye"]])
    (small,) = face_recognition.face_landmarks(img, model="small")
    assert {k: len(v) for k, v in small.items()} == {"nose_tip": 1, "left_eye": 2, "right_eye": 2}
    with pytest.raises(ValueError):
        face_recognition.face_landmarks(img, model="medium")


def test_known_locations_skip_detection(example):
    img = example["longoria-cooper"]
    raw = [api._rect_to_css(r) for r in api._raw_face_locations(img)]
    # The detector's own boxes given back: the same encodings, in the given order.
    detected = face_recognition.face_encodings(img)
    given = face_recognition.face_encodings(img, known_face_locations=raw[::-1])
    assert len(given) == 2
    np.testing.assert_allclose(given[0], detected[1], atol=1e-6)
    np.testing.assert_allclose(given[1], detected[0], atol=1e-6)
    assert face_recognition.face_encodings(img, known_face_locations=[]) == []
    assert face_recognition.face_landmarks(img, face_locations=[]) == []
    shapes = api._raw_face_landmarks(img, raw[:1], model="small")
    assert len(shapes) == 1 and shapes[0].num_parts == 5
    assert api._rect_to_css(shapes[0].rect) == raw[0]


def test_jitter_and_large_model_are_close_but_not_equal(example):
    img = example["clapton-2"]
    (plain,) = face_recognition.face_encodings(img)
    (jittered,) = face_recognition.face_encodings(img, num_jitters=3)
    (large,) = face_recognition.face_encodings(img, model="large")
    for other in (jittered, large):
        d = np.linalg.norm(other - plain)
        assert 1e-4 < d < 0.3, d
    (again,) = face_recognition.face_encodings(img, num_jitters=3)
    np.testing.assert_array_equal(again, jittered)  # the engine's jitter stream is seeded


def test_dlib_shaped_helpers(example):
    img = example["clapton-2"]
    (rect,) = api._raw_face_locations(img)
    assert rect.width() == rect.right() - rect.left() + 1
    assert api._css_to_rect(api._rect_to_css(rect)) == rect
    assert api._trim_css_to_bounds((-5, 500, 450, -1), (400, 400, 3)) == (0, 400, 400, 0)
    (shape,) = api._raw_face_landmarks(img)
    assert shape.num_parts == 68 and shape.rect == rect
    assert (shape.part(10).x, shape.part(10).y) == (shape.parts()[10].x, shape.parts()[10].y)


def test_cnn_detections_have_rect_and_confidence(shared):
    img = face_recognition.load_image_file(lfw_files(shared, 1)[0])
    (det,) = api._raw_face_locations(img, 0, model="cnn")
    assert det.confidence > 0.5 and det.rect.width() > 60
    assert face_recognition.face_locations(img, 0, "cnn") == [
        api._trim_css_to_bounds(api._rect_to_css(det.rect), img.shape)]
    batched = face_recognition.batch_face_locations([img, img], number_of_times_to_upsample=0)
    assert batched == [face_recognition.face_locations(img, 0, "cnn")] * 2


def test_strided_and_gray_images(example):
    img = example["clapton-2"]
    padded = np.zeros((img.shape[0], img.shape[1] + 8, 3), np.uint8)
    padded[:, 4:-4] = img
    view = padded[:, 4:-4]  # the same pixels, rows 8 pixels apart: not C-contiguous
    assert not view.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(face_recognition.face_encodings(view)[0],
                                  face_recognition.face_encodings(img)[0])
    gray = np.array(PIL.Image.fromarray(img).convert("L"))
    ((t, r, b, l),) = face_recognition.face_locations(gray)
    ((t0, r0, b0, l0),) = face_recognition.face_locations(img)
    assert abs(t - t0) + abs(r - r0) + abs(b - b0) + abs(l - l0) < 40


def test_threads_share_one_pipeline(example):
    imgs = [example[n] for n in ("clapton-1", "clapton-2", "lennon-2", "carell")]
    serial = [face_recognition.face_encodings(i) for i in imgs]
    out = [None] * 8

    def work(k):
        out[k] = face_recognition.face_encodings(imgs[k % 4])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(8):
        np.testing.assert_allclose(np.array(out[k]), np.array(serial[k % 4]), atol=1e-6)
    assert api._get_pipeline() is api._get_pipeline()


# --- the command-line tools ----------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_folders(shared, tmp_path_factory):
    """known/ (lennon.jpg, clapton.jpg) and unknown/ (the other photos, one 2400 px wide)."""
    root = tmp_path_factory.mktemp("cli")
    src = _examples(shared)
    (root / "known").mkdir()
    (root / "unknown").mkdir()
    for name, person in (("lennon-1", "lennon"), ("clapton-1", "clapton")):
        (root / "known" / f"{person}.jpg").write_bytes((src / f"{name}.jpg").read_bytes())
    for name in ("lennon-2", "clapton-2", "longoria-cooper"):
        (root / "unknown" / f"{name}.jpg").write_bytes((src / f"{name}.jpg").read_bytes())
    big = PIL.Image.open(src / "clapton-2.jpg").resize((2400, 2400), PIL.Image.BICUBIC)
    big.save(root / "unknown" / "clapton-big.png")
    (root / "unknown" / "notes.txt").write_text("not an image")
    return root


def _lines(output):
    return sorted(line for line in output.splitlines() if line)


def test_face_recognition_cli_names_people(cli_folders):
    u = cli_folders / "unknown"
    result = CliRunner().invoke(face_recognition_cli.main, [str(cli_folders / "known"), str(u)])
    assert result.exit_code == 0, result.output
    assert _lines(result.output) == sorted([
        f"{u / 'lennon-2.jpg'},lennon", f"{u / 'clapton-2.jpg'},clapton",
        f"{u / 'clapton-big.png'},clapton",
        f"{u / 'longoria-cooper.jpg'},unknown_person", f"{u / 'longoria-cooper.jpg'},unknown_person"])


def test_face_recognition_cli_distance_uses_the_shrunk_image(cli_folders):
    known = cli_folders / "known"
    big = cli_folders / "unknown" / "clapton-big.png"
    result = CliRunner().invoke(face_recognition_cli.main,
                                [str(known), str(big), "--show-distance", "1"])
    assert result.exit_code == 0, result.output
    (line,) = _lines(result.output)
    path, name, distance = line.split(",")
    assert (path, name) == (str(big), "clapton")
    thumb = PIL.Image.open(big).convert("RGB")
    thumb.thumbnail((1600, 1600), PIL.Image.LANCZOS)
    clapton = _first_encoding(face_recognition.load_image_file(known / "clapton.jpg"))
    expected = face_recognition.face_distance([clapton], _first_encoding(np.array(thumb)))[0]
    assert float(distance) == pytest.approx(expected, abs=1e-9)
    strict = CliRunner().invoke(face_recognition_cli.main,
                                [str(known), str(big), "--tolerance", str(expected / 2)])
    assert _lines(strict.output) == [f"{big},unknown_person"]


def test_face_recognition_cli_warns_and_reports_no_faces(cli_folders, tmp_path):
    known = tmp_path / "known"
    known.mkdir()
    blank = known / "blank.png"
    PIL.Image.new("RGB", (200, 200), (128, 128, 128)).save(blank)
    result = CliRunner().invoke(face_recognition_cli.main, [str(known), str(blank)])
    assert result.exit_code == 0
    assert f"WARNING: No faces found in {blank}. Ignoring file." in result.output
    assert f"{blank},no_persons_found" in result.output.splitlines()


def _run_module(module, *args):
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_face_recognition_cli_process_pool_gives_the_same_lines(cli_folders):
    args = [cli_folders / "known", cli_folders / "unknown", "--show-distance", "true"]
    one = _run_module("facenet_engine.face_recognition.face_recognition_cli", *args)
    two = _run_module("facenet_engine.face_recognition.face_recognition_cli", *args, "--cpus", "2")
    assert len(_lines(one)) == 5 and _lines(two) == _lines(one)


def test_face_detection_cli_prints_css_boxes(cli_folders, example):
    u = cli_folders / "unknown"
    result = CliRunner().invoke(face_detection_cli.main, [str(u / "longoria-cooper.jpg")])
    assert result.exit_code == 0, result.output
    expected = [f"{u / 'longoria-cooper.jpg'}," + ",".join(map(str, loc))
                for loc in face_recognition.face_locations(example["longoria-cooper"], 0)]
    assert len(expected) == 2 and _lines(result.output) == sorted(expected)
    folder = _run_module("facenet_engine.face_recognition.face_detection_cli", u, "--cpus", "2")
    assert set(expected) <= set(_lines(folder))
    assert {line.split(",")[0] for line in _lines(folder)} == {
        str(u / n) for n in ("lennon-2.jpg", "clapton-2.jpg", "clapton-big.png", "longoria-cooper.jpg")}


# --- the engine's own CLI ------------------------------------------------------------------


def test_embeddings_equal_facenet_encode(facenet_cli, resnet_model, photos, tmp_path):
    # PNG copies: the CLI decodes with OpenCV, load_image_file with PIL, and two JPEG decoders
    # may round differently; lossless files compare the detection-to-embedding path alone.
    pngs = []
    for p in photos[:10]:
        out = tmp_path / f"{p.stem}.png"
        PIL.Image.open(p).convert("RGB").save(out)
        pngs.append(out)
    proc = run_cli(facenet_cli, "encode", "--model", resnet_model, "--align", "largest",
                   "--upsample", "1", *pngs)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == len(pngs)
    for line in lines:
        img = face_recognition.load_image_file(line["image"])
        left, top, right, bottom = line["box"]
        (enc,) = face_recognition.face_encodings(img, [(top, right, bottom, left)])
        assert np.abs(enc - np.array(line["embedding"])).max() < 1e-5, line["image"]
        css = [api._rect_to_css(r) for r in api._raw_face_locations(img)]
        assert (top, right, bottom, left) in css, line["image"]


# --- the real face_recognition + dlib, in their own venv and process -----------------------


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory):
    """What the real face_recognition computes for the photos (JSON from its own venv)."""
    made = subprocess.run(["bash", str(PEER_SH)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"no face_recognition venv: {made.stderr[-500:]}")
    python = made.stdout.strip().splitlines()[-1]
    out = tmp_path_factory.mktemp("reference") / "reference.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    subprocess.run([python, str(PEER_PY), "reference", str(out), *map(str, photos)],
                   check=True, env=env)
    cnn_out = out.with_name("cnn.json")
    subprocess.run([python, str(PEER_PY), "reference", "--cnn", str(cnn_out),
                    *map(str, photos[-3:])], check=True, env=env)
    return {r["image"]: r for r in json.loads(out.read_text())}, json.loads(cnn_out.read_text())


def _tuples(landmark_dicts):
    return [{k: [tuple(p) for p in v] for k, v in d.items()} for d in landmark_dicts]


def _close(mine, theirs, name):
    assert len(mine) == len(theirs), name
    if mine:
        err = np.abs(np.array(mine) - np.array(theirs)).max()
        assert err < 1e-4, f"{name}: max |diff| {err}"


def test_same_as_real_face_recognition(reference, photos):
    records, _ = reference
    assert len(records) == len(photos) == 20
    faces = 0
    for path in photos:
        ref = records[str(path)]
        img = face_recognition.load_image_file(path)
        assert list(img.shape) == ref["shape"]
        raw = [[r.left(), r.top(), r.right(), r.bottom()] for r in api._raw_face_locations(img)]
        assert raw == ref["raw_hog"], path
        assert [list(b) for b in face_recognition.face_locations(img, 0)] == ref["hog_up0"], path
        assert [list(b) for b in face_recognition.face_locations(img)] == ref["hog_up1"], path
        assert face_recognition.face_landmarks(img) == _tuples(ref["landmarks_large"]), path
        assert face_recognition.face_landmarks(img, model="small") == _tuples(ref["landmarks_small"]), path
        known = [tuple(k) for k in ref["known"]]
        assert face_recognition.face_landmarks(img, known) == _tuples(ref["landmarks_known"]), path
        _close(face_recognition.face_encodings(img), ref["encodings_small"], f"{path} small")
        _close(face_recognition.face_encodings(img, model="large"), ref["encodings_large"], f"{path} large")
        _close(face_recognition.face_encodings(img, known), ref["encodings_known"], f"{path} known")
        faces += len(ref["encodings_small"])
    assert faces >= 20


def test_cnn_same_as_real_face_recognition(reference):
    _, cnn = reference
    assert len(cnn) == 3
    for ref in cnn:
        img = face_recognition.load_image_file(ref["image"])
        assert [list(b) for b in face_recognition.face_locations(img, 0, "cnn")] == ref["cnn_up0"]
        mine = [d.confidence for d in api._raw_face_locations(img, 0, "cnn")]
        np.testing.assert_allclose(mine, ref["cnn_confidence"], atol=1e-3)
