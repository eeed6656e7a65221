"""The small shared core of every attack: norms, losses, model state.

Everything here works on batches: ``x`` has shape (B, C, H, W) (or (B, D)), pixels
in [0, 1]; per-example quantities have shape (B,).  ε is in pixel units.

A norm supplies exactly three things (the only places Linf and L2 PGD differ):
the random start inside the ball, the steepest-ascent direction of a gradient,
and the projection back onto the ball.  L2 comes in two forms (``L2_FORMS``, the
``l2_pgd`` argument): "advertorch", the authors' (the default), and "torchattacks".
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..compute import SEARCHES

NORMS = ("linf", "l2")
# L2 PGD's start and projection order, named after the library whose PGD each reproduces:
# "advertorch" (0.2.x, the authors' code: rand_init_delta and perturb_iterative with ord=2),
# "torchattacks" (PGDL2).  The schema's setting (mma/config/__init__.py, L2PGD) lists the same.
L2_FORMS = ("advertorch", "torchattacks")
ADVERTORCH_NORM_FLOOR = 1e-6  # advertorch's normalize_by_pnorm: g / max(‖g‖₂, 1e-6)
NORM_LABELS = {"linf": "Linf", "l2": "L2"}  # how the paper, AutoAttack and FAB spell the norms
LOSSES = ("ce", "margin", "soft_margin", "cw")
STEP_SIZE_FACTOR = 2.5  # Madry et al.'s step size: 2.5·ε/steps (the authors' eps_iter_scale)


def step_size(eps, steps: int, factor: float = STEP_SIZE_FACTOR):
    """PGD's step size for radius ``eps`` (a float or a (B,) tensor) and ``steps`` steps."""
    return factor * eps / steps


@contextlib.contextmanager
def seeded(seed: int, device) -> Iterator[None]:
    """Run the body with torch's RNG seeded to ``seed`` (CPU and, on CUDA, ``device``'s
    generator), restoring the caller's RNG state afterwards."""
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------------- shapes
def per_example(value: float | Tensor, x: Tensor) -> Tensor:
    """ε (a float or a (B,) tensor) as a (B,) tensor on x's device and dtype."""
    if isinstance(value, Tensor):
        value = value.to(device=x.device, dtype=x.dtype)
        if value.dim() == 0:
            value = value.expand(x.shape[0])
        if value.shape != (x.shape[0],):
            raise ValueError(f"per-example eps must have shape ({x.shape[0]},), got {tuple(value.shape)}")
        return value
    return torch.full((x.shape[0],), float(value), device=x.device, dtype=x.dtype)


def expand_like(v: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, ...) so it broadcasts against x."""
    return v.view(-1, *([1] * (x.dim() - 1)))


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}: expected one of {', '.join(NORMS)}")
    return norm


# --------------------------------------------------------------------------- norms
def lp_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-example norm of a perturbation, shape (B,)."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    return flat.norm(p=2, dim=1)


def check_l2_form(l2_pgd: str) -> str:
    if l2_pgd not in L2_FORMS:
        raise ValueError(f"unknown l2_pgd {l2_pgd!r}: expected one of {', '.join(L2_FORMS)}")
    return l2_pgd


def random_delta(
    shape: torch.Size, eps: Tensor, norm: str, *, device, dtype, x: Tensor | None = None, l2_pgd: str = "advertorch"
) -> Tensor:
    """A random start inside the ε-ball, drawn for the whole batch from torch's RNG.

    Linf: uniform in [-ε, ε]^d.  L2, ``l2_pgd`` "advertorch" (advertorch's
    ``rand_init_delta``, ord 2): a uniform random image r in [0, 1]^d, δ = (r − x) scaled
    down to length ε where longer (almost always on the sphere: ‖r − x‖₂ ≈ 16 on MNIST);
    x + δ stays in the box (needs ``x``).  "torchattacks" (PGDL2): a uniformly random
    direction with a length uniform in [0, ε].  Drawing for the whole batch and indexing
    afterwards keeps example i's start independent of which other examples are still
    attacked (early exit stays exact).
    """
    e = eps.view(-1, *([1] * (len(shape) - 1)))
    if norm == "linf":
        return (torch.rand(shape, device=device, dtype=dtype) * 2 - 1) * e
    if check_l2_form(l2_pgd) == "advertorch":
        if x is None:
            raise ValueError("random_delta: the advertorch L2 start needs x (it is a random image minus x)")
        return _into_l2_ball(torch.rand(shape, device=device, dtype=dtype) - x, e)
    direction = torch.randn(shape, device=device, dtype=dtype)
    direction = direction / expand_like(direction.flatten(1).norm(dim=1).clamp_min(1e-12), direction)
    radius = torch.rand(shape[0], device=device, dtype=dtype) * eps
    return direction * radius.view(-1, *([1] * (len(shape) - 1)))


def _into_l2_ball(delta: Tensor, e: Tensor) -> Tensor:
    """δ scaled by min(1, ε/‖δ‖₂) per example (advertorch's clamp_by_pnorm); ``e`` broadcasts."""
    n = expand_like(delta.flatten(1).norm(dim=1), delta)
    return delta * torch.clamp(e / n.clamp_min(1e-12), max=1.0)


def ascent_direction(grad: Tensor, norm: str, l2_pgd: str = "advertorch") -> Tensor:
    """Steepest ascent of unit norm: sign(g) for Linf, g/‖g‖₂ for L2.  The advertorch form
    divides by max(‖g‖₂, 1e-6), as its normalize_by_pnorm: a vanishing gradient (saturated
    cross-entropy) then makes a step shorter than the step size, not a full one."""
    if norm == "linf":
        return grad.sign()
    floor = ADVERTORCH_NORM_FLOOR if check_l2_form(l2_pgd) == "advertorch" else 1e-12
    return grad / expand_like(grad.flatten(1).norm(dim=1).clamp_min(floor), grad)


def project(x_adv: Tensor, x: Tensor, eps: Tensor, norm: str, l2_pgd: str = "advertorch") -> Tensor:
    """Project x_adv onto {x + δ : ‖δ‖ ≤ ε} and the image box [0, 1].

    Linf: the clamp is the exact projection onto the intersection (it is separable).
    L2, "advertorch" (``perturb_iterative``, ord 2): clamp to the box, then scale δ into
    the ball (x + s·δ with s ≤ 1 stays in the box, x being in it).  "torchattacks": the
    exact radial projection onto the ball, then the box clamp (it only shrinks |δ_i|, so
    the result stays in both sets).  Both end feasible; they differ where both bind.
    """
    e = expand_like(eps, x)
    if norm == "linf":
        delta = torch.maximum(torch.minimum(x_adv - x, e), -e)
    elif check_l2_form(l2_pgd) == "advertorch":
        delta = _into_l2_ball(x_adv.clamp(0.0, 1.0) - x, e)
    else:
        delta = _into_l2_ball(x_adv - x, e)
    return (x + delta).clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- losses
def _other_classes(logits: Tensor, y: Tensor) -> Tensor:
    """Logits with the true class masked to -inf (so max/logsumexp skip it)."""
    return logits.scatter(1, y[:, None], float("-inf"))


def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """The logit margin max_{j≠y} f_j − f_y; ≥ 0 exactly where the example is misclassified
    (ties count as misclassified). Its zero set is the decision boundary."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    return _other_classes(logits, y).amax(dim=1) - true


def soft_margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """logsumexp_{j≠y} f_j − f_y: a smooth upper bound of the margin (the authors' choice)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    return torch.logsumexp(_other_classes(logits, y), dim=1) - true


def cw_loss(logits: Tensor, y: Tensor, kappa: float = 0.0) -> Tensor:
    """Carlini–Wagner: the margin clamped at κ (no reward for going further past the boundary)."""
    return margin_loss(logits, y).clamp(max=kappa)


def ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


_LOSS_FNS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "ce": ce_loss,
    "margin": margin_loss,
    "soft_margin": soft_margin_loss,
    "cw": cw_loss,
}


def get_loss(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """Per-example attack loss (higher = more adversarial) by name."""
    try:
        return _LOSS_FNS[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}: expected one of {', '.join(LOSSES)}") from None


# --------------------------------------------------------------------------- restarts
def keep_higher(best: Tensor | None, best_value: Tensor | None, x_adv: Tensor, value: Tensor):
    """Per example, keep whichever of (best, x_adv) has the higher value; returns the new
    (best, best_value).  How restarts are chosen on the attacker's own model.  A mask, not
    boolean indexing: the same on every path, fixed shapes included."""
    if best is None:
        return x_adv, value
    better = value > best_value
    return torch.where(expand_like(better, best), x_adv, best), torch.where(better, value, best_value)


# --------------------------------------------------------------------------- model state
@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients for the duration of an attack.

    Turning requires_grad off on the weights keeps autograd from building (and
    computing) weight gradients we never use; both settings are restored after.
    """
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


# --------------------------------------------------------------------------- precision
# The dtype of the attacks' gradient steps (None: as the caller's context says, fp32 by
# default).  Set by ``attack_precision`` (``mma.compute.attacks`` for the stages).
_STEP_DTYPE: ContextVar[Optional[torch.dtype]] = ContextVar("mma_attack_step_dtype", default=None)


@contextlib.contextmanager
def attack_precision(dtype: Optional[torch.dtype]) -> Iterator[None]:
    """Run every attack's gradient steps (forward + backward in ``input_grad``) under
    autocast to ``dtype`` (e.g. torch.bfloat16) in the body; None: fp32.  The loss is
    computed on fp32 logits; the forwards that judge a result, restart selection and
    AN-PGD's boundary search are not affected."""
    token = _STEP_DTYPE.set(dtype)
    try:
        yield
    finally:
        _STEP_DTYPE.reset(token)


def step_autocast(device: torch.device):
    """The autocast context of one gradient step (a no-op unless attack_precision set one)."""
    dtype = _STEP_DTYPE.get()
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def fp32(device: torch.device):
    """Autocast off: for forwards whose decisions must be fp32 (the boundary search)."""
    return torch.autocast(device.type, enabled=False)


def full_precision(t: Tensor) -> Tensor:
    """``t`` in fp32 if autocast made it bf16/fp16; fp32 and fp64 unchanged."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def step_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The dtype a gradient step computes in on ``device``: ``attack_precision``'s, else
    that of an enclosing autocast (a bf16 training step), else None (fp32)."""
    dtype = _STEP_DTYPE.get()
    if dtype is None and torch.is_autocast_enabled(device.type):
        dtype = torch.get_autocast_dtype(device.type)
    return dtype


# The modules whose weights autocast casts to the lower precision at every call (its
# conv / linear ops); batch norm and the rest keep theirs.
AUTOCAST_CAST_MODULES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


class StepForward:
    """``model``'s forward for an attack's gradient steps: under the step's autocast, with
    the weights autocast would cast at every call cast once, here.

    Autocast caches its casts only for weights that require a gradient, which an attack
    turns off (``attack_mode``), so every step cast LeNet5-Madry's 3.2M-weight fc1 again.
    Casting once per attack gives bitwise the same iterates (the same round-to-nearest
    cast, the same ops; tests/test_compute.py) and PGD-10 1.05x faster (bf16, batch 50,
    2 threads; docs/performance.md, "The switches").  Build it inside ``attack_mode`` (the
    weights are frozen there) and where the step's precision is set; a compiled model
    keeps its own casts.  It assumes a conv / linear module's weights feed only that
    module's own op, as in every model here (another op reading them would see the cast
    copy)."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.model, self.device = model, device
        dtype = step_dtype(device)
        compiled = hasattr(model, "_orig_mod")  # torch.compile's wrapper: functional_call would recompile
        self.weights = (
            None
            if dtype is None or compiled
            else {
                f"{prefix}.{name}" if prefix else name: p.detach().to(dtype)
                for prefix, module in model.named_modules()
                if isinstance(module, AUTOCAST_CAST_MODULES)
                for name, p in module.named_parameters(recurse=False)
            }
        )

    def __call__(self, x: Tensor) -> Tensor:
        """fp32 logits of x, computed in the step's precision."""
        with step_autocast(self.device):
            if self.weights is None:
                return full_precision(self.model(x))
            return full_precision(torch.func.functional_call(self.model, self.weights, (x,)))


def input_grad(model: nn.Module | StepForward, x: Tensor, y: Tensor, loss_fn) -> tuple[Tensor, Tensor]:
    """(logits, ∂ Σ loss / ∂x) at x, one forward and one backward; the logits (B, K)
    are fp32 (the loss is computed on them) whatever the step's precision.  Pass an
    attack's ``StepForward`` to reuse its cast weights."""
    x = x.detach().requires_grad_(True)
    forward = model if isinstance(model, StepForward) else StepForward(model, x.device)
    logits = forward(x)
    (grad,) = torch.autograd.grad(loss_fn(logits, y).sum(), x)
    return logits.detach(), grad


# --------------------------------------------------------------------------- fixed shapes
# The path every attack takes (set by ``attack_path``; ``mma.compute`` sets it from the
# ``compute:`` section).  A CUDA graph replays a fixed sequence of kernels on fixed memory,
# so on the fixed-shape path an attack runs on all rows of its batch with masks and a fixed
# number of iterations, and reads nothing back to the host: no compaction, no early exit.
# Rows do not interact in eval mode, so it gives the results of the compacting path.
_FIXED_SHAPE: ContextVar[bool] = ContextVar("mma_attack_fixed_shape", default=False)
_SEARCH: ContextVar[str] = ContextVar("mma_boundary_search", default="secant")


@contextlib.contextmanager
def attack_path(*, fixed_shape: Optional[bool] = None, search: Optional[str] = None) -> Iterator[None]:
    """In the body, every attack (and MMA's training step) runs on the fixed-shape path
    when ``fixed_shape``, and AN-PGD's boundary search is ``search`` ("secant": bracketed
    secant steps on the rows still open, the CPU's default; "bisection": the authors' fixed
    passes over all rows, the only one the fixed-shape path runs).  None keeps the
    enclosing setting; outside any, the compacting path and the secant search."""
    if search is not None and search not in SEARCHES:
        raise ValueError(f"unknown search {search!r}: expected one of {', '.join(SEARCHES)}")
    tokens = [
        (var, var.set(value)) for var, value in ((_FIXED_SHAPE, fixed_shape), (_SEARCH, search)) if value is not None
    ]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def fixed_shape() -> bool:
    """True on the fixed-shape path (see ``attack_path``)."""
    return _FIXED_SHAPE.get()


def search_method() -> str:
    """AN-PGD's boundary search in this context: "secant" or "bisection"."""
    return _SEARCH.get()


def attack_settings(device: torch.device) -> tuple:
    """What of the context changes the kernels an attack runs on ``device`` (its step
    precision, path and search): part of a captured attack's key (``mma.graphs``)."""
    return step_dtype(device), _FIXED_SHAPE.get(), _SEARCH.get()
