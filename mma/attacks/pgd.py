"""Projected gradient descent (Madry et al., 2018), Linf and L2, with restarts.

One loop serves both norms: the norm supplies the random start, the ascent
direction and the projection (see ``core``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..graphs import graphed
from .core import (
    StepForward,
    ascent_direction,
    attack_mode,
    check_l2_form,
    check_norm,
    expand_like,
    fixed_shape,
    get_loss,
    input_grad,
    keep_higher,
    per_example,
    project,
    random_delta,
)
from .core import step_size as default_step_size

SELECTS = ("target", "loss")
EXIT_EVERY_CUDA = 5  # early-exit checks on a GPU: one sync per 5 iterations (measure with make gpu-check)


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    *,
    norm: str = "linf",
    steps: int = 40,
    step_size: float | Tensor | None = None,
    restarts: int = 1,
    random_init: bool = True,
    loss: str = "ce",
    select: str = "target",
    early_exit: bool = True,
    exit_every: int | None = None,
    l2_pgd: str = "advertorch",
) -> Tensor:
    """PGD adversarial examples for a batch.

    Args:
        model: any classifier returning logits; put in eval mode (and its weights
            frozen) for the attack, restored afterwards.
        x: clean inputs (B, ...) in [0, 1].  y: labels (B,).
        eps: ball radius in pixel units, a float or a per-example (B,) tensor.
        norm: "linf" or "l2".
        steps: gradient steps per restart.
        step_size: per step; None means 2.5·ε/steps (a float or (B,) tensor).
        restarts: independent random starts.
        random_init: start uniformly inside the ball (else at x).
        loss: "ce", "margin", "soft_margin" or "cw" (maximised).
        select: how restarts are combined.
            "target" (white-box evaluation): per example, an iterate that fools the
            model if any iterate of any restart does; an example is robust only if
            every restart fails.  Examples already fooled need no more steps or
            restarts when ``early_exit`` (the default).
            "loss" (transfer sets, adversarial training): per example the final
            iterate of the restart with the highest loss on this model; every
            example runs every step.
        early_exit: with select="target", stop attacking fooled examples.  The
            result is the same as without it (random starts are drawn for the full
            batch, then indexed); it only saves work.  Off on the fixed-shape path
            (``mma.attacks.core.attack_path``), where every row runs every step.
        exit_every: iterations between early-exit checks (each check is one host
            sync); None: every iteration on a CPU (a sync costs nothing there, and
            leaving early saves rows), every EXIT_EVERY_CUDA on other devices.  The
            result is the same for every value.
        l2_pgd: L2's random start and projection order (``core.L2_FORMS``):
            "advertorch" (the authors') or "torchattacks"; Linf ignores it.

    Returns:
        x_adv (B, ...), inside the ε-ball around x and inside [0, 1].  Where nothing
        fools the model: the last iterate (never the clean input).
    """
    check_norm(norm)
    check_l2_form(l2_pgd)
    if select not in SELECTS:
        raise ValueError(f"unknown select {select!r}: expected one of {', '.join(SELECTS)}")
    if exit_every is None:
        exit_every = 1 if x.device.type == "cpu" else EXIT_EVERY_CUDA
    if steps < 1 or restarts < 1 or exit_every < 1:
        raise ValueError(
            f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}, exit_every={exit_every}"
        )
    get_loss(loss)  # an unknown loss is refused here, before any capture
    x = x.detach()
    eps_t = per_example(eps, x)
    alpha = per_example(default_step_size(eps_t, steps) if step_size is None else step_size, x)
    early_exit = early_exit and not fixed_shape()  # the fixed-shape path: every row, every step
    return _pgd(
        model,
        x,
        y,
        eps_t,
        alpha,
        norm=norm,
        steps=steps,
        restarts=restarts,
        random_init=random_init,
        loss=loss,
        select=select,
        early_exit=early_exit,
        exit_every=exit_every,
        l2_pgd=l2_pgd,
    )


@graphed
def _pgd(
    model, x, y, eps, alpha, *, norm, steps, restarts, random_init, loss, select, early_exit, exit_every, l2_pgd
) -> Tensor:
    """PGD with ε and the step size as (B,) tensors (``pgd``): one captured graph per
    input shape and settings under ``mma.graphs.capture_attacks``."""
    loss_fn = get_loss(loss)
    with attack_mode(model):
        forward = StepForward(model, x.device)  # the gradient steps' forward, weights cast once
        if select == "loss":
            return _select_by_loss(
                model, forward, x, y, eps, alpha, norm, steps, restarts, random_init, loss_fn, l2_pgd
            )
        return _select_target(
            model,
            forward,
            x,
            y,
            eps,
            alpha,
            norm,
            steps,
            restarts,
            random_init,
            loss_fn,
            early_exit,
            exit_every,
            l2_pgd,
        )


def _start(x: Tensor, eps: Tensor, norm: str, random_init: bool, l2_pgd: str) -> Tensor:
    if not random_init:
        return x.clone()
    delta = random_delta(x.shape, eps, norm, device=x.device, dtype=x.dtype, x=x, l2_pgd=l2_pgd)
    return (x + delta).clamp_(0.0, 1.0)


def _step(x_adv: Tensor, grad: Tensor, x: Tensor, eps: Tensor, alpha: Tensor, norm: str, l2_pgd: str) -> Tensor:
    return project(x_adv + expand_like(alpha, x) * ascent_direction(grad, norm, l2_pgd), x, eps, norm, l2_pgd)


def _select_by_loss(model, forward, x, y, eps, alpha, norm, steps, restarts, random_init, loss_fn, l2_pgd) -> Tensor:
    best, best_loss = None, None
    for _ in range(restarts):
        x_adv = _start(x, eps, norm, random_init, l2_pgd)
        for _ in range(steps):
            _, grad = input_grad(forward, x_adv, y, loss_fn)
            x_adv = _step(x_adv, grad, x, eps, alpha, norm, l2_pgd)
        if restarts == 1:
            return x_adv
        with torch.no_grad():
            value = loss_fn(model(x_adv), y)
        best, best_loss = keep_higher(best, best_loss, x_adv, value)
    return best


def _select_target(
    model, forward, x, y, eps, alpha, norm, steps, restarts, random_init, loss_fn, early_exit, exit_every, l2_pgd
) -> Tensor:
    result = torch.empty_like(x)
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for r in range(restarts):
        start = _start(x, eps, norm, random_init, l2_pgd)  # drawn for the full batch: exactness of early exit
        # the rows still attacked (without early exit: all of them, no index: fixed shapes)
        rows = (~fooled).nonzero().squeeze(1) if early_exit else slice(None)
        if early_exit and rows.numel() == 0:
            break
        x_adv, hit = _run_until_fooled(
            model,
            forward,
            x[rows],
            y[rows],
            eps[rows],
            alpha[rows],
            start[rows],
            norm,
            steps,
            loss_fn,
            early_exit,
            exit_every,
            l2_pgd,
            last=r == restarts - 1,
        )
        # a first success is kept; the last iterate of the last restart fills the rest
        new = hit & ~fooled[rows]
        keep_old = fooled[rows]
        result[rows] = torch.where(expand_like(keep_old, x_adv), result[rows], x_adv)
        fooled[rows] |= new
    return result


def _run_until_fooled(
    model, forward, x, y, eps, alpha, x_adv, norm, steps, loss_fn, early_exit, exit_every, l2_pgd, last
):
    """One restart.  Returns (per example: the first fooling iterate, else the last
    iterate; fooled mask).  With early_exit, fooled examples leave the batch at the
    next check, every ``exit_every`` iterations.

    The last restart (``last``) skips the forward that checks the final iterate: a row
    not fooled before it returns the final iterate whether or not it fools, so the
    check cannot change x_adv (the caller's judging forward does it once); the
    returned mask then covers the earlier iterates only.

    Between checks nothing is read back to the host: each row's first fooling iterate
    and its fooled flag are kept by masking (a row fooled between checks keeps
    stepping, but its recorded iterate is already fixed and rows do not interact in
    eval mode), so the result is the same for every ``exit_every``.  At a check the
    live rows are re-indexed only if some example left, so a restart where (almost)
    nobody is fooled costs what a plain PGD restart does."""
    n = x.shape[0]
    out = x_adv.clone()
    hit = torch.zeros(n, dtype=torch.bool, device=x.device)
    live = torch.arange(n, device=x.device) if early_exit else slice(None)  # rows still being attacked
    # their iterate, input, label, eps, step size, first fooling iterate so far, fooled flag
    xa, xl, yl, el, al, ol, hl = x_adv, x, y, eps, alpha, out, hit
    for t in range(steps + 1 - last):
        if t < steps:
            logits, grad = input_grad(forward, xa, yl, loss_fn)
        else:  # the final iterate only needs a check (before another restart)
            with torch.no_grad():
                logits = model(xa)
        now = logits.argmax(dim=1) != yl
        ol = torch.where(expand_like(now & ~hl, ol), xa, ol)  # keep only first successes
        hl = hl | now
        if t == steps:
            break
        xa = _step(xa, grad, xl, el, al, norm, l2_pgd)
        if early_exit and (t + 1) % exit_every == 0:
            go = ~hl
            if not bool(go.all()):  # the host sync of a check: some example left
                out[live], hit[live] = ol, hl
                live, xa, xl, yl, el, al, ol, hl = (v[go] for v in (live, xa, xl, yl, el, al, ol, hl))
                if live.numel() == 0:
                    break
    # every row still live: its first fooling iterate, else its last iterate
    out[live] = torch.where(expand_like(hl, ol), ol, xa)
    hit[live] = hl
    return out, hit
