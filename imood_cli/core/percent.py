"""imood's percentage convention for options, and a percentile that works on any number of values.

Percentages are 0-100 everywhere in imood (`ash:p=90`); pytorch-ood and several papers write fractions
(`percentile=0.9`), so a value strictly between 0 and 1 is almost always a fraction typed by mistake:
`check_percentage` refuses it with the value to write instead.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from imood_cli.core.contract import OptionError
from imood_cli.core.lazy import torch
from imood_cli.errors import ImoodError

if TYPE_CHECKING:
    from torch import Tensor


def check_percentage(key: str, value: float, *, inclusive: bool = False, meaning: str = "") -> None:
    """That option `key` is a percentage in [0, 100) ([0, 100] when `inclusive`), and not a fraction."""
    top = "]" if inclusive else ")"
    if not (0.0 <= value <= 100.0 if inclusive else 0.0 <= value < 100.0):
        raise OptionError(f"{key} is a percentage{f' ({meaning})' if meaning else ''} in [0, 100{top}, got {value:g}")
    if 0.0 < value < 1.0:
        raise OptionError(f"{key} is a percentage (0-100, not a fraction), got {value:g}: for {value * 100:g}% "
                          f"write {key}={value * 100:g}")


def percentile(values: Tensor, p: float) -> Tensor:
    """The p-th percentile (0-100) of all entries of `values`, linearly interpolated as numpy's default does,
    as a float64 scalar.

    A selection, not torch.quantile: quantile sorts a full copy and, in most torch releases imood supports,
    refuses inputs above 2^24 entries, fewer than a training set's activations (50,000 × 512). On the CPU the
    selection is numpy's introselect (linear time whatever the order: torch's CPU kthvalue takes quadratic
    time on values in descending order, 25 s for a million); elsewhere torch's kthvalue (a radix select).
    """
    flat = values.detach().reshape(-1)
    n = flat.numel()
    if n == 0:
        raise ImoodError("cannot take a percentile of no values")
    position = (n - 1) * p / 100.0
    below = math.floor(position)
    frac = position - below
    upper = min(below + 1, n - 1)
    if flat.device.type == "cpu":
        import numpy as np

        array = flat.float().numpy() if flat.dtype in (torch.float16, torch.bfloat16) else flat.numpy()
        picked = np.partition(array, [below, upper])
        low_v, high_v = torch.tensor(float(picked[below]), dtype=torch.float64), float(picked[upper])
    else:
        low_v = flat.kthvalue(below + 1).values.double()
        high_v = float(flat.kthvalue(upper + 1).values) if frac else 0.0
    if frac == 0.0:
        return low_v
    return low_v + (high_v - low_v) * frac
