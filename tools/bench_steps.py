"""Helpers shared by the Python benchmarks (the face_recognition drop-in's, its peer's and the
HTTP service's), which run in different venvs: this module imports nothing of theirs."""

import os
import pathlib
import platform
import re
import subprocess
import time

TOOLS = os.path.dirname(os.path.abspath(__file__))
SHARED = pathlib.Path(os.environ.get("FACENET_SHARED", pathlib.Path(TOOLS).parents[1] / "shared"))


def ms_per_item(steps, n):
    """{name: ms per item} for each `step(i)` over i in range(n), after one untimed step(0)."""
    out = {}
    for name, step in steps.items():
        step(0)
        start = time.perf_counter()
        for i in range(n):
            step(i)
        out[name] = 1000 * (time.perf_counter() - start) / n
    return out


def machine():
    """The CPU model, core count, the ISA extensions that matter here, and the load average."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    field = dict(re.findall(r"^([^:]+):\s*(.*)$", lscpu, flags=re.M))
    flags = field.get("Flags", "").split()
    isa = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")
           if f in flags]
    return {"cpu": field.get("Model name", platform.processor()), "cpus": os.cpu_count(),
            "isa": isa, "load_average": os.getloadavg()}


def lfw_first_files(n):
    """The first `n` distinct files of LFW's pairs.txt (../shared), in file order."""
    root = SHARED / "data" / "lfw"
    seen, order = set(), []
    for line in (root / "pairs.txt").read_text().splitlines()[1:]:
        f = line.split("\t")
        pairs = [(f[0], f[1]), (f[0], f[2])] if len(f) == 3 else [(f[0], f[1]), (f[2], f[3])]
        for name, number in pairs:
            path = str(root / "lfw-deepfunneled" / name / f"{name}_{int(number):04d}.jpg")
            if path not in seen:
                seen.add(path)
                order.append(path)
    if len(order) < n:
        raise SystemExit(f"pairs.txt names only {len(order)} files, {n} asked")
    return order[:n]


def peer_face_recognition_python():
    """The python of the real face_recognition's venv (tools/peer_face_recognition.sh makes it
    once); SystemExit with the script's error when it cannot."""
    made = subprocess.run(["bash", os.path.join(TOOLS, "peer_face_recognition.sh")],
                          capture_output=True, text=True)
    if made.returncode != 0:
        raise SystemExit(f"no face_recognition venv: {made.stderr[-800:]}")
    return made.stdout.strip().splitlines()[-1]
