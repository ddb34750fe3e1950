"""Built-in detectors, one file each, named after the method; each registered by one entry point in
pyproject.toml (group `imood.ood_metrics`) exactly as a plugin's would be."""
