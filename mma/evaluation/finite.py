"""Non-finite logits are never counted as a prediction.

The argmax of NaN logits is an index all the same (torch takes NaN as the maximum), so a
model with NaN weights "classifies" every image as class 0 and looks ~10 % accurate,
and robust at every ε.  ``FiniteLogits`` wraps the model for the whole evaluation (one
place: every clean, white-box, transfer, AutoAttack, Boundary and margin forward of
``protocol.evaluate_model`` and every forward of ``transfer.build_set`` goes through it)
and stops it with ``NonFiniteLogits`` naming the model.

Cost: one device-side ``isfinite().all()`` per forward.  It is read at once on a CPU and
for forwards without autograd (the judging forwards: at least one per attacked batch);
forwards inside an attack's gradient steps on a GPU keep their flag on the device until
the next read, so the attack loops gain no host sync.  ``check()`` reads what is left.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..io import BadFileError


class NonFiniteLogits(BadFileError):
    """A model whose logits hold NaN or inf: nothing computed from them is a result."""


class FiniteLogits(nn.Module):
    """``model`` (any classifier returning logits), refusing non-finite logits."""

    def __init__(self, model: nn.Module, name: str, remedy: Optional[str] = None):
        super().__init__()
        self.model = model
        self.name = name
        self.remedy = remedy or retrain_remedy(name)
        self._pending: Optional[Tensor] = None  # a bad forward not read yet (GPU gradient steps)
        self.train(model.training)  # attack_mode restores *this* flag onto the model afterwards

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        bad = ~torch.isfinite(out.detach()).all()
        self._pending = bad if self._pending is None else self._pending | bad
        if out.device.type == "cpu" or not torch.is_grad_enabled():
            self.check()
        return out

    def check(self) -> None:
        """Raise NonFiniteLogits if any forward so far gave a non-finite logit."""
        pending, self._pending = self._pending, None
        if pending is not None and bool(pending):
            raise NonFiniteLogits(
                f"model {self.name}: its logits are not finite (NaN or inf), so none of its predictions can be counted "
                f"(a NaN argmax is an arbitrary class); nothing was written: {self.remedy}"
            )


def retrain_remedy(name: str, seed: Optional[int] = None) -> str:
    """What to do about a model (seed ``seed``'s member, when given) whose logits are not finite."""
    if seed is None:
        return f"retrain it (`mma train {name} --restart`, e.g. with a lower optimizer.lr)"
    from ..paths import model_file

    return (
        f"check {model_file(name, seed)} and retrain it (`mma train {name} --seed {seed} --restart`, "
        "e.g. with a lower optimizer.lr)"
    )


def finite_logits(model: nn.Module, name: str, remedy: Optional[str] = None) -> FiniteLogits:
    """``model`` wrapped once (a model already wrapped is returned as it is)."""
    return model if isinstance(model, FiniteLogits) else FiniteLogits(model, name, remedy)
