"""LeNet5 as in Madry et al.'s MNIST challenge (and the MMA authors' code)."""

from torch import Tensor, nn


class LeNet5Madry(nn.Module):
    """conv5x5 1→32 (pad 2), ReLU, maxpool 2, conv5x5 32→64 (pad 2), ReLU, maxpool 2,
    FC 3136→1024, ReLU, FC 1024→10.  Input (B, 1, 28, 28) in [0, 1]; output logits (B, 10)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(7 * 7 * 64, 1024), nn.ReLU(), nn.Linear(1024, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
