"""Modules imported on first use, so `imood --help`, `plugins list` and `data list` start without torch.

`from imood_cli.core.lazy import torch` gives an object that imports torch the first time one of its
attributes is read (`torch.softmax`, `torch.Tensor`, ...). Annotations stay strings under
`from __future__ import annotations`, so a module that only defines classes and functions costs
nothing until it computes something.

Type checkers see `torch`, `F` and `np` as the modules themselves (`torch.tensor(...)` is checked against
torch's own annotations); at run time they are the lazy stand-ins.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any


class LazyModule(ModuleType):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_lazy_name"] = name

    def _load(self) -> ModuleType:
        return importlib.import_module(self.__dict__["_lazy_name"])

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __dir__(self) -> list[str]:
        return dir(self._load())


if TYPE_CHECKING:  # checkers see the real modules; at run time each is a LazyModule standing in for it
    import numpy as np
    import torch
    import torch.nn.functional as F
else:
    torch = LazyModule("torch")
    F = LazyModule("torch.nn.functional")
    np = LazyModule("numpy")
