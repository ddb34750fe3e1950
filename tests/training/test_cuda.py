"""CUDA paths (run on a GPU machine; skipped, and reported as skipped, elsewhere)."""

import pytest
import torch

from imood_cli.data.pipeline.augment import CIFAR_AUGMENT, augment, draw

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_device_augmentation_matches_the_cpu():
    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    d = draw(CIFAR_AUGMENT, 256, torch.device("cpu"), torch.Generator().manual_seed(0))
    on_gpu = type(d)(*(getattr(d, f).cuda() for f in d.__dataclass_fields__))
    cpu = augment(images, CIFAR_AUGMENT, draws=d)
    gpu = augment(images.cuda(), CIFAR_AUGMENT, draws=on_gpu).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-5)


@cuda
def test_bf16_training_and_scoring_on_cuda(tmp_path):
    from imood_cli.data.benchmarks.digits import Digits
    from imood_cli.engine.runtime import setup
    from imood_cli.engine.scoring.loading import load_model
    from imood_cli.engine.scoring.request import ScoreRequest
    from imood_cli.engine.scoring.score import score
    from imood_cli.engine.training.config import resolve_config
    from imood_cli.engine.training.lifecycle import train

    bench = Digits().load(None)
    rt = setup("cuda")
    assert rt.amp and rt.channels_last
    cfg = resolve_config(dict(dataset="digits", save_root=str(tmp_path), name="g", epochs=3, device="cuda"))
    res = train(cfg, rt, bench=bench)
    assert res.last["loss"] < 10
    loaded = load_model(res.run_dir, rt.device)
    gpu = score(loaded, bench, ScoreRequest(["ada_energy", "maha"]), rt)
    cpu_rt = setup("cpu")
    cpu = score(load_model(res.run_dir, "cpu"), bench, ScoreRequest(["ada_energy", "maha"]), cpu_rt)
    for m in ("ada_energy", "maha"):
        # bf16 inference against fp32: the orderings agree closely
        a, b = gpu[m].id_score, cpu[m].id_score
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.99
