"""`imood_resnet_micro`: the digits benchmark's backbone, built without timm.

A 4-stage ResNet with one BasicBlock per stage and widths 16-128 after a 64-channel stem, for 8×8 inputs.
It has timm's ResNet layout, parameter names and initialization (so its model files are those of timm's
ResNet with these settings) and timm's `forward_features` / `forward_head` interface. It is built here
because importing timm costs seconds per command (it imports torchvision, which imports torch._dynamo):
more than a whole digits training run takes.
"""

from __future__ import annotations

import torch
from torch import nn

NAME = "imood_resnet_micro"
STEM = 64  # timm's default stem width (its stem_width applies to deep stems only)
WIDTHS = (16, 32, 64, 128)


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act2(x + shortcut)


class MicroResNet(nn.Module):
    def __init__(self, in_chans: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, STEM, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = STEM
        for i, planes in enumerate(WIDTHS):
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(inplanes, planes, 1 if i == 0 else 2)))
            inplanes = planes
        self.num_features = WIDTHS[-1]
        for m in self.modules():  # timm's ResNet.init_weights (zero_init_last on)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
