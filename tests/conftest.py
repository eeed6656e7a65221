"""Shared fixtures: real MNIST read straight from the IDX files, and one small conv
net trained once per test session on a few thousand of its images.

The MNIST source folder is ``$MMA_DATA_SOURCE`` if set, else ``../shared/data/mnist``
beside the repository.  The files are read here with numpy (the IDX format is a
magic number, the dimensions, then raw uint8) so these fixtures do not depend on
``mma.data``, which has tests of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.idx import read_idx
from torch import nn

# The tests' tensors are small: intra-op threads only add overhead, and on a shared
# 2-core machine spinning OpenMP workers slowed this suite ~10x (measured).  One
# thread also keeps float reductions in a fixed order.
torch.set_num_threads(1)

N_TRAIN = 3000  # training images of the fixture model (the first of MNIST's training set)
N_EVAL = 500  # evaluation images (the first of MNIST's test set)


def mnist_source() -> Path:
    env = os.environ.get("MMA_DATA_SOURCE")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    if os.environ.get("CI"):  # CI always has shared/ beside the clone: missing data is a failure there
        pytest.fail(f"MNIST file {stem} not found in {folder}")
    pytest.skip(f"MNIST file {stem} not found in {folder} (set MMA_DATA_SOURCE)")


def load_mnist_small() -> dict[str, torch.Tensor]:
    """{"x_train", "y_train", "x_eval", "y_eval"}: float32 (N, 1, 28, 28) in [0, 1] and int64 labels."""
    src = mnist_source()
    xs = read_idx(_find(src, "train-images-idx3-ubyte"))[:N_TRAIN]
    ys = read_idx(_find(src, "train-labels-idx1-ubyte"))[:N_TRAIN]
    xt = read_idx(_find(src, "t10k-images-idx3-ubyte"))[:N_EVAL]
    yt = read_idx(_find(src, "t10k-labels-idx1-ubyte"))[:N_EVAL]

    def images(a):
        return torch.from_numpy(a.copy()).float().div_(255).unsqueeze(1)

    def labels(a):
        return torch.from_numpy(a.astype(np.int64))

    return {"x_train": images(xs), "y_train": labels(ys), "x_eval": images(xt), "y_eval": labels(yt)}


def small_convnet() -> nn.Module:
    """Two strided 4x4 convs and a linear layer: ~9k parameters, fast on CPU."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 10),
    )


def train_convnet(mnist_small: dict[str, torch.Tensor]) -> nn.Module:
    """The small conv net trained (clean cross-entropy, Adam) for 2 epochs on N_TRAIN
    MNIST images, fixed seeds; returned in eval mode.  Tests must not modify it
    (use ``copy.deepcopy`` for anything that changes weights or dtype)."""
    torch.manual_seed(0)
    model = small_convnet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = mnist_small["x_train"], mnist_small["y_train"]
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 50):
            b = perm[i : i + 50]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)  # a frozen fixture; attack tests that check flags use their own copy
    return model


@pytest.fixture(scope="session")
def mnist_small() -> dict[str, torch.Tensor]:
    return load_mnist_small()


@pytest.fixture(scope="session")
def trained_convnet(mnist_small) -> nn.Module:
    return train_convnet(mnist_small)


@pytest.fixture(scope="session")
def eval_batch(mnist_small, trained_convnet) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation images the fixture model classifies correctly (x, y)."""
    x, y = mnist_small["x_eval"], mnist_small["y_eval"]
    with torch.no_grad():
        ok = trained_convnet(x).argmax(1) == y
    return x[ok], y[ok]
