#!/usr/bin/env python3
"""Load benchmark of `facenet serve`: N concurrent single-image clients on /v1/encode, against
the CLI's batch path on the same images (the ceiling), printed as JSON.

Each client is an asyncio task holding one keep-alive HTTP/1.1 connection and sending one
aligned face crop per request, back to back; throughput and p50/p99 latency are measured per
concurrency level after a warm-up. The CLI ceiling is `facenet encode` on the same images,
timed twice (all images, one image) so that the model load cancels out.

  tools/bench_serve.py --model nn4.safetensors [--clients 1,8,64] [--seconds 10] > out.json

Only the standard library: a minimal client that writes a request and reads a Content-Length
answer (the service always sends one). The FastAPI + face_recognition peer of issue 14 is not
here: fastapi, uvicorn and face_recognition are not installed on this machine."""
import argparse
import asyncio
import json
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
CROPS = os.path.join(ROOT, "..", "shared", "data", "openface-examples", "images",
                     "examples-aligned")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


async def client(port, body, deadline, latencies, errors):
    head = (f"POST /v1/encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
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


async def level(port, bodies, clients, seconds):
    latencies, errors = [], {}
    # Warm-up at this concurrency (not counted): connections, caches, the batcher's rhythm.
    warm = time.monotonic() + min(2.0, seconds / 4)
    await asyncio.gather(*(client(port, bodies[i % len(bodies)], warm, [], {})
                           for i in range(clients)))
    t0 = time.monotonic()
    await asyncio.gather(*(client(port, bodies[i % len(bodies)], t0 + seconds, latencies, errors)
                           for i in range(clients)))
    wall = time.monotonic() - t0
    latencies.sort()
    q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e3
    return {"clients": clients, "requests": len(latencies), "seconds": round(wall, 3),
            "images_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(q(0.50), 2), "p99_ms": round(q(0.99), 2),
            "p99_over_p50": round(q(0.99) / q(0.50), 2), "errors": errors}


def cli_ceiling(facenet, model, files, copies, threads):
    """images/s of `facenet encode` over `copies` x files, model load subtracted."""
    tmp = tempfile.mkdtemp(prefix="bench-serve-cli-")
    try:
        for c in range(copies):
            for f in files:
                shutil.copy(f, os.path.join(tmp, f"{c:04d}-{os.path.basename(f)}"))
        one = os.path.join(tmp, sorted(os.listdir(tmp))[0])

        def timed(inputs):
            t0 = time.monotonic()
            subprocess.run([facenet, "encode", "--model", model, "--threads", str(threads),
                            "-o", os.devnull] + inputs, check=True, stderr=subprocess.DEVNULL)
            return time.monotonic() - t0

        base = min(timed([one]) for _ in range(2))
        full = min(timed([tmp]) for _ in range(2))
        n = copies * len(files)
        return {"images": n, "seconds": round(full - base, 3),
                "images_per_s": round(n / (full - base), 2), "model_load_s": round(base, 3)}
    finally:
        shutil.rmtree(tmp)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--facenet", default=os.path.join(ROOT, "build-cpu", "apps", "facenet"))
    ap.add_argument("--model", required=True, help="nn4.small2 model file (aligned 96x96 crops)")
    ap.add_argument("--clients", default="1,8,64")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--cli-copies", type=int, default=100, help="copies of each crop for the CLI")
    a = ap.parse_args()
    files = sorted(os.path.join(CROPS, f) for f in os.listdir(CROPS) if f.endswith(".png"))
    bodies = [open(f, "rb").read() for f in files]
    load_at_start = os.getloadavg()[0]
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="bench-serve-")
    server = subprocess.Popen(
        [a.facenet, "serve", "--model", a.model, "--gallery", os.path.join(tmp, "g.db"),
         "--create", "--port", str(port), "--threads", str(a.threads), "--max-batch",
         str(a.max_batch), "--http-threads", "128", "--max-queue", "1024"],
        stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        levels = [asyncio.run(level(port, bodies, int(c), a.seconds))
                  for c in a.clients.split(",")]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp)
    batches = {l.split()[0]: float(l.split()[1]) for l in metrics.splitlines()
               if l.startswith("facenet_batch_size_sum") or l.startswith("facenet_batch_size_count")}
    ceiling = cli_ceiling(a.facenet, a.model, files, a.cli_copies, a.threads)
    top = levels[-1]
    print(json.dumps({
        "what": "facenet serve /v1/encode, one aligned 96x96 crop per request, keep-alive "
                "clients back to back, vs facenet encode (batch path) on the same crops",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "model": os.path.basename(a.model), "crops": [os.path.basename(f) for f in files],
        "max_batch": a.max_batch, "threads": a.threads, "seconds_per_level": a.seconds,
        # The load generator shares the cores with the service; other load skews both.
        "load_average_at_start": load_at_start,
        "levels": levels,
        "mean_batch_chips": round(batches.get("facenet_batch_size_sum", 0) /
                                  max(1, batches.get("facenet_batch_size_count", 1)), 2),
        "cli_batch_path": ceiling,
        f"ratio_{top['clients']}_clients_vs_cli": round(top["images_per_s"] /
                                                        ceiling["images_per_s"], 3),
        "missing": ["dlib ResNet /v1/identify on raw LFW photos against a 10,000-identity "
                    "gallery", "FastAPI + uvicorn + face_recognition peer (not installed)"],
    }, indent=2))


if __name__ == "__main__":
    sys.exit(main())
