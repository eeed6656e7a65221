"""Algorithm 1 of the paper: Adaptive-Norm PGD (AN-PGD).

An approximate *minimal* perturbation per example:

1. δ₁ = PGD(x, y, ε_init)                       (one PGD, per-example ε_init)
2. u = δ₁ / ‖δ₁‖                                (the direction PGD found)
3. if x + ε_init·u is still classified correctly: search the zero crossing of
   the logit margin along u in [ε_init, min(ε_init + ε_inc, ε_max)];
   else in [0, ε_init]
4. δ* = ε_new·u (the authors' final code; ``final_point``: x + δ* unclipped as
   theirs, or clamped to [0, 1] with ``clip_final``), or PGD(x, y, ε_new) again
   (arXiv v1, line 8: ``repgd=True``, the cost of a second PGD).

The search (``boundary_search``) is, by default, a bracketed secant method with a
bisection fallback: the margin is nearly linear along a line close to the crossing, so
most examples converge in ~4 one-row probes after the two bracket ends (~6 forward
rows per example) instead of the authors' 10 bisections, and the bracket keeps it as
safe as bisection.  It runs under ``torch.no_grad`` on the examples whose bracket
is still wide, with no Python loop over examples.  The fixed-shape path (CUDA graphs,
``compute.search: bisection``) runs the authors' plain bisection instead: a fixed
number of passes over all rows, to the same resolution.  The search's forwards are
always fp32 (autocast off): under ``attack_precision(torch.bfloat16)`` or a bf16
training step only the PGD's gradient steps run in bf16 (docs/performance.md, "What
stays fp32").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from ..graphs import graphed
from .core import (
    SEARCHES,
    attack_mode,
    check_norm,
    expand_like,
    fixed_shape,
    fp32,
    full_precision,
    get_loss,
    lp_norm,
    per_example,
    search_method,
)
from .pgd import pgd

# The search's two tuning constants, set by counting forward rows on LeNet5-Madry / MNIST
# (docs/performance.md): the first probe past eps_mid sits 10 % beyond where the line
# through g(0) and g(eps_mid) crosses (the crossing lies at 0.85-1.13 of that distance for
# 80 % of examples, so most such probes cross and bracket it tightly), and an estimate
# within 2 tolerances of the newest probe has settled (probe both sides of it).
OVERSHOOT = 1.1
SETTLED = 2.0


def an_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps_init: float | Tensor,
    *,
    norm: str = "linf",
    eps_max: float,
    eps_inc: float | None = None,
    steps: int = 40,
    step_size: float | Tensor | None = None,
    random_init: bool = True,
    bisection_steps: int = 10,
    attack_loss: str = "soft_margin",
    search_loss: str = "margin",
    repgd: bool = False,
    clean_logits: Tensor | None = None,
    clip_final: bool = False,
    l2_pgd: str = "advertorch",
) -> tuple[Tensor, Tensor]:
    """Approximate minimal adversarial perturbation (the paper's Algorithm 1).

    Args:
        model: classifier returning logits (eval mode, frozen weights during the attack).
        x: clean inputs (B, ...) in [0, 1]; y: labels (B,).  Meant for correctly
            classified examples (MMA attacks only those).
        eps_init: the first PGD's radius, float or per-example (B,) tensor.
        norm: "linf" or "l2".
        eps_max: the largest length returned.
        eps_inc: search up to min(ε_init + ε_inc, ε_max) when the first PGD fails;
            None searches up to ε_max (the authors' final code).
        steps, step_size, random_init: of the PGD (step_size None: 2.5·ε/steps).
        bisection_steps: the search's resolution is the bracket width / 2**bisection_steps
            (that of the authors' bisection) and its iteration cap.  The search is the
            context's (``mma.attacks.core.attack_path``): secant by default, the authors'
            bisection on the fixed-shape path (see ``boundary_search``).
        attack_loss: the PGD's loss: "soft_margin" (the authors'), "margin" or "ce".
            "cw" is refused: clamped at 0, its gradient vanishes once an example is
            fooled, so PGD stops where it first crossed and u points wherever the
            random start and those first steps led, not at the boundary (on the binary
            linear model of tests/test_attacks.py, Linf, ε_init = 1.5x the margin: lengths
            1.42-1.50x the margin against 1.00 with the soft margin, and 19-71x
            measured at larger ε_init).
        search_loss: the function whose zero crossing is the boundary ("margin").
        repgd: run PGD again at the found length (arXiv v1) instead of scaling u.
        clean_logits: the model's logits on x if the caller has them (MMA training's
            clean forward): the search then skips its forward at η = 0 and most of
            its far-end probes (see ``boundary_search``); the result stays a probed
            point on the adversarial side.
        clip_final: clamp the returned point x + ε·u to [0, 1]; False (the authors'
            ``ANPGD.perturb``) returns it unclipped, possibly outside the image box
            (the search's own probes are always clamped).  Without effect with repgd.
        l2_pgd: the PGD's L2 form (``core.L2_FORMS``).

    Returns:
        (x_adv, eps): x_adv (B, ...), in [0, 1] with clip_final or repgd (see
        ``final_point``); eps (B,) the found length.  When a
        crossing is found, ``eps`` is on the adversarial side of the boundary (to the
        search's resolution), so it never underestimates the margin along u; when
        none is found up to the upper end, eps is that upper end.
    """
    check_norm(norm)
    if attack_loss == "cw":
        raise ValueError(
            "an_pgd: attack_loss 'cw' is not supported: the Carlini-Wagner loss is clamped at 0, so "
            "its gradient vanishes once an example is fooled and PGD gives no direction to the "
            "boundary; use 'soft_margin' (the authors'), 'margin' or 'ce'"
        )
    x = x.detach()
    eps0 = per_example(eps_init, x).clamp(max=eps_max)
    upper = eps_max if eps_inc is None else torch.clamp(eps0 + eps_inc, max=eps_max)
    upper = per_example(upper, x)
    g_zero = None if clean_logits is None else get_loss(search_loss)(full_precision(clean_logits.detach()), y)
    return _an_pgd(
        model,
        x,
        y,
        eps0,
        upper,
        g_zero,
        norm=norm,
        steps=steps,
        step_size=step_size,
        random_init=random_init,
        bisection_steps=bisection_steps,
        attack_loss=attack_loss,
        search_loss=search_loss,
        repgd=repgd,
        clip_final=clip_final,
        l2_pgd=l2_pgd,
    )


@graphed
def _an_pgd(
    model,
    x,
    y,
    eps0,
    upper,
    g_zero,
    *,
    norm,
    steps,
    step_size,
    random_init,
    bisection_steps,
    attack_loss,
    search_loss,
    repgd,
    clip_final,
    l2_pgd,
) -> tuple[Tensor, Tensor]:
    """AN-PGD with its radii as (B,) tensors (``an_pgd``): one captured graph per input
    shape and settings under ``mma.graphs.capture_attacks``."""
    delta = (
        pgd(
            model,
            x,
            y,
            eps0,
            norm=norm,
            steps=steps,
            step_size=step_size,
            random_init=random_init,
            loss=attack_loss,
            select="loss",
            l2_pgd=l2_pgd,
        )
        - x
    )
    # the direction comes from PGD's last iterate, fooled or not (never a zero vector
    # unless the gradient itself vanished)
    u = delta / expand_like(lp_norm(delta, norm).clamp_min(1e-12), delta)
    eps = boundary_search(model, x, y, u, eps0, upper, bisection_steps=bisection_steps, loss=search_loss, g_zero=g_zero)
    if repgd:
        x_adv = pgd(
            model,
            x,
            y,
            eps,
            norm=norm,
            steps=steps,
            step_size=None,
            random_init=random_init,
            loss=attack_loss,
            select="loss",
            l2_pgd=l2_pgd,
        )
    else:
        x_adv = final_point(x, u, eps, clip=clip_final)
    return x_adv.detach(), eps


def final_point(x: Tensor, u: Tensor, eps: Tensor, *, clip: bool) -> Tensor:
    """AN-PGD's point x + ε·u (x, u (B, ...); ε (B,)): the one place it is computed.

    ``clip`` False is the authors' (anpgd.py, ``ANPGD.perturb``: ``x + curr_eps *
    unitptb``, no clamp): where the search scales PGD's box-clipped step outward
    (ε > ε_init) the point leaves [0, 1] and the model trains on it.  True clamps it to
    the image box: a valid image, but in L2 shorter than the stored ε.
    """
    point = x + expand_like(eps.to(x.dtype), x) * u
    return point.clamp(0.0, 1.0) if clip else point


@torch.no_grad()
def boundary_search(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    u: Tensor,
    eps_mid: Tensor,
    eps_hi: Tensor,
    *,
    bisection_steps: int = 10,
    loss: str = "margin",
    g_zero: Tensor | None = None,
    search: str | None = None,
) -> Tensor:
    """Zero crossing of ``loss`` along the ray x + η·u (clipped to [0, 1]).

    g(η) = loss(model(clip(x + η·u)), y); g < 0 means correctly classified.
    The bracket is [0, eps_mid] when g(eps_mid) ≥ 0, else [eps_mid, eps_hi]; the search
    narrows it to [lo, hi] (g(lo) < 0 ≤ g(hi)) of the first bracket's width /
    2**bisection_steps.  Where nothing crosses up to eps_hi the answer is eps_hi.

    ``search`` (None: the context's, ``mma.attacks.core.attack_path``; "secant" outside any):
      "secant": bracketed secant steps on the rows still open (``_secant_search``): ~4.5-6
        forward rows per example, host reads to end its loop.  The CPU's default.
      "bisection": the authors' plain bisection (``_bisection_search``): bisection_steps
        passes over all rows, nothing read back; the fixed-shape path's (CUDA graphs).
    Both return the adversarial end of the final bracket, so they agree to one resolution
    where the ray crosses once.

    ``g_zero``: g(0) (B,) if the caller already has the clean logits (MMA training
    does): a row with g(0) ≥ 0 (misclassified at x) that crosses by eps_mid gets 0, and
    the secant search saves forwards with it (see there).  Its values only place
    probes: every other returned length is still a probed point with g ≥ 0 (or eps_hi),
    so clean logits from train mode (batch norm) are safe to pass for examples correct
    there.

    Returns the (B,) upper end of each final bracket (the adversarial side).
    """
    loss_fn = get_loss(loss)
    search = search or search_method()
    if search not in SEARCHES:
        raise ValueError(f"unknown search {search!r}: expected one of {', '.join(SEARCHES)}")
    if search == "secant" and fixed_shape():
        raise ValueError(
            "the secant boundary search reads the device to end its loop; the fixed-shape path "
            "(CUDA graphs) runs search='bisection'"
        )

    def g(rows: Tensor | None, eta: Tensor) -> Tensor:
        """g(eta) of ``rows`` (None: all rows, nothing indexed)."""
        xr, ur, yr = (x, u, y) if rows is None else (x[rows], u[rows], y[rows])
        pts = (xr + expand_like(eta, ur) * ur).clamp(0.0, 1.0)
        with fp32(x.device):  # sign decisions at 2^-10 resolution: never under autocast
            return loss_fn(full_precision(model(pts)), yr)

    with attack_mode(model):
        eps_mid, eps_hi = eps_mid.to(x.dtype), eps_hi.to(x.dtype)
        if search == "bisection":
            return _bisection_search(g, eps_mid, eps_hi, bisection_steps, g_zero)
        return _secant_search(g, eps_mid, eps_hi, bisection_steps, g_zero)


def _bisection_search(g, eps_mid: Tensor, eps_hi: Tensor, steps: int, g_zero: Tensor | None) -> Tensor:
    """The authors' plain bisection (their anpgd.py, ``bisection_search``) on all rows:
    the first bracket from g(eps_mid), then ``steps`` passes that each probe every
    bracket's midpoint and keep the half that holds the crossing.  1 + steps forwards of
    B rows, whatever the rows; no host read.  Theirs returns the last midpoint; this
    returns the bracket's adversarial end (at most one resolution above it), the
    secant search's answer: where nothing crossed, eps_hi."""
    cross = g(None, eps_mid) >= 0  # crossed by eps_mid: [0, eps_mid], else [eps_mid, eps_hi]
    zero = torch.zeros_like(eps_mid)
    lo, hi = torch.where(cross, zero, eps_mid), torch.where(cross, eps_mid, eps_hi)
    for _ in range(steps):
        mid = (lo + hi) / 2
        crossed = g(None, mid) >= 0
        lo, hi = torch.where(crossed, lo, mid), torch.where(crossed, mid, hi)
    if g_zero is not None:  # misclassified at x: length 0
        hi = torch.where(cross & (g_zero.to(hi.dtype) >= 0), zero, hi)
    return hi


@dataclass
class _Bracket:
    """The secant search's state, per example (B,): the bracket [lo, hi] with its values
    g_lo < 0 ≤ g_hi, the stopping width ``tol`` (the first bracket's resolution), and
    the two latest probes (a, fa) and (b, fb), b the newer, for the secant step."""

    lo: Tensor
    hi: Tensor
    g_lo: Tensor
    g_hi: Tensor
    tol: Tensor
    a: Tensor
    fa: Tensor
    b: Tensor
    fb: Tensor

    def values(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    def rows(self, rows: Tensor) -> "_Bracket":
        """The state of ``rows`` (copies)."""
        return _Bracket(*(v[rows] for v in self.values()))

    def put(self, rows: Tensor, new: "_Bracket") -> None:
        """Write ``new``, the state of ``rows``, back in place."""
        for f in fields(self):
            getattr(self, f.name)[rows] = getattr(new, f.name)


def _secant_search(g, eps_mid: Tensor, eps_hi: Tensor, steps: int, g_zero: Tensor | None) -> Tensor:
    """The bracketed secant search, in three phases on the rows still open: the first
    bracket (``_first_bracket``), crossings between eps_mid and eps_hi where neither end
    crosses (``_bracket_interior_crossings``), and secant passes until every bracket is
    narrower than its tolerance (``_secant_pass``).

    Each pass is one forward over the examples still open, one row per example
    (two for a closing probe): the first probe is false position, the next ones
    secant steps through the two latest probes (the margin is nearly linear close
    to the crossing, so they converge superlinearly); an estimate within one
    tolerance of a bracket end probes just inside that end, and an estimate that
    has settled probes both sides of itself, either of which closes the bracket.
    Every estimate is clipped into the bracket, and three passes in a row that do
    not halve it are followed by a bisection, so it converges at worst 4x slower
    than plain bisection (the pass cap).  No Python loop over examples.  Measured
    on LeNet5-Madry / MNIST (``docs/performance.md``): ~4.5-6 forward rows per
    example without ``g_zero``, against the authors' 11."""
    state, g_mid, none = _first_bracket(g, eps_mid, eps_hi, steps, g_zero)
    _bracket_interior_crossings(g, eps_mid, eps_hi, g_mid, none, steps, state)
    stalls = torch.zeros(eps_mid.shape[0], dtype=torch.int8, device=eps_mid.device)
    for _ in range(4 * max(1, steps)):  # at worst 4 passes per halving
        live = ((state.hi - state.lo) > state.tol).nonzero().squeeze(1)
        if live.numel() == 0:
            break
        new, halved = _secant_pass(g, live, state.rows(live), stalls[live])
        stalls[live] = torch.where(halved, torch.zeros_like(stalls[live]), stalls[live] + 1)
        state.put(live, new)
    return state.hi


def _first_bracket(g, eps_mid: Tensor, eps_hi: Tensor, steps: int, g_zero: Tensor | None):
    """The secant search's first bracket: [0, eps_mid] where g(eps_mid) ≥ 0, else
    [eps_mid, eps_hi] when g(eps_hi) ≥ 0; the other end is probed where not known: g(0)
    where eps_mid crosses (given or probed); elsewhere g(eps_hi), or first a point just
    past where the line through g(0), g(eps_mid) crosses (with ``g_zero``): if that
    point crosses it closes the bracket, else it becomes lo and eps_hi is probed.

    Returns (state, g(eps_mid), none): ``none`` the rows where g(eps_hi) < 0 too
    (bracket [eps_hi, eps_hi] unless a crossing lies in between)."""
    all_rows = torch.arange(eps_mid.shape[0], device=eps_mid.device)
    zero = torch.zeros_like(eps_mid)
    g_mid = g(all_rows, eps_mid)
    cross = g_mid >= 0  # crossed by eps_mid: bracket [0, eps_mid], else [eps_mid, eps_hi]
    lo, hi = torch.where(cross, zero, eps_mid), torch.where(cross, eps_mid, eps_hi)
    tol = ((hi - lo) / 2.0**steps).clamp_min(1e-7)  # the first bracket's resolution
    first, g_first = _probe_other_end(g, all_rows, cross, eps_mid, eps_hi, g_mid, tol, g_zero)
    # the two latest probes, for the secant step (ordered below)
    a, fa, b, fb = first.clone(), g_first.clone(), eps_mid.clone(), g_mid.clone()
    g_lo = torch.where(cross, g_first, g_mid)  # crossing rows: [0, eps_mid]
    ahead = ~cross & (g_first >= 0)  # the other rows: [eps_mid, first] where first crosses
    hi = torch.where(ahead, first, hi)
    g_hi = torch.where(ahead, g_first, g_mid)
    # rows whose first probe short of eps_hi did not cross: it becomes lo, then probe eps_hi
    short = ~cross & ~ahead & (first < eps_hi)
    lo = torch.where(short, first, lo)
    g_lo = torch.where(short, g_first, g_lo)
    far = g_first.clone()  # g(eps_hi) where probed
    rows = short.nonzero().squeeze(1)
    if rows.numel():
        far[rows] = g(rows, eps_hi[rows])
        b[rows], fb[rows] = eps_hi[rows], far[rows]
    reached = ~cross & ~ahead & (far >= 0)  # crossed by eps_hi: bracket [lo, eps_hi]
    g_hi = torch.where(reached, far, g_hi)
    none = ~cross & ~ahead & (far < 0)  # no crossing up to eps_hi (unless in between)
    wrong = cross & (g_lo >= 0)  # misclassified already at x: length 0
    lo, hi = torch.where(wrong, zero, lo), torch.where(wrong, zero, hi)
    lo = torch.where(none, hi, lo)  # no crossing up to eps_hi: the answer is eps_hi
    # the first secant step goes through the bracket ends; the later ones through the
    # newest probe and the one before, so the end nearer the crossing counts as newer
    swap = fa.abs() < fb.abs()
    a, fa, b, fb = (
        torch.where(swap, b, a),
        torch.where(swap, fb, fa),
        torch.where(swap, a, b),
        torch.where(swap, fa, fb),
    )
    return _Bracket(lo, hi, g_lo, g_hi, tol, a, fa, b, fb), g_mid, none


def _probe_other_end(g, all_rows, cross, eps_mid, eps_hi, g_mid, tol, g_zero):
    """(first, g(first)): the first bracket's other end, probed where not known: g(0)
    where eps_mid crosses (``g_zero`` if given); elsewhere eps_hi or, with ``g_zero``,
    a point just past where the line through g(0) and g(eps_mid) crosses."""
    zero = torch.zeros_like(eps_mid)
    if g_zero is not None:
        g0 = g_zero.to(g_mid.dtype)
        reach = eps_mid - g_mid * eps_mid / (g_mid - g0).clamp_min(1e-12)
        first = torch.where(g_mid > g0, eps_mid + OVERSHOOT * (reach - eps_mid), eps_hi)
        first = torch.minimum(first, eps_hi)
        first = torch.where(eps_hi - first < 4 * tol, eps_hi, first)  # nearly the far end: take it
        first = torch.where(cross, zero, first)
        g_first = torch.where(cross, g0, g_mid)
        rows = (~cross).nonzero().squeeze(1)
    else:
        first = torch.where(cross, zero, eps_hi)
        g_first = g_mid.clone()
        rows = all_rows
    if rows.numel():
        g_first[rows] = g(rows, first[rows])
    return first, g_first


def _secant_pass(g, live: Tensor, s: _Bracket, stalls: Tensor) -> tuple[_Bracket, Tensor]:
    """One pass over the open rows ``live`` (their state ``s``, their stall counts):
    each probes its secant (else false-position) estimate, or both sides of a settled
    one; returns their new state and whether each bracket halved."""
    l, h, gl, gh, t, pa, pfa, pb, pfb = s.values()
    false_pos = l - gl * (h - l) / (gh - gl).clamp_min(1e-12)
    secant = pb - pfb * (pb - pa) / (pfb - pfa)
    c = torch.where(torch.isfinite(secant) & (secant > l) & (secant < h), secant, false_pos)
    c = torch.where(stalls >= 3, (l + h) / 2, c)  # a one-sided creep: bisect
    near_l, near_h = c - l < t, h - c < t
    w = 0.45 * t  # a closing probe's half-width: c ± w leaves a bracket narrower than t
    two = ((c - pb).abs() < SETTLED * t) & ~near_l & ~near_h  # settled estimate: probe both sides
    # a single probe sits a little past the estimate: an exact estimate must not
    # leave an end whose sign rests on rounding (the returned point is re-evaluated)
    p1 = torch.where(near_l, l + 0.9 * t, torch.where(near_h, h - 0.9 * t, torch.where(two, c - w, c + 0.1 * t)))
    p1 = torch.minimum(torch.maximum(p1, l + 0.05 * t), h - 0.05 * t)
    both = live[two]
    vals = g(torch.cat([live, both]), torch.cat([p1, c[two] + w[two]]))
    v1 = vals[: live.numel()]
    p2 = torch.where(two, c + w, h)  # second probe (the upper end where there is none)
    v2 = gh.clone()
    v2[two] = vals[live.numel() :]
    # new bracket: [l, p1] if p1 crosses, [p1, p2] if p2 does, else [p2, h]
    cross1, cross2 = v1 >= 0, v2 >= 0
    new_h = torch.where(cross1, p1, torch.where(cross2, p2, h))
    new_gh = torch.where(cross1, v1, torch.where(cross2, v2, gh))
    new_l = torch.where(cross1, l, torch.where(cross2 | ~two, p1, p2))
    new_gl = torch.where(cross1, gl, torch.where(cross2 | ~two, v1, v2))
    halved = (new_h - new_l) <= (h - l) / 2
    new = _Bracket(
        new_l,
        new_h,
        new_gl,
        new_gh,
        t,
        torch.where(two, p1, pb),
        torch.where(two, v1, pfb),
        torch.where(two, p2, p1),
        torch.where(two, v2, v1),
    )
    return new, halved


def _bracket_interior_crossings(g, eps_mid, eps_hi, g_mid, none, steps, state: _Bracket) -> None:
    """Rows where g(eps_mid) < 0 and g(eps_hi) < 0 may still cross in between (a class
    region the ray leaves and re-enters, e.g. the image box clipping the far end).
    Before concluding "no crossing", probe where the authors' bisection would look
    when nothing crosses, eps_mid + (eps_hi − eps_mid)·(1 − 2^-k) for k = 1..steps, in
    one forward; the first probe that crosses brackets a crossing with the probe (or
    eps_mid) before it.  Updates ``state`` in place."""
    rows = none.nonzero().squeeze(1)
    if rows.numel() == 0:
        return
    k = torch.arange(1, steps + 1, device=eps_mid.device, dtype=eps_mid.dtype)
    m, e = eps_mid[rows], eps_hi[rows]
    probes = m[:, None] + (e - m)[:, None] * (1 - 0.5**k)  # (rows, steps), increasing
    vals = g(rows.repeat_interleave(steps), probes.flatten()).view(-1, steps)
    hit = vals >= 0
    found = hit.any(dim=1)
    if not found.any():
        return
    first = hit.to(torch.int8).argmax(dim=1)[found]  # the first crossing probe
    r, i = rows[found], torch.arange(int(found.sum()), device=rows.device)
    p, v = probes[found], vals[found]
    prev = (first - 1).clamp_min(0)
    s = state
    s.lo[r] = torch.where(first > 0, p[i, prev], m[found])
    s.hi[r] = p[i, first]
    s.g_lo[r] = torch.where(first > 0, v[i, prev], g_mid[r])
    s.g_hi[r] = v[i, first]
    s.tol[r] = ((e - m)[found] / 2.0**steps).clamp_min(1e-7)  # the resolution of the original bracket
    s.a[r], s.fa[r], s.b[r], s.fb[r] = s.lo[r], s.g_lo[r], s.hi[r], s.g_hi[r]


def default_tolerance(eps_max: float, bisection_steps: int = 10) -> float:
    """The resolution of a plain bisection over [0, eps_max] (for reporting)."""
    return eps_max / math.pow(2.0, bisection_steps)
