"""Model registry: a model is chosen by name from configuration."""

from __future__ import annotations

from typing import Callable

from torch import nn

from .lenet import LeNet5Madry
from .wideresnet import WideResNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5_madry": LeNet5Madry,
    "wrn28_4": lambda **kw: WideResNet(depth=28, widen=4, **kw),
    # small enough for CPU smoke runs of the CIFAR10 code path
    "wrn10_1": lambda **kw: WideResNet(depth=10, widen=1, **kw),
}


def build_model(name: str, **kwargs) -> nn.Module:
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(sorted(MODELS))}") from None
    return factory(**kwargs)


__all__ = ["MODELS", "LeNet5Madry", "WideResNet", "build_model"]
