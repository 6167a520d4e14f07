#!/usr/bin/env python3
"""Report of tools/device_check.sh: merges the bench JSONs into OUT/results.json and writes
OUT/RESULTS.md (device, date, steps, encode/triplet/search tables with our/peer ratios).

Usage: device_report.py WORK OUT   (WORK/json/*.json from the benches, OUT/steps.tsv)
"""
import datetime
import glob
import json
import os
import subprocess
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except Exception as e:  # a bench that failed or timed out leaves no or partial JSON
        return {"error": f"{os.path.basename(path)}: {e}"}


def num(x, fmt="{:,.1f}"):
    return fmt.format(x) if isinstance(x, (int, float)) else "-"


def gpu_name():
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10).stdout.strip() or "no GPU"
    except Exception:
        return "no nvidia-smi"


def encode_rows(results):
    rows = ["| model | precision | batch | ours img/s | latency ms | end-to-end img/s | best PyTorch img/s (config) | ours/peer | GPU mem GiB |",
            "|---|---|---|---|---|---|---|---|---|"]
    # Best peer per (model, batch): the peer runs once (fp16 step) for every precision of the
    # model it was given; a model benchmarked without a peer (dlib's ResNet) gets no ratio.
    peer = {}
    for j in results.values():
        torch = (j.get("peers") or {}).get("pytorch") or j.get("peer") or {}  # "peer": before ONNX peers
        for p in torch.get("results", []) if isinstance(torch, dict) else []:
            key = (j.get("model"), p.get("batch"))
            if p.get("img_per_s", 0) > peer.get(key, (0, ""))[0]:
                peer[key] = (p["img_per_s"], p.get("config", "?"))
    for name, j in results.items():
        if "error" in j:
            rows.append(f"| {name} | {j['error']} |")
            continue
        for r in j.get("results", []):
            best = peer.get((j.get("model"), r.get("batch")), (None, "-"))
            ratio = r["img_per_s"] / best[0] if best[0] else None
            mem = r.get("backend_device_bytes")
            rows.append(f"| {j.get('model', '?')} | {j.get('dtype', name)} | {r.get('batch')} | {num(r.get('img_per_s'), '{:,.0f}')} | "
                        f"{num(r.get('latency_ms'), '{:.3f}')} | {num(r.get('end_to_end', {}).get('img_per_s'), '{:,.0f}')} | "
                        f"{num(best[0], '{:,.0f}')} ({best[1]}) | {num(ratio, '{:.2f}')} | "
                        f"{num(mem / 2**30 if mem else None, '{:.2f}')} |")
    return rows


def triplet_rows(j):
    rows = ["| B | mode | ours ms | peer ms | peer/ours | loss rel diff vs peer | grad rel L2 vs CPU |",
            "|---|---|---|---|---|---|---|"]
    if "error" in j:
        return rows + [f"| {j['error']} |"]
    for r in j.get("results", []):
        rows.append(f"| {r.get('batch')} | {r.get('mode')} | {num(r.get('ours', {}).get('median_ms'), '{:.3f}')} | "
                    f"{num(r.get('peer', {}).get('median_ms'), '{:.3f}')} | {num(r.get('speedup_vs_peer'), '{:.2f}')} | "
                    f"{num(r.get('agreement', {}).get('loss_rel_diff'), '{:.1e}')} | "
                    f"{num(r.get('check_vs_cpu_reference', {}).get('grad_rel_l2'), '{:.1e}')} |")
    return rows


def search_rows(results):
    rows = ["| N | Q | k | dtype | algorithm | ours ms | queries/s | HBM fraction | peer ms | peer/ours | max dist err |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, j in results.items():
        if "error" in j:
            rows.append(f"| {name} | {j['error']} |")
            continue
        for r in j.get("results", []):
            o, p = r.get("ours", {}), r.get("peer", {})
            algo = r.get("algorithm", "?") + (f" ({r['resolved']})" if r.get("resolved") not in (None, r.get("algorithm")) else "")
            rows.append(f"| {r.get('n'):,} | {r.get('q')} | {r.get('k')} | {r.get('dtype')} | {algo} | "
                        f"{num(o.get('median_ms'), '{:.3f}')} | {num(o.get('queries_per_s'), '{:,.0f}')} | "
                        f"{num(o.get('hbm_fraction_one_pass'), '{:.2f}')} | {num(p.get('median_ms'), '{:.3f}')} | "
                        f"{num(r.get('speedup_vs_peer'), '{:.2f}')} | "
                        f"{num(r.get('check_vs_cpu', {}).get('max_distance_error'), '{:.1e}')} |")
    return rows


def measured_lines(work):
    """The '[ measured ] ...' lines the GPU tests print (GPU-vs-CPU errors per precision)."""
    lines = []
    for log in sorted(glob.glob(os.path.join(work, "logs", "05-*.log"))):
        try:
            lines += [l.strip()[len("[ measured ]"):].strip() for l in open(log, errors="replace")
                      if l.strip().startswith("[ measured ]")]
        except OSError:
            pass
    return lines


def main():
    work, out = sys.argv[1], sys.argv[2]
    files = {os.path.basename(f)[:-5]: load(f) for f in sorted(glob.glob(os.path.join(work, "json", "*.json")))}
    merged = {
        "encode": {k[len("encode-"):]: v for k, v in files.items() if k.startswith("encode-")},
        "triplet": files.get("triplet", {"error": "no triplet.json"}),
        "search": {k[len("search-"):]: v for k, v in files.items() if k.startswith("search-")},
        "gpu_test_errors": measured_lines(work),
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(merged, f, indent=1)
    steps = [line.split("\t") for line in open(os.path.join(out, "steps.tsv")).read().splitlines() if line]
    md = ["# device_check results", "",
          f"- device: {gpu_name()}",
          f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}", "",
          "## steps", "", "| step | rc | seconds |", "|---|---|---|"]
    md += [f"| {s[0]} | {s[1] if len(s) > 1 else '?'} | {s[2] if len(s) > 2 else '?'} |" for s in steps]
    md += ["", "rc: 0 passed, 124/137 timed out, skip = no time left before the deadline.", "",
           "## encode (model-only img/s with resident input; end-to-end from JPEG bytes)", ""]
    md += encode_rows(merged["encode"])
    md += ["", "## GPU vs CPU (max abs error, as the GPU tests measured it)", ""]
    md += [f"- {l}" for l in merged["gpu_test_errors"]] or ["- none measured (the GPU tests did not run)"]
    md += ["", "## triplet loss + gradient (fp32)", ""] + triplet_rows(merged["triplet"])
    md += ["", "## exact k-NN search", ""] + search_rows(merged["search"])
    with open(os.path.join(out, "RESULTS.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
