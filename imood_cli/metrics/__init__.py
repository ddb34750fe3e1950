"""Built-in OOD metrics. Each is one file and one entry point in pyproject.toml."""
