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
  tools/bench_serve.py identify --model resnet.safetensors [--gallery-size 10000] [--peer-fastapi]

identify --peer-fastapi also starts, in the same run, the service users build today (issue 14):
FastAPI + uvicorn around the real face_recognition 1.3.0, tools/peer_serve_face_recognition.py
in the venv tools/peer_face_recognition.sh makes, with the same gallery size (its own encoding
of the same enrolled photo, random unit vectors for the rest). Both are up at once and idle in
turn: at each level one is driven, then the other (the order alternating level by level), by
the same clients on the same photos and path, and the JSON has the ratio per level. Each
level also records the load average before and after, and the CPU seconds that the driven
service, this load generator and everything else on the machine spent while it was measured.

Only the standard library: a minimal client that writes a request and reads a Content-Length
answer (both services always send one)."""
import argparse
import asyncio
import contextlib
import json
import random
import sqlite3
import struct
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench_steps import machine, peer_face_recognition_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data")
CROPS = os.path.join(SHARED, "openface-examples", "images", "examples-aligned")
LFW = os.path.join(SHARED, "lfw", "lfw-deepfunneled")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def machine_busy_s():
    """(busy, steal): CPU seconds all cores have run something since boot, and those the
    hypervisor gave to other guests while this one wanted them (/proc/stat)."""
    ticks = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - ticks[3] - ticks[4] - ticks[7]) / hz, ticks[7] / hz


def process_cpu_s(pid):
    """User + system CPU seconds of process `pid`, all its threads."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def level(port, path, ctype, bodies, clients, seconds, pid):
    latencies, errors = [], {}
    # Warm-up at this concurrency (not counted): connections, caches, the batcher's rhythm.
    warm = time.monotonic() + min(2.0, seconds / 4)
    await asyncio.gather(*(client(port, path, ctype, bodies[i % len(bodies)], warm, [], {})
                           for i in range(clients)))
    load_before = os.getloadavg()
    busy0, service0, me0 = machine_busy_s(), process_cpu_s(pid), process_cpu_s(os.getpid())
    t0 = time.monotonic()
    await asyncio.gather(*(client(port, path, ctype, bodies[i % len(bodies)], t0 + seconds,
                                  latencies, errors) for i in range(clients)))
    wall = time.monotonic() - t0
    busy, steal = (x1 - x0 for x1, x0 in zip(machine_busy_s(), busy0))
    service, me = process_cpu_s(pid) - service0, process_cpu_s(os.getpid()) - me0
    latencies.sort()
    q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e3
    return {"clients": clients, "requests": len(latencies), "seconds": round(wall, 3),
            "images_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(q(0.50), 2), "p99_ms": round(q(0.99), 2),
            "p99_over_p50": round(q(0.99) / q(0.50), 2), "errors": errors,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            # Over the measured seconds: "other" is everything else here, e.g. a CI run; "steal"
            # the time the hypervisor ran other guests instead (a noisy neighbour).
            "cpu_s": {"service": round(service, 2), "load_generator": round(me, 2),
                      "other": round(busy - service - me, 2), "steal": round(steal, 2),
                      "available": round(wall * os.cpu_count(), 2)}}


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


def peer_python(a):
    """The face_recognition venv's python (made once by tools/peer_face_recognition.sh)."""
    return a.peer_python or peer_face_recognition_python()


class PeerService(Service):
    """tools/peer_serve_face_recognition.py (FastAPI + uvicorn + face_recognition) on a free
    loopback port, its gallery `size` rows: `enroll`'s face and random unit vectors."""

    def __init__(self, python, enroll, size, log):
        self.port = free_port()
        self.log = log
        self.proc = subprocess.Popen(
            [python, os.path.join(ROOT, "tools", "peer_serve_face_recognition.py"), "--port",
             str(self.port), "--enroll", enroll, "--gallery-size", str(size)],
            stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        for _ in range(1200):
            try:
                self.health = json.load(urllib.request.urlopen(self.url("/healthz"), timeout=1))
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.proc.kill()
        raise SystemExit("bench_serve: the FastAPI peer did not come up:\n" +
                         open(log).read()[-2000:])


def peer_versions(python):
    code = ("import importlib.metadata as m, json, platform; print(json.dumps(dict("
            "{p: m.version(p) for p in ('face_recognition', 'dlib-bin', 'numpy', 'Pillow', "
            "'fastapi', 'starlette', 'pydantic', 'anyio', 'uvicorn', 'httptools', 'uvloop')}, "
            "python=platform.python_version())))")
    return json.loads(subprocess.run([python, "-c", code], check=True, stdout=subprocess.PIPE,
                                     text=True).stdout)


def answers(port, path, ctype, files, enrolled, peer):
    """One request per photo: how many got a face, and whether the enrolled photo came back as
    its person (a check that both services do the work, not a figure)."""
    faces, enrolled_hit = 0, None
    for f in files:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=open(f, "rb").read(),
                                     headers={"Content-Type": ctype})
        got = json.load(urllib.request.urlopen(req))
        found = got["faces"] if peer else got["images"][0]["faces"]
        faces += bool(found)
        if f == files[0]:
            enrolled_hit = bool(found) and found[0]["name" if peer else "identity"] == enrolled
    return {"photos_with_a_face": faces, "photos": len(files),
            "enrolled_photo_identified": enrolled_hit}


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
    ap.add_argument("--upsample", type=int, default=None,
                    help="identify: HOG upsampling sent to both services (default: each one's "
                         "own, facenet serve 0, face_recognition 1)")
    ap.add_argument("--peer-fastapi", action="store_true",
                    help="identify: also drive FastAPI + uvicorn + face_recognition, same run")
    ap.add_argument("--peer-python", help="the face_recognition venv's python "
                                          "(default: what tools/peer_face_recognition.sh prints)")
    a = ap.parse_args()
    if a.peer_fastapi and a.workload != "identify":
        ap.error("--peer-fastapi: identify only (the peer takes raw photos)")
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
        if a.upsample is not None:
            path += f"&upsample={a.upsample}"
        with Service(a, gallery) as s:  # one real person fixes the gallery's model and dim
            req = urllib.request.Request(s.url("/v1/identities/" + os.path.basename(
                os.path.dirname(files[0])) + "/faces?align=largest"), data=open(files[0], "rb").read(),
                headers={"Content-Type": "image/jpeg"})
            urllib.request.urlopen(req)
        fill_gallery(gallery, a.gallery_size)
        cli = [a.facenet, "identify", "--gallery", gallery, "--model", a.model, "--align",
               "largest", "--threads", str(a.threads)]
        if a.upsample is not None:
            cli += ["--upsample", str(a.upsample)]
    bodies = [open(f, "rb").read() for f in files]
    python = peer_python(a) if a.peer_fastapi else None
    levels, peer_levels, checks = [], [], {}
    try:
        with contextlib.ExitStack() as up:
            s = up.enter_context(Service(a, gallery))
            ready = json.load(urllib.request.urlopen(s.url("/readyz")))
            runs = [(s, levels)]
            if python:
                peer = up.enter_context(PeerService(python, files[0], ready["identities"],
                                                    os.path.join(tmp, "peer.log")))
                runs.append((peer, peer_levels))
                enrolled = os.path.basename(os.path.dirname(files[0]))
                checks = {"facenet": answers(s.port, path, ctype, files, enrolled, False),
                          "peer": answers(peer.port, path, ctype, files, enrolled, True)}
            for i, c in enumerate(a.clients.split(",")):
                for service, out in (runs if i % 2 == 0 else runs[::-1]):
                    out.append(asyncio.run(level(service.port, path, ctype, bodies, int(c),
                                                 a.seconds, service.proc.pid)))
            metrics = urllib.request.urlopen(s.url("/metrics")).read().decode()
        ceiling = cli_ceiling(cli, files, copies)
    finally:
        shutil.rmtree(tmp)
    batches = {l.split()[0]: float(l.split()[1]) for l in metrics.splitlines()
               if l.startswith("facenet_batch_size_sum") or l.startswith("facenet_batch_size_count")}
    top = levels[-1]
    report = {
        "what": f"facenet serve POST {path}, one image per request, keep-alive clients back to "
                f"back, vs `facenet {cli[1]}` (the batch path) on the same images",
        "machine": machine(),
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
    }
    if a.workload == "identify":
        report["upsample"] = (a.upsample if a.upsample is not None else
                              "each service's default: facenet serve 0, face_recognition 1")
    if python:
        report["peer_fastapi"] = {
            "what": "tools/peer_serve_face_recognition.py: FastAPI + uvicorn, 1 worker, plain "
                    "`def` endpoint in FastAPI's threadpool; per request face_recognition "
                    "load_image_file -> face_locations (HOG) -> face_encodings (largest face) "
                    "-> face_distance over the gallery numpy array, tolerance 0.6",
            "versions": peer_versions(python), "event_loop": peer.health["event_loop"],
            "gallery_identities": peer.health["identities"], "levels": peer_levels}
        report["answers"] = checks
        report["vs_peer_fastapi"] = [
            {"clients": ours["clients"], "facenet_images_per_s": ours["images_per_s"],
             "peer_images_per_s": theirs["images_per_s"],
             "ratio": round(ours["images_per_s"] / theirs["images_per_s"], 2)
             if theirs["images_per_s"] else None,
             "facenet_p50_ms": ours["p50_ms"], "peer_p50_ms": theirs["p50_ms"],
             "facenet_p99_ms": ours["p99_ms"], "peer_p99_ms": theirs["p99_ms"],
             "meets_5x": ours["images_per_s"] >= 5 * theirs["images_per_s"]}
            for ours, theirs in zip(levels, peer_levels)]
        report["target"] = "facenet serve >= 5x the peer's images/s (issue 14)"
    elif a.workload == "identify":
        report["missing"] = ["FastAPI + uvicorn + face_recognition peer (run with --peer-fastapi)"]
    else:
        report["missing"] = ["FastAPI + uvicorn + face_recognition peer (identify only)"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
