"""Training: one loop (``loop.py``), batch steps for STD/PGD (``steps.py``) and MMA,
the paper's Algorithm 2 (``mma.py``).

The exports are resolved lazily: ``mma.params`` needs only the pydantic specs in
``config.py``, and importing it must not pay for torch (every stage and the
Snakefile parse it).
"""

from importlib import import_module

_EXPORTS = {
    "MMATrainSpec": "config", "ModelSpec": "config", "OptimizerSpec": "config", "PGDTrainSpec": "config",
    "TrainingDiverged": "loop", "TrainResult": "loop", "load_model": "loop", "train": "loop", "validate": "loop",
    "MMAStep": "mma", "PGDStep": "steps", "StdStep": "steps", "make_step": "steps",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
