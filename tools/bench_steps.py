"""Step timing shared by the face_recognition drop-in's benchmark and its peer (which run in
different venvs, so this module imports nothing of either)."""

import time


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
