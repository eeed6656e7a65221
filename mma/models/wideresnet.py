"""WideResNet-28-4 (Zagoruyko & Komodakis, 2016) with pre-activation basic blocks,
as used by Madry et al. and the MMA authors for CIFAR10.

The first layer standardises each image (zero mean, unit variance per image, as
tf.image.per_image_standardization) so the data stays in [0, 1] pixel space and
ε keeps its pixel meaning.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PerImageStandardize(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(1)
        mean = flat.mean(dim=1)
        # floor the std at 1/sqrt(N) (TensorFlow's rule) so a flat image does not divide by 0
        std = flat.std(dim=1, unbiased=False).clamp_min(1.0 / math.sqrt(flat.shape[1]))
        return (x - mean.view(-1, 1, 1, 1)) / std.view(-1, 1, 1, 1)


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.shortcut = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class WideResNet(nn.Module):
    """WRN-depth-widen: widths 16, 16k, 32k, 64k; (depth-4)/6 blocks per group.
    Input (B, 3, 32, 32) in [0, 1]; output logits (B, num_classes)."""

    def __init__(self, depth: int = 28, widen: int = 4, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.standardize = PerImageStandardize()
        self.conv = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        layers, cin = [], widths[0]
        for i, (w, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            for j in range(n):
                layers.append(PreActBlock(cin, w, stride if j == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(self.conv(self.standardize(x)))
        out = F.relu(self.bn(out))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))
