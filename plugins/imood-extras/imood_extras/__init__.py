"""imood-extras: the OOD detector `margin` and the aux loss `supcon`, as an imood plugin.

imood finds them through the entry points in this distribution's pyproject.toml; nothing here is
imported by imood itself, and nothing here imports more of imood than `imood_cli.plugin_api`.
"""

__version__ = "0.2.0"
