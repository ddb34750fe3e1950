"""A guard over a training run's log records: it says once, in words, when training has gone wrong in a
way the user would otherwise only find after scoring.

Two conditions, each judged over consecutive log records that together cover a sustained stretch of
the run (a quarter of its steps, at most 1,000 steps, at least two records: the first record averages
the steps in which every network is still at chance):
- a regularizer dominates: Lambda · L_ood or Lambda2 · L_aux is an order of magnitude above every other
  term, the classification loss included. A classification loss that has already fallen below a tenth of
  log K (a well-fitted classifier) counts as 0.1 · log K, so an OOD term that outlives a converged
  cross-entropy is not mistaken for one that crowds it out. The cross-entropy itself dominating is the
  normal start of every run and is not reported.
- the classifier does not learn: the training-batch ID accuracy stays within a quarter of the way from
  chance (always predicting the most frequent training class) to 100%.

The warning names the term and the options that control it. The engine passes it to the observer's
`message()` and returns it in `TrainResult.warnings`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

DOMINANCE_RATIO = 10.0  # "orders of magnitude": one order is already far outside a healthy balance
CE_FLOOR = 0.1  # in units of log K
NEAR_CHANCE = 0.25  # fraction of the way from chance accuracy to 100%
SUSTAIN_FRACTION = 0.25
SUSTAIN_MAX_STEPS = 1000

TERMS = {"l_ood": "Lambda", "l_aux": "Lambda2"}  # term -> the weight that multiplies it in the total loss


@dataclass
class TrainingGuard:
    """Feed it every "log" record (`observe`); it returns a warning the first time a condition has held for
    `sustain_steps` steps, and never again for that run.

    weights:  {"l_ood": Lambda, "l_aux": Lambda2}.
    controls: {"l_ood": "--m-in/--m-out/--Lambda", "l_aux": "--Lambda2"}: the options to name for each term.
    labels:   {"l_ood": "the OOD loss of energy", ...}: how to name each term.
    """

    num_classes: int
    chance: float  # accuracy of always predicting the most frequent training class
    log_every: int
    sustain_steps: int
    weights: dict[str, float]
    controls: dict[str, str]
    labels: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    _dominant: dict[str, int] = field(default_factory=dict)  # term -> consecutive steps it dominated
    _near_chance: int = 0
    _peak: dict[str, float] = field(default_factory=dict)  # term -> largest ratio seen in the current stretch
    _share: dict[str, float] = field(default_factory=dict)  # term -> largest term / l_in while near chance

    @classmethod
    def for_run(cls, cfg: Any, objective: Any, class_counts: list[int], total_steps: int) -> TrainingGuard:
        """The guard of a run: its loss weights, the options of its objective and aux loss, its step count."""
        name = cfg.ood_metric.split(":")[0]
        margins = [k for k in ("m_in", "m_out") if k in margin_options(objective)]
        ood_opts = "/".join([f"--{k.replace('_', '-')}" for k in margins] + ["--Lambda"])
        sustain = max(2 * cfg.log_every, min(round(SUSTAIN_FRACTION * total_steps), SUSTAIN_MAX_STEPS))
        return cls(num_classes=len(class_counts), chance=max(class_counts) / sum(class_counts),
                   log_every=cfg.log_every, sustain_steps=sustain,
                   weights={"l_ood": cfg.Lambda, "l_aux": cfg.Lambda2},
                   controls={"l_ood": ood_opts, "l_aux": "--Lambda2"},
                   labels={"l_ood": f"the OOD loss of {name}",
                           "l_aux": f"the aux loss {cfg.aux_ood_loss.split(':')[0]}"})

    @property
    def ce_floor(self) -> float:
        return CE_FLOOR * math.log(max(self.num_classes, 2))

    def accuracy_floor(self) -> float:
        return self.chance + NEAR_CHANCE * (1.0 - self.chance)

    def contributions(self, record: dict[str, Any]) -> dict[str, float]:
        """Each term's share of the total loss: l_in, Lambda · l_ood, Lambda2 · l_aux."""
        out = {"l_in": float(record.get("l_in", 0.0))}
        for term, weight in self.weights.items():
            out[term] = weight * float(record.get(term, 0.0))
        return out

    def observe(self, record: dict[str, Any]) -> str | None:
        """The warning this record completes, if any (at most one per run)."""
        if record.get("kind", "log") != "log" or self.warnings:
            return None
        parts = self.contributions(record)
        for term in self.weights:
            ratio = parts[term] / max([v for k, v in parts.items() if k != term] + [self.ce_floor])
            if ratio >= DOMINANCE_RATIO:
                self._dominant[term] = self._dominant.get(term, 0) + self.log_every
                self._peak[term] = max(self._peak.get(term, 0.0), ratio)
            else:
                self._dominant[term], self._peak[term] = 0, 0.0
        acc = record.get("train_acc")
        if acc is not None and acc <= self.accuracy_floor():
            self._near_chance += self.log_every
            for term in self.weights:
                share = parts[term] / max(parts["l_in"], 1e-12)
                self._share[term] = max(self._share.get(term, 0.0), share)
        else:
            self._near_chance, self._share = 0, {}
        text = self._verdict(record, parts)
        if text:
            self.warnings.append(text)
        return text

    def _verdict(self, record: dict[str, Any], parts: dict[str, float]) -> str | None:
        step = record.get("step", "?")
        for term, steps in self._dominant.items():
            if steps >= self.sustain_steps:
                return (f"{self.labels[term]} ({TERMS[term]} · {term} = {parts[term]:.3g}) has been up to "
                        f"{self._peak[term]:.0f}× every other loss term (l_in = {parts['l_in']:.3g}) for "
                        f"{steps} steps, up to step {step}: it crowds out the classifier"
                        f"{self._accuracy_note(record)}. Set {self.controls[term]} so that it starts near the "
                        "classification loss")
        if self._near_chance >= self.sustain_steps:
            blame = max(self.weights, key=lambda t: self._share.get(t, 0.0))
            if self._share.get(blame, 0.0) >= 1.0:
                cause = (f"{self.labels[blame]} ({TERMS[blame]} · {blame}) has been up to "
                         f"{self._share[blame]:.1f}× the classification loss meanwhile: set {self.controls[blame]}")
            else:
                cause = "check the learning rate (--lr) and the number of epochs (--epochs)"
            return (f"training-batch ID accuracy has stayed at or near chance for {self._near_chance} steps, up to "
                    f"step {step} ({100 * record['train_acc']:.0f}%; always predicting the largest class scores "
                    f"{100 * self.chance:.0f}%): the classifier is not learning; {cause}")
        return None

    def _accuracy_note(self, record: dict[str, Any]) -> str:
        acc = record.get("train_acc")
        return "" if acc is None else f" (training-batch ID accuracy {100 * acc:.0f}%)"


def margin_options(objective: Any) -> tuple[str, ...]:
    """The options of the loss a run trains with (an ada_ objective has its base's only when it keeps it)."""
    if objective is None:
        return ()
    base = getattr(objective, "base", None)
    if hasattr(objective, "keep_base"):
        return tuple(base.options()) if objective.keep_base else ()
    return tuple(objective.options())
