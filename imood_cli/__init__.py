"""imood: out-of-distribution detection on long-tailed data (the ImOOD method)."""

__version__ = "0.2.0"
