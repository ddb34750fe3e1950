"""imood's metric computation against scikit-learn's, side by side in one run.

scikit-learn: roc_auc_score + average_precision_score (OOD positive) + average_precision_score
(ID positive) + FPR95 from roc_curve. imood: one sort for all four. Checks equality to 1e-9.

    python bench/bench_metrics.py --sizes 1e6,1e7 --json bench/results/metrics.json
"""

from __future__ import annotations

import argparse

import numpy as np
from common import print_table, write_json
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from imood_cli.engine.evaluate import ood_metrics


def sklearn_metrics(id_s: np.ndarray, ood_s: np.ndarray) -> dict:
    s = np.concatenate([ood_s, id_s])
    y = np.concatenate([np.ones(ood_s.size), np.zeros(id_s.size)])
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {"auroc": roc_auc_score(y, s), "aupr_out": average_precision_score(y, s),
            "aupr_in": average_precision_score(1 - y, -s), "fpr95": float(fpr[np.argmax(tpr >= 0.95)])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1e6,1e7", help="total scores (half ID, half OOD), comma-separated")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs of each")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    import time

    rows, results = [], []
    for size in [int(float(s)) for s in args.sizes.split(",")]:
        rng = np.random.default_rng(0)
        # float32 model scores rounded the way a model emits them: many exact ties
        id_s = rng.normal(size=size // 2).astype(np.float32).astype(np.float64)
        ood_s = rng.normal(0.8, size=size - size // 2).astype(np.float32).astype(np.float64)

        def best(fn):
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t)
            return min(times), out

        t_imood, ours = best(lambda: ood_metrics(id_s, ood_s))
        t_sk, ref = best(lambda: sklearn_metrics(id_s, ood_s))
        diff = max(abs(ours[k] - ref[k]) for k in ref)
        assert diff <= 1e-9, f"imood and scikit-learn differ by {diff}"
        rows.append([f"{size:,}", t_imood, t_sk, f"{t_sk / t_imood:.1f}x", f"{diff:.1e}"])
        results.append({"scores": size, "imood_s": t_imood, "sklearn_s": t_sk, "speedup": t_sk / t_imood,
                        "max_abs_diff": diff})
    print_table("metric computation: AUROC + AUPR-in + AUPR-out + FPR95 (seconds, best of %d)" % args.repeat,
                ["scores", "imood", "scikit-learn", "speedup", "max |diff|"],
                [[r[0], f"{r[1]:.3f}", f"{r[2]:.3f}", r[3], r[4]] for r in rows])
    write_json(args.json, {"benchmark": "metrics", "results": results})


if __name__ == "__main__":
    main()
