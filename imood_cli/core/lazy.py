"""Modules imported on first use, so `imood --help`, `plugins list` and `data list` start without torch.

`from imood_cli.core.lazy import torch` gives an object that imports torch the first time one of its
attributes is read (`torch.softmax`, `torch.Tensor`, ...). Annotations stay strings under
`from __future__ import annotations`, so a module that only defines classes and functions costs
nothing until it computes something.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


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


torch: Any = LazyModule("torch")
F: Any = LazyModule("torch.nn.functional")
np: Any = LazyModule("numpy")
