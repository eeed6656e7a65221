"""The ``data:`` section of params.yaml, and the settings resolved from it: where MNIST comes
from (``mnist_source``: $MMA_DATA_SOURCE wins) and the name of the data a model really uses
(``data_name``: synthetic CIFAR10 is named as such)."""

from __future__ import annotations

import os
from typing import Literal, Optional

from pydantic import Field

from . import PositiveInt, Strict

DATA_SOURCE_ENV = "MMA_DATA_SOURCE"  # wins over data.mnist_source (CI points it at ../shared/data/mnist)


class DataParams(Strict):
    root: str = "data"  # prepared datasets land here (data/MNIST/raw, data/cifar-10-batches-py, ...)
    # datasets the data stage prepares; every model's dataset must be listed (explicit, so the
    # data stage's DVC params are exactly this section, not the whole model grid)
    datasets: list[Literal["mnist", "cifar10"]] = Field(["mnist"], min_length=1)
    mnist_source: Optional[str] = None  # folder with the 4 MNIST files (.gz or raw); null: download
    cifar10_source: Optional[str] = None  # null: download; "synthetic": generated CIFAR-shaped data; or a folder
    val_size: PositiveInt = 5000  # first N training images are the validation split (authors' code)
    synthetic_train: PositiveInt = Field(
        2000, ge=10, le=1_000_000
    )  # synthetic CIFAR10 sizes (smoke runs without the real set)
    synthetic_test: PositiveInt = Field(500, ge=10, le=1_000_000)


def mnist_source(data: DataParams) -> tuple[Optional[str], str]:
    """(source, where it came from): MMA_DATA_SOURCE wins over data.mnist_source; None = download."""
    env = os.environ.get(DATA_SOURCE_ENV)
    if env:
        return env, f"${DATA_SOURCE_ENV}"
    if data.mnist_source:
        return data.mnist_source, "data.mnist_source"
    return None, "download (neither $MMA_DATA_SOURCE nor data.mnist_source set)"


def data_name(data: DataParams, dataset: str) -> str:
    """The data a model of ``dataset`` really uses: "cifar10-synthetic" where
    data.cifar10_source is "synthetic" (a stand-in: named as such in every output and
    part of a model's identity), else ``dataset``."""
    return "cifar10-synthetic" if dataset == "cifar10" and data.cifar10_source == "synthetic" else dataset
