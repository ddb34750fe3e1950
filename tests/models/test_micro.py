"""The digits backbone built without timm is timm's ResNet with the same settings: names, shapes, outputs."""

import pytest
import torch
from timm.models.resnet import BasicBlock, ResNet

from imood_cli.models.imood_model import apply_cifar_stem
from imood_cli.models.micro import MicroResNet


@pytest.mark.parametrize("cifar_stem,size", [(True, 8), (False, 32)])
def test_same_network_as_timms_resnet(cifar_stem, size):
    torch.manual_seed(0)
    ref = ResNet(block=BasicBlock, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), num_classes=0, in_chans=1)
    torch.manual_seed(0)
    mine = MicroResNet(1)
    if not cifar_stem:  # same construction order, same random draws: the same initialization
        assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), mine.state_dict().values()))
    if cifar_stem:
        apply_cifar_stem(ref, 1)
        apply_cifar_stem(mine, 1)
    assert {k: v.shape for k, v in ref.state_dict().items()} == {k: v.shape for k, v in mine.state_dict().items()}
    mine.load_state_dict(ref.state_dict())
    ref.eval(), mine.eval()
    x = torch.randn(4, 1, size, size)
    torch.testing.assert_close(mine.forward_features(x), ref.forward_features(x))
    torch.testing.assert_close(mine.forward_head(mine.forward_features(x), pre_logits=True), ref(x))
    assert mine.num_features == ref.num_features == 128


def test_a_digits_command_does_not_import_timm(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from imood_cli.models.imood_model import ImOODModel, Architecture; "
            "ImOODModel(Architecture('imood_resnet_micro', 6, 0, 1, True)); print('timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "False"
