#!/usr/bin/env bash
# Where the CPU backend's time goes: runs `facenet bench encode` under ONEDNN_VERBOSE=1 and
# sums oneDNN's own per-primitive timings by kind and implementation (the warm-up pass, which
# JIT-compiles kernels and reorders weights, is left out), next to the wall time per batch;
# what the primitives do not account for is our own NHWC code. With the multiply-adds of the
# convolutions, it reports the rate they ran at. Usage:
#   tools/profile_cpu.sh MODEL [BATCH] [PRECISION] > profile.md     (defaults: 64, fp32)
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1 batch=${2:-64} precision=${3:-fp32} repeats=5
log=$(mktemp)
trap 'rm -f "$log"' EXIT
ONEDNN_VERBOSE=1 build/apps/facenet bench encode --model "$model" --batch "$batch" \
  --precision "$precision" --repeats "$repeats" --warmup 1 --no-peer >"$log" 2>/dev/null
/usr/bin/python3 - "$log" "$batch" "$repeats" "$precision" <<'PY'
import json, re, sys
log, batch, repeats, precision = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
lines = open(log).read().splitlines()
report = json.loads("\n".join(l for l in lines if not l.startswith("onednn_verbose")))
execs = [l.split(",") for l in lines if l.startswith("onednn_verbose,exec,cpu,")]
# The bench runs 1 warm-up batch (whose first pass also reorders weights: extra lines) and then
# `repeats` timed batches, each of `chunks` identical micro-batch passes. The pass is the period
# of the tail's (primitive, shape) sequence; all passes but the first match it, so counting
# them gives chunks = (matching + 1) / (repeats + 1); keep the timed batches' lines.
sig = [(f[3], f[4], f[-2]) for f in execs]
period = next(p for p in range(1, len(sig) // repeats + 1)
              if all(sig[-k] == sig[-k - p] for k in range(1, p * (repeats - 1) + 1)))
matching = 1
while (matching + 1) * period <= len(sig) and \
        sig[-(matching + 1) * period:-matching * period] == sig[-period:]:
    matching += 1
chunks = max(1, (matching + 1) // (repeats + 1))
timed = execs[-period * chunks * repeats:]
by, macs = {}, {}
for f in timed:
    key = (f[3], f[4])
    by[key] = by.get(key, 0.0) + float(f[-1]) / repeats
    if f[3] == "convolution":  # mb16_ic64oc192_ih24oh24kh3..._iw24ow24kw3...
        d = dict(re.findall(r"([a-z]+)(\d+)", f[-2]))
        macs[key] = macs.get(key, 0.0) + (int(d["mb"]) * int(d["ic"]) * int(d["oc"]) * int(d["oh"])
                                          * int(d["ow"]) * int(d["kh"]) * int(d["kw"])) / repeats
conv_macs = sum(macs.values())
wall = report["results"][0]["latency_ms"]
conv_ms = sum(v for (k, _), v in by.items() if k == "convolution")
m = report["machine"]
print(f"# CPU profile: {report['model']}, batch {batch}, {precision}, {report['threads']} threads")
print(f"\n{m['cpu']}, oneDNN {m.get('onednn')} ISA {m.get('onednn_isa')}, {m['date']}. "
      f"Wall {wall:.2f} ms per batch (median of {repeats}); oneDNN's timings per batch:\n")
print("| primitive | implementation | ms | share of wall | GFLOP/s (direct-conv FLOPs) |\n"
      "|---|---|---|---|---|")
for (kind, impl), ms in sorted(by.items(), key=lambda kv: -kv[1]):
    rate = f"{2 * macs[(kind, impl)] / ms / 1e6:.0f}" if (kind, impl) in macs else ""
    print(f"| {kind} | {impl} | {ms:.2f} | {100 * ms / wall:.1f}% | {rate} |")
rest = wall - sum(by.values())
print(f"| (not in oneDNN: our NHWC ops, dispatch) | | {rest:.2f} | {100 * rest / wall:.1f}% | |")
print(f"\nConvolutions: {2 * conv_macs / 1e9:.2f} GFLOP of direct-convolution work per batch in "
      f"{conv_ms:.2f} ms = {2 * conv_macs / conv_ms / 1e6:.0f} GFLOP/s effective (Winograd "
      f"steps count their direct-convolution FLOPs).")
PY
