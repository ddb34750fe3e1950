"""imood-extras: OOD metrics `maxlogit` and `knn` and the aux loss `supcon`, as an imood plugin.

imood finds them through the entry points in this distribution's pyproject.toml; nothing here is
imported by imood itself.
"""

__version__ = "0.1.0"
