"""The README's Python examples run as written, on OpenFace's example photos copied to the
file names the examples use."""

import re
import shutil

import numpy as np
import pytest

from conftest import REPO


def readme_blocks():
    text = (REPO / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.fixture
def photo_dir(shared, dlib_models, tmp_path, monkeypatch):
    ex = shared / "data" / "openface-examples" / "images" / "examples"
    for name, src in {"a.jpg": "lennon-1.jpg", "b.jpg": "lennon-2.jpg",
                      "group.jpg": "longoria-cooper.jpg", "ada1.jpg": "clapton-1.jpg",
                      "ada2.jpg": "clapton-2.jpg", "crowd.jpg": "longoria-cooper.jpg",
                      "obama.jpg": "lennon-1.jpg"}.items():
        shutil.copy(ex / src, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_first_example_runs_and_prints_the_right_answers(photo_dir, capsys):
    block = next(b for b in readme_blocks() if "fe.Pipeline" in b)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "True"  # the two Lennon photos match
    # The crowd photo holds neither enrolled person: both faces unknown.
    assert len(out) == 3 and all("unknown" in line for line in out[1:])


def test_the_drop_in_example_runs(photo_dir):
    block = next(b for b in readme_blocks() if "facenet_engine.face_recognition" in b)
    scope = {"known": [np.zeros(128)]}
    exec(compile(block, "README.md", "exec"), scope)
    assert len(scope["boxes"]) == 1 and scope["encodings"][0].shape == (128,)
