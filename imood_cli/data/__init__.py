"""Datasets: long-tailed ID training sets, auxiliary OOD data and OOD test sets.

Benchmarks register through the `imood.datasets` entry-point group; each provides
`status(root)`, `prepare(root, ...)` and `load(root, ...)`.
"""
