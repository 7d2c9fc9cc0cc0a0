"""Wide residual networks, as in the Madry et al. and TRADES CIFAR-10 code."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.errors import ConfigError
from advrobust.models.registry import register_model

# Parameter names (convShortcut, block1.layer.0, fc) follow the TRADES / RobustBench code so that their
# published checkpoints map onto these modules key for key.


class WideBasicBlock(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus a 1x1 shortcut conv.

    When the shape changes, the shortcut takes the pre-activated input, as in the reference code.

    Shape: x (N, in_planes, H, W) -> (N, out_planes, H / stride, W / stride).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.convShortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        out: Tensor = F.relu(self.bn2(self.conv1(activated)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut: Tensor = x if self.convShortcut is None else self.convShortcut(activated)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A stage of ``num_blocks`` wide blocks; the first one changes width and stride.

    Shape: x (N, in_planes, H, W) -> (N, out_planes, H / stride, W / stride).
    """

    def __init__(
        self, num_blocks: int, in_planes: int, out_planes: int, stride: int, drop_rate: float
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(
                    in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate
                )
                for i in range(num_blocks)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.layer(x)
        return out


class WideResNet(nn.Module):
    """Wide residual network WRN-depth-k of Zagoruyko & Komodakis 2016, "Wide residual networks".

    (arXiv:1605.07146.) Three stages of (depth - 4) / 6 blocks with 16k, 32k, 64k channels, as in the
    Madry et al. 2018 and TRADES (Zhang et al. 2019) CIFAR-10 code, without TRADES' unused ``sub_block1``.
    Global average pooling replaces the fixed 8x8 pooling: identical on 32x32 inputs.

    Shape: x (N, in_channels, 32, 32) -> logits (N, num_classes).
    """

    def __init__(
        self,
        *,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
            raise ConfigError(
                f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, ...), got {depth!r}"
            )
        if isinstance(widen_factor, bool) or not isinstance(widen_factor, int) or widen_factor < 1:
            raise ConfigError(f"widen_factor must be an integer >= 1, got {widen_factor!r}: pass e.g. 10")
        if (
            isinstance(drop_rate, bool)
            or not isinstance(drop_rate, (int, float))
            or not 0.0 <= drop_rate < 1.0
        ):
            raise ConfigError(f"drop_rate must be in [0, 1), got {drop_rate!r}: pass e.g. 0.0 or 0.3")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # The reference code's initialisation (He normal, fan_out), not torch's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        logits: Tensor = self.fc(out)
        return logits


@register_model("wrn-28-10")
def wrn_28_10(
    *, num_classes: int, in_channels: int, depth: int = 28, widen_factor: int = 10, drop_rate: float = 0.0
) -> WideResNet:
    """WRN-28-10 (Zagoruyko & Komodakis 2016), their CIFAR model, used by Carmon et al. 2019; see ``WideResNet``.

    ``depth`` and ``widen_factor`` override the 28 and 10 (e.g. a tiny WRN-10-1 for tests).
    """
    return WideResNet(
        depth=depth,
        widen_factor=widen_factor,
        num_classes=num_classes,
        in_channels=in_channels,
        drop_rate=drop_rate,
    )


@register_model("wrn-34-10")
def wrn_34_10(
    *, num_classes: int, in_channels: int, depth: int = 34, widen_factor: int = 10, drop_rate: float = 0.0
) -> WideResNet:
    """WRN-34-10 (Zagoruyko & Komodakis 2016), the CIFAR-10 model of Madry et al. 2018 and TRADES."""
    return WideResNet(
        depth=depth,
        widen_factor=widen_factor,
        num_classes=num_classes,
        in_channels=in_channels,
        drop_rate=drop_rate,
    )
