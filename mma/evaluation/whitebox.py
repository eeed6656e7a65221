"""White-box attacks over still-robust examples, exactly equal to the naive loop.

``survival`` runs one attack setting (FGSM, or PGD with R restarts) on the examples
still worth attacking and returns, per example, how many restarts it withstood (see
``results``).  Restart r of batch b always draws its random start from its own seed
``seed_for(seed, b, r)`` for the *whole* batch (fixed batch boundaries over the
evaluated set), so example i's start depends only on (seed, i, r), never on which
other examples are still attacked.  Examples not attacked (already broken, or
misclassified without attack) stay in the batch with ε = 0 and a label other than
the model's clean prediction: PGD sees them as fooled at its first check and drops
them (one forward/backward), and the random numbers they consume are the same as in
the naive loop.  Hence the cascade (``skip_broken=True``) returns the same tensor as
attacking every example with every restart; ``tests/test_evaluation_whitebox.py``
checks it.  On the fixed-shape path (``compute.cuda_graphs``) PGD keeps every row to
its last step and FGSM attacks the whole batch, masked after: the same results
(tests/test_fixed_shape.py).

Loss "mixed" (the authors' own evaluation): even restarts use cross-entropy, odd
restarts the CW margin loss.
"""

from __future__ import annotations

import zlib

import torch
from torch import Tensor, nn

from mma.attacks import attack_kind
from mma.attacks.core import fixed_shape, seeded
from mma.progress import progress

from ..config.evaluation import AttackSetting
from .results import eps_key


def seed_for(*parts) -> int:
    """A 63-bit seed from any hashable description (stable across runs and machines)."""
    return zlib.crc32("/".join(str(p) for p in parts).encode()) * 2654435761 % (2**63 - 1)


def whitebox_seed(seed: int, model: str, setting: AttackSetting, loss: str, eps: float) -> int:
    """The seed of one white-box run, different for every setting, model and ε.  The
    restarts are part of it: ×1 and ×R draw independent random starts, so ×R can come out
    weaker than ×1 (were ×1 the first restart of ×R, the check "more restarts never help
    the model" could not fail)."""
    signature = (
        setting.attack,
        setting.steps,
        setting.restarts,
        setting.loss or loss,
        setting.step_size_factor,
        setting.random_init,
    )
    return seed_for(seed, model, "wb", signature, eps_key(eps))


def restart_loss(loss: str, restart: int) -> str:
    """The loss of restart ``restart`` (0-based): "mixed" alternates ce, cw, ce, ..."""
    if loss == "mixed":
        return "ce" if restart % 2 == 0 else "cw"
    return loss


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """Predicted labels (N,), in batches."""
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def survival(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    setting: AttackSetting,
    *,
    norm: str,
    loss: str,
    seed: int,
    active: Tensor,
    clean_pred: Tensor,
    batch_size: int,
    skip_broken: bool = True,
    description: str = "",
    show_progress: bool = True,
) -> Tensor:
    """Restarts survived per example (int16 (N,), -1 where ``active`` is False).

    Args:
        x: (N, ...) float in [0, 1] on the model's device; y: (N,) labels.
        eps: radius in pixel units.  setting: any kind of ``mma.attacks.ATTACKS`` (FGSM, or PGD's
            steps, restarts, step size factor).
        loss: "ce", "cw" or "mixed" (used where ``setting.loss`` is None).
        seed: the attack's seed (e.g. ``seed_for(params.seed, model, key)``).
        active: (N,) bool, the examples to attack (correct without attack; in a
            cumulative cascade also not yet broken by another attack of this ε).
        clean_pred: (N,) the model's clean predictions (computed once by the caller).
        skip_broken: drop an example from later restarts once broken (the result is the same).
    """
    loss = setting.loss or loss
    n = x.shape[0]
    out = torch.full((n,), -1, dtype=torch.int16, device=x.device)
    active = active.to(x.device)
    out[active] = 0
    restarts = attack_kind(setting.attack).restarts(setting)
    n_batches = (n + batch_size - 1) // batch_size
    with progress(
        n_batches * restarts, description or f"{setting.label()} ε={eps:.4g}", enabled=show_progress
    ) as advance:
        for b in range(n_batches):
            sl = slice(b * batch_size, min(n, (b + 1) * batch_size))
            xb, yb, ab, pb = x[sl], y[sl], active[sl], clean_pred[sl].to(x.device)
            alive = ab.clone()  # attacked and not yet broken
            for r in range(restarts):
                rows = alive if skip_broken else ab
                if not rows.any():
                    advance(restarts - r)
                    break
                fooled = _one_restart(
                    model, xb, yb, rows, pb, eps, setting, norm, restart_loss(loss, r), seed_for(seed, b, r)
                )
                newly = fooled & alive
                alive &= ~newly
                # survived r restarts and broken by restart r: survived = r
                out[sl][newly] = r
                advance(1, robust=float(alive.sum()) / max(1, int(ab.sum())))
            out[sl][alive] = restarts
    return out.cpu()


def _one_restart(model, xb, yb, rows, pred, eps, setting, norm, loss, seed) -> Tensor:
    """(B,) bool: fooled by this restart, for ``rows``; False elsewhere."""
    kind = attack_kind(setting.attack)
    idx = rows.nonzero().squeeze(1)
    fooled = torch.zeros_like(rows)
    if kind.deterministic and fixed_shape():  # deterministic, rows apart: all rows, then the mask
        x_adv = kind.run(model, xb, yb, eps, setting, norm=norm, loss=loss, select="target")
        with torch.no_grad():
            return rows & (model(x_adv).argmax(1) != yb)
    if kind.deterministic:  # no random draw to keep aligned: attack only the rows
        x_adv = kind.run(model, xb[idx], yb[idx], eps, setting, norm=norm, loss=loss, select="target")
        with torch.no_grad():
            fooled[idx] = model(x_adv).argmax(1) != yb[idx]
        return fooled
    # rows not attacked keep their place (the random draw is for the whole batch) with
    # ε 0 and a label other than the clean prediction: PGD counts them fooled at once
    zero = torch.zeros((), dtype=xb.dtype, device=xb.device)
    eps_t = torch.where(rows, zero + eps, zero)
    with torch.no_grad():
        n_classes = model(xb[:1]).shape[1]
    y_in = torch.where(rows, yb, (pred + 1) % n_classes)
    with seeded(seed, xb.device):
        x_adv = kind.run(model, xb, y_in, eps_t, setting, norm=norm, loss=loss, select="target")
    with torch.no_grad():
        fooled[idx] = model(x_adv[idx]).argmax(1) != yb[idx]
    return fooled
