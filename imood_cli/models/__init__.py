"""Where a classifier comes from and how it splits into stages.

    adapter             a family's split: feature map -> pooled features -> classifier, chosen per module
    timm_family         timm models by name: building, pretrained weights from the local cache, recipe
    torchvision_family  torchvision models by name: the same, and one adapter per family
    imood_model         imood's model: a backbone seen through an adapter, a linear classifier, the ImOOD heads
    staged              any nn.Module seen through an adapter, as the scoring engine sees imood's own models
    preprocess          how an imported model's inputs are made from a benchmark's images
    weights             reading weights files (safetensors, .pth with weights_only=True)
    reference           the reference code's checkpoints; importer: a named classifier with its weights

Nothing here imports the engine or the command line; timm and torchvision are imported when a model of
theirs is built.
"""
