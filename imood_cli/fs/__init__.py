"""Touching the disk safely: atomic writes, and reading only regular files within limits.

The ground floor: it imports nothing of imood but `errors`, so every layer above may use it.
"""
