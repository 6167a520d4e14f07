#!/usr/bin/python3
"""PyTorch peer of `facenet bench triplet`: the same triplet losses (cdist + masks, autograd).

Reads e_<B>.npy (B x d float32) and labels_<B>.npy written by the bench, computes for each
mining mode the loss sum, active and valid counts and dJ/dE (of the sum) with the same
definitions as engine/train/triplet.h, times forward + backward, writes grad_<mode>_<B>.npy next to
the inputs and prints one JSON line. Run with Debian's /usr/bin/python3 (python3-torch).
"""
import argparse
import json
import os
import sys
import time


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--batches", required=True, help="comma-separated B values")
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--modes", default="batch_all,batch_hard,semi_hard")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--margin", type=float, default=0.2)
    ap.add_argument("--max-batch-all", type=int, default=1024)
    ap.add_argument("--budget-s", type=float, default=20.0,
                    help="fewer repeats when one run would exceed this per configuration")
    return ap.parse_args()


def make_losses(torch):
    inf = float("inf")

    def sq_dist(x):
        return torch.cdist(x, x).pow(2)

    def masks(labels):
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        return same & ~eye, ~same

    def batch_hard(x, labels, margin):
        d = sq_dist(x)
        pos, neg = masks(labels)
        valid = pos.any(1) & neg.any(1)
        far_pos = torch.where(pos, d, torch.full_like(d, -inf)).max(1).values
        near_neg = torch.where(neg, d, torch.full_like(d, inf)).min(1).values
        loss = torch.relu(far_pos - near_neg + margin)[valid]
        total = loss.sum()
        total.backward()
        return total.item(), int((loss > 0).sum()), int(valid.sum())

    def semi_hard(x, labels, margin):
        d = sq_dist(x)
        pos, neg = masks(labels)
        a_idx, p_idx = torch.nonzero(pos & neg.any(1)[:, None], as_tuple=True)
        chunk = max(1, (1 << 24) // len(labels))
        total, active = d.new_zeros(()), 0
        for s in range(0, len(a_idx), chunk):
            a, p = a_idx[s:s + chunk], p_idx[s:s + chunk]
            d_ap = d[a, p][:, None]
            d_an = d[a]
            n_mask = neg[a]
            semi = n_mask & (d_an > d_ap) & (d_an < d_ap + margin)
            full_inf = torch.full_like(d_an, inf)
            semi_min = torch.where(semi, d_an, full_inf).min(1).values
            hard_min = torch.where(n_mask, d_an, full_inf).min(1).values
            chosen = torch.where(semi.any(1), semi_min, hard_min)
            loss = torch.relu(d_ap[:, 0] - chosen + margin)
            total = total + loss.sum()
            active += int((loss > 0).sum())
        if total.requires_grad:  # no anchor-positive pair: nothing to differentiate
            total.backward()
        return total.item(), active, int(len(a_idx))

    def batch_all(x, labels, margin):
        # B x B x B masks in anchor chunks; D's gradient is accumulated chunk by chunk so the
        # autograd graph never holds the whole cube.
        d = sq_dist(x)
        pos, neg = masks(labels)
        leaf = d.detach().requires_grad_(True)
        n = len(labels)
        chunk = max(1, (1 << 26) // (n * n))
        total, active, count = 0.0, 0, 0
        for s in range(0, n, chunk):
            dd = leaf[s:s + chunk]
            valid = pos[s:s + chunk, :, None] & neg[s:s + chunk, None, :]
            loss = torch.relu(dd[:, :, None] - dd[:, None, :] + margin) * valid
            part = loss.sum()
            part.backward()
            total += part.item()
            active += int(((loss > 0) & valid).sum())
            count += int(valid.sum())
        if leaf.grad is not None:
            d.backward(leaf.grad)
        return total, active, count

    return {"batch_all": batch_all, "batch_hard": batch_hard, "semi_hard": semi_hard}


def main():
    args = parse_args()
    try:
        import numpy as np
        import torch
    except Exception as exc:  # recorded by the bench, never a crash
        print(json.dumps({"available": False, "reason": f"import failed: {exc}"}))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"available": False, "torch": torch.__version__,
                          "reason": "torch.cuda.is_available() is False"}))
        return 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    losses = make_losses(torch)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    results = []
    for batch in [int(b) for b in args.batches.split(",")]:
        e = np.load(os.path.join(args.dir, f"e_{batch}.npy")).astype(np.float32)
        labels = np.load(os.path.join(args.dir, f"labels_{batch}.npy")).reshape(-1)
        emb = torch.from_numpy(e).to(dev)
        lab = torch.from_numpy(labels.astype(np.int64)).to(dev)
        for mode in args.modes.split(","):
            entry = {"batch": batch, "mode": mode}
            if mode == "batch_all" and batch > args.max_batch_all:
                entry["skipped"] = f"batch_all peer is O(B^3); limit B <= {args.max_batch_all}"
                results.append(entry)
                continue
            fn = losses[mode]
            x = emb.clone().requires_grad_(True)

            def step():
                x.grad = None
                out = fn(x, lab, args.margin)
                sync()
                return out

            t0 = time.perf_counter()
            out = step()
            first = time.perf_counter() - t0
            repeats = max(1, min(args.repeats, int(args.budget_s / max(first, 1e-9))))
            for _ in range(min(args.warmup, repeats) - 1):
                step()
            times = []
            for _ in range(repeats):
                if dev.type == "cuda":
                    start = torch.cuda.Event(enable_timing=True)
                    stop = torch.cuda.Event(enable_timing=True)
                    start.record()
                    out = step()
                    stop.record()
                    stop.synchronize()
                    times.append(start.elapsed_time(stop) * 1e-3)
                else:
                    t0 = time.perf_counter()
                    out = step()
                    times.append(time.perf_counter() - t0)
            times.sort()
            grad = x.grad if x.grad is not None else torch.zeros_like(x)
            np.save(os.path.join(args.dir, f"grad_{mode}_{batch}.npy"),
                    grad.detach().cpu().numpy().astype(np.float32))
            entry.update({
                "median_ms": 1e3 * times[len(times) // 2] if len(times) % 2 else
                1e3 * 0.5 * (times[len(times) // 2 - 1] + times[len(times) // 2]),
                "min_ms": 1e3 * times[0],
                "repeats": len(times),
                "loss_sum": out[0],
                "active": out[1],
                "count": out[2],
            })
            results.append(entry)
    print(json.dumps({
        "available": True,
        "what": "torch.cdist(x, x).pow(2) + label masks, autograd backward",
        "torch": torch.__version__,
        "device": args.device,
        "device_name": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "results": results,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
