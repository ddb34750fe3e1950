"""Built-in methods, one file per paper: the score it contributes, the training objective if it has one, and
the paper itself (`core.method`); each registered by one entry point in pyproject.toml (group
`imood.ood_metrics`) exactly as a plugin's would be."""
