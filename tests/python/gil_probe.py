"""Whether a call releases the GIL, judged by how far a Python loop on another thread gets while
the call runs: a count of loop turns, compared with the turns the same loop makes alone."""

import sys
import threading
import time

import pytest


def _stamp_until(stop: threading.Event) -> list:
    stamps = []
    while not stop.is_set():
        stamps.append(time.perf_counter())
    return stamps


def progress_during(call, poke=None, baseline_s: float = 0.1):
    """Runs `call()` on a worker thread, and `poke()` over and over on a third thread while it
    runs, as this thread counts loop turns. Returns (seconds the call took, share): the turns
    made during the call over the turns the loop makes alone in that time. The share is near 1
    (lower on a busy machine) when neither held the GIL, and near 0 when one held it for the
    whole call: the GIL is handed over only every switch interval (1 ms here), and a C++ call
    that keeps it never gives it up."""
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    try:
        alone = threading.Event()
        threading.Timer(baseline_s, alone.set).start()
        baseline = _stamp_until(alone)
        rate = len(baseline) / (baseline[-1] - baseline[0])

        span, started, done = {}, threading.Event(), threading.Event()

        def worker():
            started.set()  # before the start stamp: setting an Event can hand the GIL over
            span["start"] = time.perf_counter()
            try:
                call()
            finally:
                span["end"] = time.perf_counter()
                done.set()

        def poker():
            started.wait()
            while not done.is_set():
                poke()

        threads = [threading.Thread(target=worker)]
        if poke is not None:
            threads.append(threading.Thread(target=poker))
        for t in threads:
            t.start()
        stamps = _stamp_until(done)
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old_interval)
    duration = span["end"] - span["start"]
    during = sum(1 for s in stamps if span["start"] < s < span["end"])
    return duration, during / (rate * duration)


def assert_python_keeps_running(call, poke=None, attempts: int = 3, min_seconds: float = 0.2):
    """Fails only when Python made under a tenth of its usual progress during `call` in every
    one of `attempts` tries (a call holding the GIL gives a few hundredths at most); skips when a
    call was too short to judge."""
    shares = []
    for _ in range(attempts):
        duration, share = progress_during(call, poke)
        if duration < min_seconds:
            pytest.skip(f"the call took {duration:.3f} s, too short to judge (< {min_seconds} s)")
        if share > 0.1:
            return
        shares.append(round(share, 4))
    pytest.fail(f"Python stalled during the call: progress shares {shares} (about 1 when the GIL "
                f"is free, about 0 when it is held)")


def seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start
