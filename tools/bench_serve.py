#!/usr/bin/env python3
"""Load benchmark of `facenet serve`: N concurrent single-image clients, against the CLI's batch
path on the same images (the ceiling), printed as JSON. Two workloads:

  encode:   one aligned 96x96 crop per request on /v1/encode (nn4.small2), vs `facenet encode`;
  identify: one raw LFW photo per request on /v1/identify?align=largest (dlib ResNet) against
            a gallery of --gallery-size identities, vs `facenet identify --align largest`.

Each client is an asyncio task holding one keep-alive HTTP/1.1 connection and sending requests
back to back; throughput and p50/p99 latency are measured per concurrency level after a
warm-up. The CLI is timed on all images and on one image, so that the model load cancels out.
The identify gallery holds one real person (enrolled over HTTP, which fixes the model in the
file) and random unit vectors for the others, written with sqlite3 in the gallery's schema:
the search cost is that of the real size.

  tools/bench_serve.py encode --model nn4.safetensors [--clients 1,8,64] [--seconds 10]
  tools/bench_serve.py identify --model resnet.safetensors [--gallery-size 10000]

Only the standard library: a minimal client that writes a request and reads a Content-Length
answer (the service always sends one). The FastAPI + face_recognition peer of issue 14 is not
here: fastapi, uvicorn and face_recognition are not installed on this machine."""
import argparse
import asyncio
import json
import random
import sqlite3
import struct
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data")
CROPS = os.path.join(SHARED, "openface-examples", "images", "examples-aligned")
LFW = os.path.join(SHARED, "lfw", "lfw-deepfunneled")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


async def client(port, path, ctype, body, deadline, latencies, errors):
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    reader = writer = None
    while time.monotonic() < deadline:
        if writer is None:  # (re)connect: the server closes after its keep-alive count
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t0 = time.monotonic()
        writer.write(head + body)
        await writer.drain()
        status_line = (await reader.readline()).split()
        if len(status_line) < 2:  # closed before answering: reconnect and resend
            writer.close()
            writer = None
            continue
        length, close = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        await reader.readexactly(length)
        status = int(status_line[1])
        if status == 200:
            latencies.append(time.monotonic() - t0)
        else:
            errors[status] = errors.get(status, 0) + 1
        if close:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


async def level(port, path, ctype, bodies, clients, seconds):
    latencies, errors = [], {}
    # Warm-up at this concurrency (not counted): connections, caches, the batcher's rhythm.
    warm = time.monotonic() + min(2.0, seconds / 4)
    await asyncio.gather(*(client(port, path, ctype, bodies[i % len(bodies)], warm, [], {})
                           for i in range(clients)))
    t0 = time.monotonic()
    await asyncio.gather(*(client(port, path, ctype, bodies[i % len(bodies)], t0 + seconds,
                                  latencies, errors) for i in range(clients)))
    wall = time.monotonic() - t0
    latencies.sort()
    q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e3
    return {"clients": clients, "requests": len(latencies), "seconds": round(wall, 3),
            "images_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(q(0.50), 2), "p99_ms": round(q(0.99), 2),
            "p99_over_p50": round(q(0.99) / q(0.50), 2), "errors": errors}


def cli_ceiling(command, files, copies):
    """images/s of a CLI `command` (a list; the images are appended) over `copies` x files,
    the model load (a run on one image) subtracted."""
    tmp = tempfile.mkdtemp(prefix="bench-serve-cli-")
    try:
        for c in range(copies):
            for f in files:
                shutil.copy(f, os.path.join(tmp, f"{c:04d}-{os.path.basename(f)}"))
        one = os.path.join(tmp, sorted(os.listdir(tmp))[0])

        def timed(inputs):
            t0 = time.monotonic()
            subprocess.run(command + inputs, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            return time.monotonic() - t0

        base = min(timed([one]) for _ in range(2))
        full = min(timed([tmp]) for _ in range(2))
        n = copies * len(files)
        return {"images": n, "seconds": round(full - base, 3),
                "images_per_s": round(n / (full - base), 2), "model_load_s": round(base, 3)}
    finally:
        shutil.rmtree(tmp)


class Service:
    """`facenet serve` on a free loopback port, up until the `with` block ends (SIGTERM)."""

    def __init__(self, a, gallery):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [a.facenet, "serve", "--model", a.model, "--gallery", gallery, "--create", "--port",
             str(self.port), "--threads", str(a.threads), "--max-batch", str(a.max_batch),
             "--http-threads", "128", "--max-queue", "1024"], stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                urllib.request.urlopen(self.url("/healthz"), timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("facenet serve did not come up")

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()


def fill_gallery(path, total):
    """Adds random unit vectors as identities r00001... until the gallery holds `total`."""
    db = sqlite3.connect(path)
    dim = int(db.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()[0])
    have = db.execute("SELECT COUNT(*) FROM identities").fetchone()[0]
    rng = random.Random(7)
    now = int(time.time())
    with db:
        for i in range(total - have):
            v = [rng.gauss(0, 1) for _ in range(dim)]
            norm = sum(x * x for x in v) ** 0.5
            cur = db.execute("INSERT INTO identities(name, metadata, created_at) VALUES(?, '{}', ?)",
                             (f"r{i:05d}", now))
            db.execute("INSERT INTO embeddings(identity_id, vector, source, created_at) "
                       "VALUES(?, ?, 'random', ?)",
                       (cur.lastrowid, struct.pack(f"<{dim}f", *(x / norm for x in v)), now))
    db.close()


def lfw_photos(n):
    people = sorted(os.listdir(LFW))[:n]
    return [os.path.join(LFW, p, f"{p}_0001.jpg") for p in people]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workload", choices=["encode", "identify"])
    built = [os.path.join(ROOT, b, "apps", "facenet") for b in ("build", "build-cpu")]
    ap.add_argument("--facenet", default=next((b for b in built if os.path.exists(b)), built[0]))
    ap.add_argument("--model", required=True,
                    help="encode: nn4.small2 (96x96 crops); identify: the dlib ResNet")
    ap.add_argument("--clients", default="1,8,64")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--cli-copies", type=int, default=0,
                    help="copies of each image for the CLI (default: 100 encode, 5 identify)")
    ap.add_argument("--gallery-size", type=int, default=10000)
    ap.add_argument("--photos", type=int, default=16, help="identify: distinct LFW photos")
    a = ap.parse_args()
    load_at_start = os.getloadavg()[0]
    tmp = tempfile.mkdtemp(prefix="bench-serve-")
    gallery = os.path.join(tmp, "g.db")
    if a.workload == "encode":
        files = sorted(os.path.join(CROPS, f) for f in os.listdir(CROPS) if f.endswith(".png"))
        path, ctype, copies = "/v1/encode", "image/png", a.cli_copies or 100
        cli = [a.facenet, "encode", "--model", a.model, "--threads", str(a.threads),
               "-o", os.devnull]
    else:
        files = lfw_photos(a.photos)
        path, ctype, copies = "/v1/identify?align=largest", "image/jpeg", a.cli_copies or 5
        with Service(a, gallery) as s:  # one real person fixes the gallery's model and dim
            req = urllib.request.Request(s.url("/v1/identities/" + os.path.basename(
                os.path.dirname(files[0])) + "/faces?align=largest"), data=open(files[0], "rb").read(),
                headers={"Content-Type": "image/jpeg"})
            urllib.request.urlopen(req)
        fill_gallery(gallery, a.gallery_size)
        cli = [a.facenet, "identify", "--gallery", gallery, "--model", a.model, "--align",
               "largest", "--threads", str(a.threads)]
    bodies = [open(f, "rb").read() for f in files]
    try:
        with Service(a, gallery) as s:
            ready = json.load(urllib.request.urlopen(s.url("/readyz")))
            levels = [asyncio.run(level(s.port, path, ctype, bodies, int(c), a.seconds))
                      for c in a.clients.split(",")]
            metrics = urllib.request.urlopen(s.url("/metrics")).read().decode()
        ceiling = cli_ceiling(cli, files, copies)
    finally:
        shutil.rmtree(tmp)
    batches = {l.split()[0]: float(l.split()[1]) for l in metrics.splitlines()
               if l.startswith("facenet_batch_size_sum") or l.startswith("facenet_batch_size_count")}
    top = levels[-1]
    print(json.dumps({
        "what": f"facenet serve POST {path}, one image per request, keep-alive clients back to "
                f"back, vs `facenet {cli[1]}` (the batch path) on the same images",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "model": os.path.basename(a.model), "images": [os.path.basename(f) for f in files],
        "gallery_identities": ready["identities"],
        "max_batch": a.max_batch, "threads": a.threads, "seconds_per_level": a.seconds,
        # The load generator shares the cores with the service; other load skews both.
        "load_average_at_start": load_at_start,
        "levels": levels,
        "mean_batch_chips": round(batches.get("facenet_batch_size_sum", 0) /
                                  max(1, batches.get("facenet_batch_size_count", 1)), 2),
        "cli_batch_path": ceiling,
        f"ratio_{top['clients']}_clients_vs_cli": round(top["images_per_s"] /
                                                        ceiling["images_per_s"], 3),
        "missing": ["FastAPI + uvicorn + face_recognition peer (not installed here)"],
    }, indent=2))


if __name__ == "__main__":
    sys.exit(main())
