#!/usr/bin/env bash
# Runs every CPU benchmark with its peers in the same run and writes the JSON files plus a
# markdown table into bench/results/cpu-<date>/ (or $1). Needs a build (tools/test.sh) and a
# quiet machine: other load distorts every number. Usage: tools/bench_cpu.sh [OUT_DIR]
# REPORT_ONLY=1 rewrites README.md from the JSON files already in OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${FACENET_SHARED:-../shared}
out=${1:-bench/results/cpu-$(date -u +%Y-%m-%d)}
mkdir -p "$out"
threads=$(nproc)
b=build
if [ "${REPORT_ONLY:-0}" != 1 ]; then
model=$b/bench-nn4-openface.safetensors
[ -f "$model" ] || $b/apps/facenet convert openface-csv \
  "$shared/weights/openface-nn4.small2.v1-csv-5-standins" -o "$model" 2>/dev/null

echo "bench_cpu: encode" >&2
$b/apps/facenet bench encode --model "$model" --batch 1,16,64 --repeats 10 --threads "$threads" \
  > "$out/encode.json"
# dlib's ResNet (150x150): converted by tools/quickstart.sh; skipped when absent.
dlib_model=weights/dlib_resnet_v1.safetensors
if [ -f "$dlib_model" ]; then
  echo "bench_cpu: encode (dlib ResNet)" >&2
  $b/apps/facenet bench encode --model "$dlib_model" --batch 1,16,64 --repeats 5 \
    --threads "$threads" > "$out/encode-dlib.json"
else
  echo "bench_cpu: $dlib_model missing (tools/quickstart.sh makes it): dlib encode skipped" >&2
fi
# bf16 (where the CPU has it): ours only; the table sets it against our fp32 of the same run.
if $b/apps/facenet bench encode --model "$model" --batch 1 --repeats 1 --warmup 0 --no-peer \
    --precision bf16 >/dev/null 2>&1; then
  echo "bench_cpu: encode bf16" >&2
  $b/apps/facenet bench encode --model "$model" --batch 1,16,64 --repeats 10 --threads "$threads" \
    --precision bf16 --no-peer > "$out/encode-bf16.json"
  [ -f "$dlib_model" ] && $b/apps/facenet bench encode --model "$dlib_model" --batch 1,16,64 \
    --repeats 5 --threads "$threads" --precision bf16 --no-peer > "$out/encode-dlib-bf16.json"
else
  echo "bench_cpu: no bf16 on this CPU: bf16 encode skipped" >&2
fi
# Where the encoders' time goes (oneDNN's per-primitive timings), batch 64.
echo "bench_cpu: profiles" >&2
for p in fp32 bf16; do
  tools/profile_cpu.sh "$model" 64 "$p" > "$out/profile-nn4-$p-b64.md" || true
  [ -f "$dlib_model" ] && { tools/profile_cpu.sh "$dlib_model" 64 "$p" > "$out/profile-dlib-$p-b64.md" || true; }
done
echo "bench_cpu: triplet" >&2
$b/apps/facenet bench triplet --batch 256,1024 --modes batch_all,batch_hard,semi_hard \
  --repeats 5 --threads "$threads" > "$out/triplet-small.json"
$b/apps/facenet bench triplet --batch 4096 --modes batch_hard,semi_hard --repeats 3 \
  --threads "$threads" > "$out/triplet-4096.json"
echo "bench_cpu: search" >&2
# fp32 and bf16 storage against faiss-cpu (PyPI wheel, tools/setup.sh's venv) and Debian's FAISS.
$b/tools/facenet_bench_search --n 1e4 1e5 1e6 --q 1 16 256 --k 1 10 100 --storage fp32,bf16 \
  --threads "$threads" --repeats 3 --check > "$out/search.json"
echo "bench_cpu: gallery" >&2
$b/tools/facenet_bench_gallery --rows 1000000 --repeats 3 --check > "$out/gallery.json"
fi

/usr/bin/python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(n):
    return json.load(open(os.path.join(out, n)))
enc = load("encode.json")
m = enc["machine"]
lines = [f"# CPU benchmarks, {m['date']}", "",
         f"Machine: {m['cpu']}, {m['cores']} cores; BLAS: {m.get('blas', '?')}; "
         f"oneDNN {m.get('onednn', '?')} ISA {m.get('onednn_isa', '?')}; threads {enc['threads']}.",
         "Every ratio is ours / the peer's, measured in the same run. The encoders' ONNX Runtime",
         "and OpenVINO peers run our own `facenet export onnx` of the same model file.", "",
         ]
def blas_kernels(e):
    return e.get("machine", {}).get("blas", "?").split()[-2]
encoders = [("nn4.small2", "encode.json"), ("dlib ResNet v1, 150x150", "encode-dlib.json"),
            ("nn4.small2", "encode-openblas-auto.json"),
            ("dlib ResNet v1, 150x150", "encode-dlib-openblas-auto.json")]
encoders = [(t, f, load(f)) for t, f in encoders if os.path.exists(os.path.join(out, f))]
def engine_of(e):
    """Results before the oneDNN backend ran their GEMMs on OpenBLAS: name its kernels."""
    m = e.get("machine", {})
    if "onednn_isa" in m:
        return f"oneDNN {m['onednn_isa']}"
    return f"OpenBLAS {m.get('blas', '?').split()[-2]} kernels"
encoders = [(f"{t}, model only, fp32, {engine_of(e)}; {e.get('machine', {}).get('date', '?')}", f, e)
            for t, f, e in encoders]
peer_names = {"pytorch": "PyTorch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
def peers_of(e):
    """{peer: its JSON}; files from before the ONNX peers hold PyTorch alone under "peer"."""
    return e.get("peers") or ({"pytorch": e["peer"]} if "peer" in e else {})
def fastest(peer, batch):
    rs = [r for r in peer.get("results", []) if r.get("batch") == batch and "img_per_s" in r]
    return max(rs, key=lambda r: r["img_per_s"]) if rs else None
for title, _, e in encoders:
    peers = peers_of(e)
    names = [n for n in peer_names if n in peers]
    lines += [f"## Encoder ({title})", "",
              "| batch | ours img/s | latency ms | " + " | ".join(f"{peer_names[n]} img/s" for n in names)
              + " | best peer | ours / best |", "|---" * (5 + len(names)) + "|"]
    for r in e["results"]:
        cells, best = [], None
        for n in names:
            f = fastest(peers[n], r["batch"])
            cfg = f" ({f['config'].split(' hint')[0]})" if f and n == "openvino" else ""
            cells.append(f"{f['img_per_s']:.1f}{cfg}" if f else "-")
            if f and (best is None or f["img_per_s"] > best[1]):
                best = (n, f["img_per_s"])
        best_cells = (f"{peer_names[best[0]]} | {r['img_per_s'] / best[1]:.3g}" if best else "- | -")
        lines.append(f"| {r['batch']} | {r['img_per_s']:.1f} | {r['latency_ms']:.2f} | "
                     + " | ".join(cells) + f" | {best_cells} |")
    notes = []
    for n in names:
        p = peers[n]
        if not p.get("results"):
            notes.append(f"{peer_names[n]} did not run: {p.get('reason', '?')[:200]}")
            continue
        version = str(p.get({"pytorch": "torch"}.get(n, n), "?")).split("-")[0]
        check = p.get("check", {}).get("max_abs_diff")
        notes.append(f"{peer_names[n]} {version}" +
                     (f", max abs diff from ours {check:.2g}" if check is not None else ""))
    lines += ["", "Peers: " + "; ".join(notes) + ". OpenVINO: the faster of its LATENCY hint "
              "(one request) and THROUGHPUT hint (the batch split over parallel requests).", ""]
bf16 = [(t, f) for t, f in (("nn4.small2", "encode-bf16.json"),
                            ("dlib ResNet v1, 150x150", "encode-dlib-bf16.json"))
        if os.path.exists(os.path.join(out, f))]
if bf16:
    lines += ["## Encoder in bf16 (ours; against our fp32 of the same run)", "",
              "| model | batch | bf16 img/s | latency ms | fp32 img/s | bf16 / fp32 |",
              "|---|---|---|---|---|---|"]
    for t, f in bf16:
        fp32 = {r["batch"]: r for r in load(f.replace("-bf16", "")).get("results", [])}
        for r in load(f)["results"]:
            base = fp32.get(r["batch"], {}).get("img_per_s")
            lines.append(f"| {t} | {r['batch']} | {r['img_per_s']:.1f} | {r['latency_ms']:.2f} | "
                         + (f"{base:.1f} | {r['img_per_s'] / base:.2f} |" if base else "- | - |"))
    lines.append("")
lines.pop()
lines += ["", "## Triplet loss + gradient (d=128)", "",
          "| B | mode | ours ms | PyTorch ms | ratio |", "|---|---|---|---|---|"]
for f in ("triplet-small.json", "triplet-4096.json"):
    for r in load(f).get("results", []):
        ours = r["ours"]["median_ms"]
        pm = (r.get("peer") or {}).get("median_ms")
        ratio = r.get("speedup_vs_peer")
        pms = f"{pm:.3f}" if pm is not None else "-"
        rs = f"{ratio:.1f}" if ratio is not None else "-"
        lines.append(f"| {r['batch']} | {r['mode']} | {ours:.3f} | {pms} | {rs} |")
search = load("search.json")
peers = search.get("peers", {})
fc, fd = peers.get("faiss_cpu", {}), peers.get("faiss_debian", {})
lines += ["", "## Exact k-NN search (d=128, CPU, IndexFlatL2 peers in the same run)", "",
          f"Peers: faiss-cpu {fc.get('faiss', 'n/a')} from PyPI (SIMD level {fc.get('simd_level', '?')}, "
          f"OPENBLAS_CORETYPE={fc.get('openblas_coretype')}); Debian's FAISS {fd.get('faiss', 'n/a')} "
          f"({fd.get('compile_options', '?').strip()}). Ours: fp32 storage, and bf16 (split fp32, "
          "exact results, half the bytes per scan).", "",
          "| N | Q | k | storage | ours queries/s | faiss-cpu queries/s | Debian FAISS queries/s "
          "| vs faiss-cpu | vs Debian |", "|---|---|---|---|---|---|---|---|---|"]
def qps(r, key):
    v = r.get(key, {}).get("queries_per_s")
    return f"{v:,.1f}" if v else "-"
def ratio(r, key):
    v = r.get(key)
    return f"{v:.2f}" if v else "-"
for r in search["results"]:
    lines.append(f"| {r['n']:.0e} | {r['q']} | {r['k']} | {r['dtype']} | "
                 f"{r['ours']['queries_per_s']:,.1f} | {qps(r, 'faiss_cpu')} | {qps(r, 'faiss_debian')} | "
                 f"{ratio(r, 'speedup_vs_faiss_cpu')} | {ratio(r, 'speedup_vs_faiss_debian')} |")
lines += ["", "## Gallery (SQLite, WAL)", ""]
g = load("gallery.json")
lines.append(f"Enrol {g['rows']:,} embeddings: {g['enroll_s']['median']:.2f} s "
             f"({g['enroll_rows_per_s']:,.0f} rows/s); load_all {g['load_all_s']['median']:.2f} s.")
open(os.path.join(out, "README.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
