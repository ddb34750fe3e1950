"""Ablation of the ImOOD regularizer on the embedded digits benchmark, one variable at a time.

Each pair differs in the training loss only: `X` against `ada_X` (ImOOD's constraint + BCE on X's statistic)
at the same logit-adjusted CE (τ = 1) and the same aux loss (none, then pascl); every model is scored with
the vanilla detector of its training metric (oe → msp), as the paper tests. `maha` has no training loss
(post hoc only): one model scored with `maha`, with the post-hoc `ada_maha` (c = 0.01) and with `ada_maha`
at `--ada-scale auto` (c fitted on the ID training set). One extra row
trains `oe` with plain CE (τ = 0), the baseline of the README's demo, so that each step from it to
`ada_oe + pascl` (LA-CE, the regularizer, PASCL) is measured on its own.

Per configuration: mean ± std over seeds of AUROC / FPR95 (means over the three OOD sets), ID accuracy,
few-shot accuracy and the shot-group errors at the FPR95 threshold (ID test images flagged as OOD, many /
medium / few-shot); then the paired differences (ada_ − vanilla, pascl − none, LA-CE − CE; same seed), the
same pairs by OOD set and by shot group, the training loss by epoch (has it flattened before the lr reaches
zero?), the commits the runs were trained at, and the health checks (ID accuracy ≥ 90%, no OOD set scored
below AUROC 50).

    python bench/ablation_digits.py                    # 5 seeds × 30 epochs (the digits recipe), Markdown
    python bench/ablation_digits.py --seeds 0,1 --epochs 10 --out runs/ablation --json ablation.json

Everything runs in this process (no `imood` start-up per run). With --out, each run's evaluation is kept
in OUT/<run>/ablation-eval.json and reused when the script is run again.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import commit, markdown, run_records, write_json

from imood_cli.data.benchmarks.digits import Digits
from imood_cli.data.benchmarks.glyphs import Glyphs
from imood_cli.engine.metrics.evaluate import evaluate
from imood_cli.engine.metrics.paired import describe, paired_difference
from imood_cli.engine.runtime import setup
from imood_cli.engine.scoring.loading import load_model
from imood_cli.engine.scoring.request import ScoreRequest
from imood_cli.engine.scoring.score import score
from imood_cli.engine.training.config import resolve_config
from imood_cli.engine.training.lifecycle import train
from imood_cli.fs.atomic import atomic_write_text
from imood_cli.report.sweep import SATURATED

EVAL_FILE = "ablation-eval.json"
CURVE_POINTS = (0.25, 0.5, 0.75, 0.9, 1.0)  # fractions of the epochs at which the training-loss table samples
AUTO = "@auto"  # a detector label suffix: scored with --ada-scale auto (c fitted on the ID training set)
VANILLA = {"oe": "msp", "energy": "energy", "bin_disc": "bin_disc"}
GROUPS = ("many", "medium", "few")


@dataclass(frozen=True)
class Config:
    """One trained model family: training metric, aux loss, τ; and the detector that scores it."""

    metric: str
    aux: str
    tau: float
    detector: str
    correction: str = "full"  # --ada-correction of an ada_ training: full, none (δ ≡ 1) or flat-prior
    margins: tuple[float, float] | None = None  # energy's (m_in, m_out) when not the benchmark's default

    @property
    def run(self) -> str:
        extra = "" if self.correction == "full" else f"-{self.correction}"
        extra += "" if self.margins is None else "-m{:g}_{:g}".format(*self.margins)
        return f"{self.metric}{extra}-{self.aux}-tau{self.tau:g}"

    @property
    def trained(self) -> str:
        margins = "" if self.margins is None else " (m_in {:g}, m_out {:g})".format(*self.margins)
        return self.metric + margins + ("" if self.correction == "full" else f" [{CONTROL[self.correction]}]")

    @property
    def label(self) -> str:
        ce = "CE" if self.tau == 0 else "LA-CE"
        return f"{self.trained} · {self.aux} · {ce} → {shown(self.detector)}"


CONTROL = {"none": "δ ≡ 1", "flat-prior": "flat prior"}


def shown(detector: str) -> str:
    return detector.replace(AUTO, " (--ada-scale auto)")


def configurations(bases: list[str], auxes: list[str], plain_ce: bool, controls: tuple[str, ...] = (),
                   margins: tuple[float, float] | None = None) -> list[tuple[Config, Config]]:
    """(vanilla, ada_) pairs that differ in one thing. With `controls`, each ada_ training is also split into
    its two changes by the matched controls (--ada-correction): with "none", the loss family alone (X → ada_X
    with δ ≡ 1) and the prior-aware correction (δ ≡ 1 → full); with "flat-prior", the class prior inside it
    (flat prior → full). With
    `margins`, energy → ada_energy is also paired with energy trained at those margins."""
    pairs = []
    for aux in auxes:
        for base in bases:
            if base == "maha":  # post hoc only: one model, scored with maha, ada_maha, ada_maha with c fitted
                pairs.append((Config("maha", aux, 1.0, "maha"), Config("maha", aux, 1.0, "ada_maha")))
                pairs.append((Config("maha", aux, 1.0, "maha"), Config("maha", aux, 1.0, "ada_maha" + AUTO)))
            else:
                vanilla, ada = Config(base, aux, 1.0, VANILLA[base]), Config(f"ada_{base}", aux, 1.0, VANILLA[base])
                pairs.append((vanilla, ada))
                if margins is not None and base == "energy":  # the baseline at other margins, same ada_ model
                    pairs.append((Config(base, aux, 1.0, VANILLA[base], margins=margins), ada))
                if "none" in controls:
                    plain = Config(f"ada_{base}", aux, 1.0, VANILLA[base], "none")
                    pairs += [(vanilla, plain), (plain, ada)]
                if "flat-prior" in controls:
                    pairs.append((Config(f"ada_{base}", aux, 1.0, VANILLA[base], "flat-prior"), ada))
    if plain_ce and "oe" in bases and "none" in auxes:
        pairs.insert(0, (Config("oe", "none", 0.0, "msp"), Config("oe", "none", 1.0, "msp")))
    if "none" in auxes:  # the aux loss, all else equal
        for other in (a for a in auxes if a != "none"):
            first = {}  # one detector per trained model: the vanilla one
            for c in (c for pair in pairs for c in pair if c.aux == "none" and c.tau == 1.0):
                first.setdefault(c.metric, c)
            pairs += [(c, Config(c.metric, other, c.tau, c.detector)) for c in first.values()]
    return pairs


def evaluate_detectors(loaded, bench, rt, detectors: list[str]) -> dict[str, dict]:
    """{detector label: metrics} for detectors scored on a trained model (labels ending in @auto: c fitted)."""
    out = {}
    for auto in (False, True):
        names = [d.removesuffix(AUTO) for d in detectors if d.endswith(AUTO) == auto]
        if not names:
            continue
        # ada_ scores use the prior of the training labels at τ = 1, whatever τ the model trained with.
        req = ScoreRequest(names, logit_adjust=1.0, batch_size=1024, ada_scale="auto" if auto else None)
        for name, s in score(loaded, bench, req, rt).items():
            ev = evaluate(s.id_score, s.ood_score, id_labels=s.id_label, id_preds=s.id_pred,
                          class_counts=loaded.class_counts)
            groups = {g: float(np.mean([ev["groups"][k]["id_flagged_as_ood"][g] for k in s.ood_score]))
                      for g in GROUPS}
            out[name + (AUTO if auto else "")] = {
                "auroc": ev["ood"]["mean"]["auroc"], "fpr95": ev["ood"]["mean"]["fpr95"], "acc": ev["id"]["acc"],
                "few": ev["id"]["few"], "flagged": groups, "ada_scale": s.meta.get("ada_scale"),
                "per_set_auroc": {k: v["auroc"] for k, v in ev["ood"].items() if k != "mean"}}
    return out


def run_one(cfg: Config, seed: int, epochs: int, root: Path, bench, rt, detectors: list[str],
            device: str = "cpu") -> dict[str, dict]:
    """Train and evaluate; {detector: result}. A run whose folder already holds this script's evaluation
    reuses it, and its model for detectors not evaluated yet."""
    folder = root / f"{cfg.run}-seed{seed}"
    cached = folder / EVAL_FILE
    data = json.loads(cached.read_text()) if cached.is_file() else {}
    if data.get("epochs") == epochs:
        results, info = data["results"], data["training"]
    else:
        opts = {"dataset": bench.name, "save_root": str(root), "name": folder.name, "ood_metric": cfg.metric,
                "aux_ood_loss": cfg.aux, "logit_adjust": cfg.tau, "seed": seed, "epochs": epochs, "device": device,
                "ada_correction": cfg.correction}
        if cfg.margins is not None:
            opts["m_in"], opts["m_out"] = cfg.margins
        t0 = time.perf_counter()
        result = train(resolve_config(opts), rt, bench=bench, force=True)
        results, info = {}, {"warnings": result.warnings, "train_seconds": time.perf_counter() - t0,
                             "commit": commit()}
    missing = [d for d in detectors if d not in results]
    if missing:
        results.update(evaluate_detectors(load_model(folder), bench, rt, missing))
        atomic_write_text(cached, json.dumps({"epochs": epochs, "training": info, "results": results}, indent=1))
    return {d: {**results[d], **info} for d in detectors}


def mean_std(values: list[float], scale: float = 100.0) -> str:
    v = np.asarray(values, dtype=np.float64) * scale
    return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}"


def summary_row(cfg: Config, runs: list[dict]) -> list[str]:
    flagged = " / ".join(f"{100 * np.mean([r['flagged'][g] for r in runs]):.1f}" for g in GROUPS)
    per_set = " / ".join(f"{100 * np.mean([r['per_set_auroc'][k] for r in runs]):.1f}"
                         for k in runs[0]["per_set_auroc"])
    return [cfg.label, mean_std([r["auroc"] for r in runs]), per_set, mean_std([r["fpr95"] for r in runs]),
            mean_std([r["acc"] for r in runs]), mean_std([r["few"] for r in runs]), flagged]


def change_label(a: Config, b: Config) -> str:
    """The one thing that differs between a and b, with what they share."""
    if a.correction != b.correction and a.metric == b.metric:
        ce = "CE" if a.tau == 0 else "LA-CE"
        what = "the class prior in the correction" if a.correction == "flat-prior" else "the prior-aware correction"
        return f"{ce} · {a.aux} · {a.metric}: {what} ({a.trained} → {b.trained})"
    if a.correction != b.correction:
        ce = "CE" if a.tau == 0 else "LA-CE"
        return f"{ce} · {a.aux}: the loss family alone ({a.trained} → {b.trained})"
    if a.tau != b.tau:
        return f"{a.metric} · {a.aux}: CE → LA-CE"
    ce = "CE" if a.tau == 0 else "LA-CE"
    if a.aux != b.aux:
        return f"{ce} · {a.metric} → {shown(a.detector)}: {a.aux} → {b.aux}"
    if a.metric != b.metric:
        return f"{ce} · {a.aux}: {a.trained} → {b.trained}"
    return f"{a.metric} model · {ce} · {a.aux}: {shown(a.detector)} → {shown(b.detector)} (post hoc)"


def paired_row(a: Config, b: Config, ra: list[dict], rb: list[dict]) -> list[str]:
    """b − a per seed: the mean with its 95% t interval, the seeds where b is better, the sign test's p
    (engine.metrics.paired); "no measurable effect" where the interval holds 0."""
    cells = [change_label(a, b)]
    for key, higher_better in (("auroc", True), ("fpr95", False), ("acc", True), ("few", True)):
        x = [r[key] for r in ra]
        y = [r[key] for r in rb]
        cells.append(describe(paired_difference(x, y, higher_is_better=higher_better)))
    return cells


def compact(diff) -> str:
    """'+1.22 [+0.30, +2.14] 9/15' in points; in bold where the t interval excludes 0."""
    low, high = (diff.t_low, diff.t_high) if diff.t_low is not None else (diff.boot_low, diff.boot_high)
    mean = f"{100 * diff.mean:+.2f}"
    return f"{f'**{mean}**' if diff.measurable else mean} [{100 * low:+.2f}, {100 * high:+.2f}] {diff.better}/{diff.n}"


def detail_row(a: Config, b: Config, ra: list[dict], rb: list[dict], sets: list[str]) -> list[str]:
    """b − a per seed on each OOD set's AUROC and on the ID test images flagged as OOD at the FPR95 threshold,
    by shot group (lower is better); a set where every run of both is at AUROC ≥ 99.5 is marked saturated."""
    cells = [change_label(a, b)]
    for s in sets:
        x = [r["per_set_auroc"][s] for r in ra]
        y = [r["per_set_auroc"][s] for r in rb]
        saturated = min(x + y) >= SATURATED
        cells.append(("saturated: " if saturated else "") + compact(paired_difference(x, y)))
    for g in GROUPS:
        cells.append(compact(paired_difference([r["flagged"][g] for r in ra], [r["flagged"][g] for r in rb],
                                               higher_is_better=False)))
    return cells


def loss_curve(folder: Path) -> list[tuple[int, float, float]]:
    """(epoch, lr at its end, mean training loss) per epoch, from the run's metrics.jsonl."""
    return [(int(r["epoch"]), float(r["lr"]), float(r["loss"])) for r in run_records(folder, "epoch")]


def curve_rows(models: list[Config], seeds: list[int], root: Path, epochs: int) -> tuple[list[str], list[list[str]]]:
    """The training loss (mean over seeds) at fractions of the epochs, with the lr there, and the share of
    the whole decrease that comes after 75% of the epochs: where the loss has flattened, that share is small
    although the lr is still well above zero."""
    marks = sorted({max(1, round(f * epochs)) for f in CURVE_POINTS} - {1})
    rows, lrs = [], {}
    for cfg in models:
        curves = [dict((e, (lr, loss)) for e, lr, loss in loss_curve(root / f"{cfg.run}-seed{s}")) for s in seeds]
        first = np.mean([c[1][1] for c in curves])
        at = {m: np.mean([c[m][1] for c in curves]) for m in marks}
        lrs = {m: curves[0][m][0] for m in marks}
        q3 = max(1, round(0.75 * epochs))
        drops = [(c[q3][1] - c[epochs][1], c[1][1] - c[epochs][1]) for c in curves]
        late = np.mean([late / whole for late, whole in drops]) if all(w > 0 for _, w in drops) else None
        rows.append([cfg.trained + ("" if cfg.aux == "none" else f" · {cfg.aux}") + ("" if cfg.tau else " (CE)"),
                     f"{first:.3f}"]
                    + [f"{at[m]:.3f}" for m in marks] + ["—" if late is None else f"{100 * late:.1f}%"])
    header = ["training", "loss, epoch 1"] + [f"epoch {m} (lr {lrs.get(m, 0):.1e})" for m in marks] + [
        "share of the decrease after 75% of the epochs"]
    return header, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default 0-4)")
    p.add_argument("--epochs", type=int, default=30, help="epochs per run (default: the digits recipe's 30)")
    p.add_argument("--metrics", default="oe,energy,bin_disc,maha", help="base metrics to ablate")
    p.add_argument("--aux", default="none,pascl", help="aux losses, each a separate block")
    p.add_argument("--no-plain-ce", action="store_true", help="skip the plain-CE oe row")
    p.add_argument("--out", type=Path, default=None, help="keep the runs here (reused when present)")
    p.add_argument("--json", default=None, help="also write every number to this JSON file")
    p.add_argument("--device", default="cpu", help="training and scoring device (default cpu)")
    p.add_argument("--controls", nargs="?", const="none,flat-prior", default="", metavar="none,flat-prior",
                   help="add the matched controls of each ada_ training (--ada-correction none and flat-prior, "
                        "or the one named) and the pairs that separate its two changes")
    p.add_argument("--margins", default=None, metavar="M_IN/M_OUT",
                   help="also train energy at these margins (e.g. those bench/select_margins.py chose on held-out "
                        "data) and pair it with ada_energy")
    p.add_argument("--benchmark", default="digits", choices=("digits", "glyphs"),
                   help="digits (embedded) or glyphs (rendered; `imood data prepare glyphs` first)")
    p.add_argument("--data-root", type=Path, default=Path("data"), help="where glyphs was prepared")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    margins = None if args.margins is None else tuple(float(x) for x in args.margins.split("/"))
    controls = tuple(c for c in args.controls.split(",") if c)
    if set(controls) - set(CONTROL):
        p.error(f"--controls takes {', '.join(CONTROL)}, got {args.controls!r}")
    pairs = configurations(args.metrics.split(","), args.aux.split(","), not args.no_plain_ce, controls,
                           margins)
    bench = Digits().load(None) if args.benchmark == "digits" else Glyphs().load(args.data_root)
    rt = setup(args.device)
    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="imood-ablation-")
    root = args.out or Path(tmp.name)
    by_model: dict[tuple[str, str, float, str], list[str]] = {}
    for pair in pairs:
        for c in pair:
            dets = by_model.setdefault((c.metric, c.aux, c.tau, c.correction, c.margins), [])
            if c.detector not in dets:
                dets.append(c.detector)
    results: dict[Config, list[dict]] = {}
    started = time.perf_counter()
    for (metric, aux, tau, correction, margins), dets in by_model.items():
        for seed in seeds:
            model_cfg = Config(metric, aux, tau, dets[0], correction, margins)
            out = run_one(model_cfg, seed, args.epochs, root, bench, rt, dets, args.device)
            for d in dets:
                results.setdefault(Config(metric, aux, tau, d, correction, margins), []).append(out[d])
            print(f"  {model_cfg.run} seed {seed}: " + ", ".join(
                f"{d} AUROC {100 * out[d]['auroc']:.2f} acc {100 * out[d]['acc']:.2f}" for d in dets),
                file=sys.stderr, flush=True)
    took = time.perf_counter() - started
    set_names = " / ".join(next(iter(results.values()))[0]["per_set_auroc"])
    header = ["training → detector", "AUROC", f"AUROC {set_names}", "FPR95", "ID acc", "few-shot acc",
              "ID flagged at FPR95: many / medium / few"]
    ordered = list(dict.fromkeys(c for pair in pairs for c in pair))
    print(f"\n### {bench.name} ablation: {len(seeds)} seeds ({args.seeds}), {args.epochs} epochs, "
          f"commit {commit()}\n")
    print(markdown(header, [summary_row(c, results[c]) for c in ordered]))
    print("\nPaired differences (second − first, same seed), in points: mean [95% t interval] (seeds where the "
          "second is better / seeds, two-sided sign test p); 'no measurable effect' where the interval holds 0:\n")
    print(markdown(["change", "ΔAUROC", "ΔFPR95", "ΔID acc", "Δfew-shot acc"],
                   [paired_row(a, b, results[a], results[b]) for a, b in pairs]))
    sets = list(next(iter(results.values()))[0]["per_set_auroc"])
    print("\nThe same pairs by OOD set (ΔAUROC) and by shot group (Δ ID test images flagged as OOD at the FPR95 "
          "threshold; negative is better), in points: mean [95% t interval] seeds where the second is better / "
          "seeds; bold where the interval excludes 0:\n")
    print(markdown(["change"] + [f"ΔAUROC {s}" for s in sets] + [f"Δflagged {g}" for g in GROUPS],
                   [detail_row(a, b, results[a], results[b], sets) for a, b in pairs]))
    models = list(dict.fromkeys(Config(c.metric, c.aux, c.tau, "", c.correction, c.margins) for c in ordered))
    curve_header, curve_table = curve_rows(models, seeds, root, args.epochs)
    print(f"\nTraining loss (mean over the {len(seeds)} seeds) by epoch, with the lr at the end of that epoch "
          "(cosine schedule):\n")
    print(markdown(curve_header, curve_table))
    trained_at = {}
    for rs in results.values():
        for r in rs:
            trained_at[r.get("commit", "not recorded")] = trained_at.get(r.get("commit", "not recorded"), 0) + 1
    print("\nScored runs by the commit they were trained at: "
          + ", ".join(f"{k} ({v})" for k, v in sorted(trained_at.items())))
    health = []
    for c in ordered:
        for seed, r in zip(seeds, results[c]):
            low = {k: v for k, v in r["per_set_auroc"].items() if v < 0.5}
            if r["acc"] < 0.9 or low:
                health.append(f"{c.label} seed {seed}: ID acc {100 * r['acc']:.2f}, AUROC<50 on {sorted(low)}")
    worst_acc = min(r["acc"] for rs in results.values() for r in rs)
    worst_auroc = min(v for rs in results.values() for r in rs for v in r["per_set_auroc"].values())
    print(f"\nHealth: lowest ID accuracy {100 * worst_acc:.2f}%, lowest per-set AUROC {100 * worst_auroc:.2f} "
          f"over {sum(len(v) for v in results.values())} scored runs; "
          + ("all runs ≥ 90% ID accuracy and ≥ 50 AUROC on every OOD set" if not health else
             "violations:\n  " + "\n  ".join(health)))
    warned = sorted({w for rs in results.values() for r in rs for w in r["warnings"]})
    print(f"Training warnings: {len(warned)}" + "".join(f"\n  {w}" for w in warned))
    print(f"Wall time of this invocation {took / 60:.1f} min (runs already in --out are reused, not retrained)")
    write_json(args.json, {"benchmark": "ablation_digits", "dataset": bench.name, "seeds": seeds,
                           "epochs": args.epochs, "commit": commit(),
                           "results": {c.label: results[c] for c in ordered},
                           "training_loss": {"header": curve_header, "rows": curve_table}})
    if tmp is not None:
        tmp.cleanup()
    return 1 if health else 0


if __name__ == "__main__":
    raise SystemExit(main())
