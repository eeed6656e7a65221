"""Training: one loop (``loop.py``), batch steps for STD/PGD (``steps.py``) and MMA,
the paper's Algorithm 2 (``mma.py``).  What a model is (its spec) is plain data in
``mma.config.model``; importing this package imports torch."""

from ..config.model import MMATrainSpec, ModelSpec, OptimizerSpec, PGDTrainSpec
from .loop import TrainingDiverged, TrainResult, load_model, train, validate
from .mma import MMAStep
from .steps import PGDStep, StdStep, make_step

__all__ = [
    "MMAStep",
    "MMATrainSpec",
    "ModelSpec",
    "OptimizerSpec",
    "PGDStep",
    "PGDTrainSpec",
    "StdStep",
    "TrainResult",
    "TrainingDiverged",
    "load_model",
    "make_step",
    "train",
    "validate",
]
