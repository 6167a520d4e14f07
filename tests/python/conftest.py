"""Fixtures shared by the Python tests: the shared data folder, converted model files and the
facenet CLI, each found or made once per session (a missing prerequisite skips, never passes)."""

import os
import pathlib
import shutil
import subprocess

import pytest

import facenet_engine as fe

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def shared() -> pathlib.Path:
    """../shared, or $FACENET_SHARED."""
    path = pathlib.Path(os.environ.get("FACENET_SHARED", REPO.parent / "shared"))
    if not (path / "data").is_dir():
        pytest.skip(f"shared data not found at {path} (set FACENET_SHARED)")
    return path


@pytest.fixture(scope="session")
def dlib_models() -> pathlib.Path:
    """dlib's .dat files (weights/fetch_dlib_models.sh or fetch_dlib_models() fills the folder)."""
    path = pathlib.Path(fe.default_dlib_models_dir())
    if not (path / "shape_predictor_68_face_landmarks.dat").is_file():
        pytest.skip(f"dlib models not in {path} (run weights/fetch_dlib_models.sh)")
    return path


@pytest.fixture(scope="session")
def resnet_model(dlib_models, tmp_path_factory) -> pathlib.Path:
    """dlib's face ResNet as a facenet model file, converted once per session."""
    out = tmp_path_factory.mktemp("models") / "dlib_resnet_v1.safetensors"
    fe.convert_dlib_resnet(dlib_models / "dlib_face_recognition_resnet_model_v1.dat", out)
    return out


@pytest.fixture(scope="session")
def nn4_model(shared, tmp_path_factory) -> pathlib.Path:
    """OpenFace nn4.small2.v1 from the shared CSV export (5 stand-in tensors: real numerics,
    meaningless identities), converted once per session."""
    out = tmp_path_factory.mktemp("models") / "nn4.safetensors"
    fe.convert_openface_csv(shared / "weights" / "openface-nn4.small2.v1-csv-5-standins", out)
    return out


@pytest.fixture(scope="session")
def facenet_cli() -> pathlib.Path:
    """The facenet CLI of the CMake build ($FACENET_CLI, else build/apps/facenet), for comparisons."""
    path = pathlib.Path(os.environ.get("FACENET_CLI", REPO / "build" / "apps" / "facenet"))
    if not path.is_file():
        found = shutil.which("facenet")
        if not found:
            pytest.skip(f"facenet CLI not found at {path} (build it, or set FACENET_CLI)")
        path = pathlib.Path(found)
    return path


def run_cli(cli: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    """Runs the facenet CLI; fails the test with its stderr when it exits non-zero."""
    proc = subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, f"facenet {' '.join(map(str, args))}: {proc.stderr}"
    return proc
