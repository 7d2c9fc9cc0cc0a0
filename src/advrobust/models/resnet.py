"""Pre-activation ResNet-18, as used for CIFAR-10 adversarial training."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.models.registry import register_model


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, plus a 1x1 shortcut when the shape changes.

    Shape: x (N, in_planes, H, W) -> (N, planes, H / stride, W / stride).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            # A Sequential so the keys (shortcut.0.weight) match the published checkpoints.
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = F.relu(self.bn1(x))
        shortcut: Tensor = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 of He et al. 2016, "Identity mappings in deep residual networks".

    (arXiv:1603.05027.) The CIFAR-10 variant of Wong et al. 2020 and Rice et al. 2020 (3x3 stem, four stages
    of two blocks with 64/128/256/512 channels), with parameter names matching their code. Global average
    pooling replaces their fixed 4x4 pooling: identical on 32x32 inputs, and it accepts other sizes.

    Shape: x (N, in_channels, 32, 32) -> logits (N, num_classes).
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.layer1 = self._stage(64, 64, stride=1)
        self.layer2 = self._stage(64, 128, stride=2)
        self.layer3 = self._stage(128, 256, stride=2)
        self.layer4 = self._stage(256, 512, stride=2)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    @staticmethod
    def _stage(in_planes: int, planes: int, stride: int) -> nn.Sequential:
        return nn.Sequential(PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes, 1))

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        logits: Tensor = self.linear(out)
        return logits


@register_model("preact-resnet18")
def preact_resnet18(*, num_classes: int, in_channels: int) -> PreActResNet18:
    """Pre-activation ResNet-18 (He et al. 2016) for 32x32 inputs; see ``PreActResNet18``."""
    return PreActResNet18(num_classes=num_classes, in_channels=in_channels)
