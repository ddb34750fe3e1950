"""The ground floor: the plugin contract's types, the class-prior math, atomic file writes.

Nothing here imports any other part of imood (except `imood_cli.errors`), and nothing here
imports torch at import time, so the command line can start without it.
"""
