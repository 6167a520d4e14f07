"""face_recognition 1.3.0's own test suite, unchanged, against the drop-in: the sdist from PyPI
(sha256-pinned, cached) is unpacked into a temporary folder and its tests/test_face_recognition.py
runs under pytest in a subprocess whose `face_recognition` is facenet_engine.face_recognition.
Every upstream test must pass (the CNN ones too: minutes on a CPU)."""

import hashlib
import os
import pathlib
import re
import subprocess
import sys
import tarfile

import pytest

SDIST = "face_recognition-1.3.0.tar.gz"
SDIST_SHA256 = "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec"
SUITE = "face_recognition-1.3.0/tests/"

# Put in the unpacked folder: makes `import face_recognition[.api|._cli]` the drop-in, and
# refuses to run if the real package were imported instead.
ALIAS_CONFTEST = '''
import sys
import facenet_engine.face_recognition as dropin
from facenet_engine.face_recognition import api, face_detection_cli, face_recognition_cli
sys.modules["face_recognition"] = dropin
for sub in (api, face_detection_cli, face_recognition_cli):
    sys.modules["face_recognition." + sub.__name__.rsplit(".", 1)[1]] = sub

def pytest_report_header(config):
    import face_recognition.api
    assert face_recognition.api.__name__ == "facenet_engine.face_recognition.api"
    return "face_recognition is " + face_recognition.api.__file__
'''


def _cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("FACENET_CACHE", pathlib.Path.home() / ".cache" / "facenet"))


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def upstream_sdist() -> pathlib.Path:
    """The pinned sdist in the cache, downloaded with pip when missing (skips offline)."""
    cache = _cache_dir()
    path = cache / SDIST
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "face_recognition==1.3.0", "-d", str(cache)], capture_output=True, text=True)
        if proc.returncode != 0 or not path.is_file():
            pytest.skip(f"cannot download {SDIST}: {proc.stderr[-500:]}")
    digest = _sha256(path)
    assert digest == SDIST_SHA256, f"{path}: sha256 {digest}, expected {SDIST_SHA256}"
    return path


@pytest.fixture(scope="module")
def upstream_tests(upstream_sdist, tmp_path_factory) -> pathlib.Path:
    """The sdist's tests/ (test file + images) unpacked, with the aliasing conftest above it."""
    root = tmp_path_factory.mktemp("face_recognition_upstream")
    with tarfile.open(upstream_sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(SUITE) and m.isfile()]
        assert members, f"{upstream_sdist} has no {SUITE}"
        for m in members:
            m.name = m.name[len("face_recognition-1.3.0/"):]
            tar.extract(m, root)
    (root / "conftest.py").write_text(ALIAS_CONFTEST)
    return root


def test_upstream_suite_passes_unchanged(upstream_tests):
    test_file = upstream_tests / "tests" / "test_face_recognition.py"
    expected = len(re.findall(r"^\s+def test_", test_file.read_text(), flags=re.M))
    assert expected == 30, f"upstream suite has {expected} tests, expected 1.3.0's 30"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-rfE", "-p", "no:cacheprovider",
         "--rootdir", str(upstream_tests), str(test_file)],
        cwd=upstream_tests, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert "face_recognition is " in out and "facenet_engine" in out, out[-3000:]
    assert proc.returncode == 0, out[-6000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) == expected, out[-3000:]
    assert not re.search(r"\d+ (failed|skipped|error)", out), out[-3000:]
