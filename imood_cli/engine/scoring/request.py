"""What `imood score` is asked to do: the detectors, the prior, the batch size, the extra OOD sets."""

from __future__ import annotations

from dataclasses import dataclass, field

from imood_cli.data.base import ImageSet


@dataclass
class ScoreRequest:
    detectors: list[str]  # "name" or "name:key=value:..." specs
    logit_adjust: float = 1.0
    ada_scale: float | str | None = None  # a number, "auto" (fitted on the ID training set) or None
    batch_size: int = 512
    workers: int = 0
    extra_ood: dict[str, ImageSet] = field(default_factory=dict)
    threads: int = 0  # CPU threads; 0: from the model's size (one thread for tiny models)
    skip_unavailable: bool = False  # drop detectors the model cannot run (-m all), with a note; else an error
    refit: bool = False  # refit every detector that needs a fit, ignoring and replacing its cache in RUN/fits/
