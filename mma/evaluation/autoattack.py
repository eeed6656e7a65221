"""AutoAttack (Croce & Hein 2020), standard version, from the reference implementation
(``pyautoattack``, a packaging of fra31/auto-attack): APGD-CE, APGD-T, FAB-T, Square,
run as a cascade over still-robust points.  Reported beside PGD at each threat model's
headline ε, next to the published anchors (``reference``).

Precision follows our own attacks' rule (``mma.attacks.core.attack_precision``): the
forwards that take a gradient (the attacks' steps) run in the stage's step precision,
bf16 by default on a CPU with bf16 hardware (measured: docs/performance.md, "The switches"), with fp32 logits;
every forward under ``no_grad`` — AutoAttack's own clean and robustness checks, and the
final judgement here — stays fp32."""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from mma.attacks.core import NORM_LABELS, StepForward

from ..config.evaluation import AutoAttackParams

STANDARD = ["apgd-ce", "apgd-t", "fab-t", "square"]


class GradientStepsInStepPrecision(nn.Module):
    """``model`` as AutoAttack sees it: a forward that builds a graph (an attack's
    gradient step) runs under ``step_autocast`` and returns fp32 logits; a forward under
    ``no_grad`` (a check whether a point is still robust) runs in fp32."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.step: StepForward | None = None  # built at the first gradient step (the weights are frozen)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return self.model(x)
        if self.step is None:
            self.step = StepForward(self.model, x.device)
        return self.step(x)


def autoattack_robust(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    active: Tensor,
    params: AutoAttackParams,
    *,
    eps: float,
    norm: str,
    seed: int,
    device,
) -> tuple[Tensor, list[str]]:
    """((N,) int16 survived: 1 robust, 0 broken, -1 outside the first ``limit``; attacks run)."""
    from pyautoattack import AutoAttack

    n = x.shape[0]
    m = n if params.limit is None else min(n, params.limit)
    out = torch.full((n,), -1, dtype=torch.int16)
    out[:m] = 0
    rows = active[:m].cpu().nonzero().squeeze(1)  # indexes CPU outputs and device inputs alike
    kwargs = {"attacks": list(params.attacks)} if params.version == "custom" else {}
    aa = AutoAttack(
        GradientStepsInStepPrecision(model).eval(),
        norm=NORM_LABELS[norm],
        eps=float(eps),
        version=params.version,
        seed=seed % (2**31),
        device=device,
        **kwargs,
    )
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    if params.n_iter is not None:
        aa.fab.n_iter = params.n_iter
        for a in (aa.apgd, aa.apgd_targeted):  # APGD's step-size checkpoints derive from n_iter
            a.n_iter = a.n_iter_orig = params.n_iter
            a.n_iter_2 = max(int(0.22 * a.n_iter), 1)
            a.n_iter_min = max(int(0.06 * a.n_iter), 1)
            a.size_decr = max(int(0.03 * a.n_iter), 1)
    if params.n_queries is not None:
        aa.square.n_queries = params.n_queries
    if len(rows):
        xr, yr = x[rows].to(device), y[rows].to(device)
        x_adv, _ = aa.run_standard_evaluation(xr, yr, batch_size=params.batch_size)
        with torch.no_grad():
            ok = (
                torch.cat(
                    [model(x_adv[i : i + params.batch_size]).argmax(1) for i in range(0, len(rows), params.batch_size)]
                )
                == yr
            )
            # the reference's own self-check: every adversarial inside the ε-ball
            d = (x_adv - xr).flatten(1)
            size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
            if (size > eps * (1 + 1e-4) + 1e-6).any():
                raise RuntimeError(f"AutoAttack returned points outside the ε={eps} ball (max {float(size.max()):.4g})")
        out[rows] = ok.cpu().to(torch.int16)
    return out, list(aa.attacks_to_run)
