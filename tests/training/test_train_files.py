"""Training and scoring from image files (the ImageNet-LT path) on a tiny tree."""

import torch
from fixtures_data import write_imagenet

from imood_cli.engine.runs.checkpoint import load_tensors


def test_imagenet_layout_trains_and_scores(tmp_path, cli, cli_code):
    write_imagenet(tmp_path, train_counts=(6, 4, 2), test_per_class=2, extra=8, ood=4)
    common = ["--ds", "imagenet", "--drp", tmp_path, "--srp", tmp_path / "runs", "--md", "imood_resnet_micro",
              "--batch-size", "4", "--workers", "0", "--epochs", "1"]
    assert cli_code(["train", *common, "--name", "a"]) == 0
    tensors, meta = load_tensors(tmp_path / "runs" / "a" / "model.safetensors")
    assert meta["architecture"]["cifar_stem"] is False and meta["class_counts"] == [6, 4, 2]
    assert all(torch.isfinite(t.float()).all() for t in tensors.values())
    code, out, err = cli(["score", tmp_path / "runs" / "a", "-m", "ada_bin_disc", "--workers", "0"])
    assert code == 0, err
    assert (tmp_path / "runs" / "a" / "scores" / "ada_bin_disc.safetensors").exists()
