"""imood's metric computation against scikit-learn's and pytorch-ood's, side by side in one run.

scikit-learn: roc_auc_score + average_precision_score (OOD positive) + average_precision_score
(ID positive, score negated) + FPR95 from roc_curve, on the pooled scores with OOD labelled 1.
pytorch-ood: `OODMetrics().update(scores, labels).compute()` on CPU tensors, OOD labelled -1 (its
convention: labels < 0 are OOD and positive, a higher score is more OOD, as in imood). It also
computes AUTC, and its AUPRs integrate the PR curve with the trapezoid rule, so only its AUROC and
FPR95TPR are compared with imood's; imood and scikit-learn must agree to 1e-12 on all four.

Scores: half ID ~ N(0, 1), half OOD ~ N(0.8, 1); "distinct" as drawn, "ties" rounded to 0.01
(about 900 distinct values). Peak memory is imood's extra memory per score during one call, from
tracemalloc (numpy's arrays) and from the process's peak resident memory where Linux can reset it
in a fresh process (that also counts work space numpy takes outside its array allocator, e.g.
timsort's merge buffer).

    python bench/bench_metrics.py --sizes 1e6,1e7 --json bench/results/metrics.json
    python bench/bench_metrics.py --quick       # the CPU-sized check CI runs
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from imood_cli.engine.metrics.ranking import detection_metrics

KEYS = ("auroc", "aupr_in", "aupr_out", "fpr95")
TOLERANCE = 1e-12


def sklearn_metrics(id_s: np.ndarray, ood_s: np.ndarray) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    s = np.concatenate([ood_s, id_s])
    y = np.concatenate([np.ones(ood_s.size), np.zeros(id_s.size)])
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {"auroc": roc_auc_score(y, s), "aupr_out": average_precision_score(y, s),
            "aupr_in": average_precision_score(1 - y, -s), "fpr95": float(fpr[np.argmax(tpr >= 0.95)])}


def pytorch_ood_metrics():
    """A function computing pytorch-ood's OODMetrics on (id, ood) numpy scores, or None without it."""
    try:
        import torch
        from pytorch_ood.metrics import OODMetrics
    except ImportError:
        return None

    def run(id_s: np.ndarray, ood_s: np.ndarray) -> dict:
        scores = torch.from_numpy(np.concatenate([ood_s, id_s]))
        labels = torch.cat([torch.full((ood_s.size,), -1), torch.zeros(id_s.size, dtype=torch.long)])
        m = OODMetrics().update(scores, labels).compute()
        return {"auroc": float(m["AUROC"]), "fpr95": float(m["FPR95TPR"])}

    return run


def best_of(repeat: int, fn, *args) -> tuple[float, dict]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t)
    return min(times), out


def _status(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_extra(size: int, dtype: str, ties: bool) -> int | None:
    """Peak resident memory of one imood call above the resident memory before it, in a fresh process
    whose allocator hands every large block back to the system when freed (so that no memory freed
    earlier is silently reused), on Linux, where clear_refs 5 resets the peak."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    proc = subprocess.run([sys.executable, __file__, "--rss-probe", str(size), dtype, str(int(ties))],
                          env=env, capture_output=True, text=True)
    return int(proc.stdout) if proc.returncode == 0 and proc.stdout.strip().isdigit() else None


def rss_probe(size: int, dtype: str, ties: bool) -> None:
    id_s, ood_s = scores(size, np.dtype(dtype), ties)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return
    before = _status("VmRSS")
    detection_metrics(id_s, ood_s)
    after = _status("VmHWM")
    if before is not None and after is not None:
        print(max(after - before, 0))


def peak_traced_extra(fn, *args) -> int:
    tracemalloc.start()
    try:
        fn(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def scores(size: int, dtype, ties: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    id_s, ood_s = rng.normal(size=size // 2), rng.normal(0.8, size=size - size // 2)
    if ties:
        id_s, ood_s = id_s.round(2), ood_s.round(2)
    return id_s.astype(dtype), ood_s.astype(dtype)


def measure(size: int, dtype, ties: bool, repeat: int, torch_ood) -> dict:
    id_s, ood_s = scores(size, dtype, ties)
    t_imood, ours = best_of(repeat, detection_metrics, id_s, ood_s)
    t_sk, ref = best_of(repeat, sklearn_metrics, id_s, ood_s)
    t_po, po_diff = None, None
    if torch_ood is not None:
        t_po, po = best_of(repeat, torch_ood, id_s, ood_s)
        po_diff = max(abs(ours[k] - po[k]) for k in po)
    traced = peak_traced_extra(detection_metrics, id_s, ood_s)
    rss = peak_rss_extra(size, np.dtype(dtype).name, ties)
    return {"scores": size, "dtype": np.dtype(dtype).name, "values": "ties" if ties else "distinct",
            "distinct_values": int(np.unique(np.concatenate([id_s, ood_s])).size),
            "imood_s": t_imood, "sklearn_s": t_sk, "speedup_vs_sklearn": t_sk / t_imood,
            "pytorch_ood_s": t_po, "speedup_vs_pytorch_ood": None if t_po is None else t_po / t_imood,
            "traced_bytes_per_score": traced / size, "rss_bytes_per_score": None if rss is None else rss / size,
            "max_abs_diff_sklearn": max(abs(ours[k] - ref[k]) for k in KEYS),
            "max_abs_diff_pytorch_ood_auroc_fpr95": po_diff}


def row(r: dict) -> list[str]:
    def opt(v, fmt):
        return "n/a" if v is None else format(v, fmt)
    return [f"{r['scores']:,}", r["dtype"], r["values"], f"{r['imood_s']:.3f}", f"{r['sklearn_s']:.3f}",
            f"{r['speedup_vs_sklearn']:.1f}x", opt(r["pytorch_ood_s"], ".3f"),
            opt(r["speedup_vs_pytorch_ood"], ".1f") + ("x" if r["pytorch_ood_s"] else ""),
            f"{r['traced_bytes_per_score']:.1f}", opt(r["rss_bytes_per_score"], ".1f"),
            f"{r['max_abs_diff_sklearn']:.1e}", opt(r["max_abs_diff_pytorch_ood_auroc_fpr95"], ".1e")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1e6,1e7", help="total scores (half ID, half OOD), comma-separated")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs of each")
    ap.add_argument("--quick", action="store_true", help="20,000 scores, one run: the CPU-sized check")
    ap.add_argument("--no-pytorch-ood", action="store_true", help="leave pytorch-ood's OODMetrics out")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--rss-probe", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_probe:
        size, dtype, ties = args.rss_probe
        return rss_probe(int(size), dtype, ties == "1")
    # imported here, before any timing, and not in the memory probe's fresh processes
    import sklearn.metrics  # noqa: F401
    from common import print_table, write_json

    if args.quick:
        args.sizes, args.repeat = "2e4", 1
    torch_ood = None if args.no_pytorch_ood else pytorch_ood_metrics()
    results = [measure(int(float(size)), dtype, ties, args.repeat, torch_ood)
               for size in args.sizes.split(",") for dtype in (np.float32, np.float64) for ties in (False, True)]
    print_table(f"metric computation: AUROC + AUPR-in + AUPR-out + FPR95 (seconds, best of {args.repeat})",
                ["scores", "dtype", "values", "imood", "sklearn", "ratio", "pytorch-ood", "ratio",
                 "B/score traced", "B/score RSS", "|diff| sklearn", "|diff| p-ood"], [row(r) for r in results])
    print("|diff| p-ood: AUROC and FPR95 only (its AUPRs use the trapezoid rule); RSS: peak resident memory")
    write_json(args.json, {"benchmark": "metrics", "repeat": args.repeat, "results": results})
    bad = [r for r in results if r["max_abs_diff_sklearn"] > TOLERANCE]
    if bad:
        sys.exit("\n".join(f"imood and scikit-learn differ by {r['max_abs_diff_sklearn']:.2e} at {r['scores']} "
                           f"{r['dtype']} {r['values']} scores" for r in bad))


if __name__ == "__main__":
    main()
