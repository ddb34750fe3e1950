"""The command-line face: parsing, progress display and printing only; the work is in the engine."""
