"""`api.load_run`: a run's model as a plain classifier that `api.score_model` scores with every detector."""

import numpy as np
import pytest
import torch

from imood_cli import api
from imood_cli.data.benchmarks.digits import Digits
from imood_cli.engine.runs.checkpoint import save_tensors
from imood_cli.engine.training.config import resolve_config
from imood_cli.engine.training.setup import architecture, model_metadata
from imood_cli.fs.atomic import atomic_write_text
from imood_cli.models.imood_model import ImOODModel


@pytest.mark.parametrize("metric", ["oe", "bin_disc"])  # bin_disc: one extra output beyond the K classes
def test_a_run_scores_through_the_public_api(tmp_path, metric):
    cfg = resolve_config({"dataset": "digits", "save_root": str(tmp_path), "name": "r", "ood_metric": metric})
    bench = Digits().load(None)
    arch = architecture(cfg, bench, 1)
    torch.manual_seed(0)
    net = ImOODModel(arch).eval()
    atomic_write_text(tmp_path / "r" / "config.json", cfg.to_json())
    save_tensors(tmp_path / "r" / "model.safetensors", net.state_dict(),
                 model_metadata(cfg, arch, list(bench.class_counts), 1))
    run = api.load_run(tmp_path / "r")
    x = torch.rand(12, *bench.test.images.shape[1:])
    with torch.no_grad():
        logits = net(x).logits
        assert torch.equal(run.model(x), logits) and run.class_counts == list(bench.class_counts)
    labels = torch.arange(12) % len(run.class_counts)
    out = api.score_model(run.model, [x[:6]], {"noise": [x[6:]]}, ["msp", "energy", "vim", "react"],
                          split=run.split, class_counts=run.class_counts, fit_loader=[(x, labels)])
    p = torch.softmax(logits.double(), 1).max(1).values.numpy()
    assert np.allclose(out.id_scores["msp"], -p[:6], atol=1e-6)
    assert np.allclose(out.ood_scores["energy"]["noise"], -torch.logsumexp(logits[6:].double(), 1).numpy(),
                       atol=1e-5)
    assert set(out.id_scores) == {"msp", "energy", "vim", "react"} and not out.skipped
    out.save(tmp_path / "scores")
    back = api.read_scores(tmp_path / "scores" / "msp.safetensors")
    assert np.allclose(back.id_score, out.id_scores["msp"])


@pytest.mark.parametrize("flag,name", [("--timm", "resnet18"), ("--torchvision", "resnet18")])
def test_an_imported_model_loads_and_scores_the_same_way(tmp_path, cli, flag, name):
    code, _, err = cli(["import-model", flag, name, "--ds", "digits", "--image-size", "32", "--out", tmp_path / "r"])
    assert code == 0, err
    run = api.load_run(tmp_path / "r")
    x = torch.rand(8, run.meta["preprocess"]["in_chans"], 32, 32)
    labels = torch.arange(8) % len(run.class_counts)
    out = api.score_model(run.model, [x[:4]], {"noise": [x[4:]]}, ["msp", "react", "vim"], split=run.split,
                          class_counts=run.class_counts, fit_loader=[(x, labels)])
    with torch.no_grad():
        p = torch.softmax(run.model(x[:4]).double(), 1).max(1).values.numpy()
    assert np.allclose(out.id_scores["msp"], -p, atol=1e-6) and not out.skipped
