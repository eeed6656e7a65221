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

The search (``boundary_search``) is a bracketed secant method with a bisection
fallback: the margin is nearly linear along a line close to the crossing, so most
examples converge in ~4 one-row probes after the two bracket ends (~6 forward rows
per example) instead of the authors' 10 bisections, and the bracket keeps it as
safe as bisection.  It runs under ``torch.no_grad`` on the examples whose bracket
is still wide, with no Python loop over examples.  Its forwards are always fp32
(autocast off): under ``attack_precision(torch.bfloat16)`` or a bf16 training step
only the PGD's gradient steps run in bf16 (docs/performance.md, "What stays fp32").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .core import (attack_mode, check_norm, expand_like, fp32, full_precision, get_loss, lp_norm,
                   per_example)
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
            (that of the authors' bisection) and its iteration cap.
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
        raise ValueError("an_pgd: attack_loss 'cw' is not supported: the Carlini-Wagner loss is clamped at 0, so "
                         "its gradient vanishes once an example is fooled and PGD gives no direction to the "
                         "boundary; use 'soft_margin' (the authors'), 'margin' or 'ce'")
    x = x.detach()
    eps0 = per_example(eps_init, x).clamp(max=eps_max)
    delta = pgd(
        model, x, y, eps0, norm=norm, steps=steps, step_size=step_size, random_init=random_init,
        loss=attack_loss, select="loss", l2_pgd=l2_pgd,
    ) - x
    # the direction comes from PGD's last iterate, fooled or not (never a zero vector
    # unless the gradient itself vanished)
    u = delta / expand_like(lp_norm(delta, norm).clamp_min(1e-12), delta)
    upper = eps_max if eps_inc is None else torch.clamp(eps0 + eps_inc, max=eps_max)
    upper = per_example(upper, x)
    g_zero = None if clean_logits is None else get_loss(search_loss)(full_precision(clean_logits.detach()), y)
    eps = boundary_search(model, x, y, u, eps0, upper, bisection_steps=bisection_steps, loss=search_loss,
                          g_zero=g_zero)
    if repgd:
        x_adv = pgd(
            model, x, y, eps, norm=norm, steps=steps, step_size=None, random_init=random_init,
            loss=attack_loss, select="loss", l2_pgd=l2_pgd,
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
) -> Tensor:
    """Zero crossing of ``loss`` along the ray x + η·u (clipped to [0, 1]).

    g(η) = loss(model(clip(x + η·u)), y); g < 0 means correctly classified.
    The bracket is [0, eps_mid] when g(eps_mid) ≥ 0, else [eps_mid, eps_hi] when
    g(eps_hi) ≥ 0; when neither end crosses, the points the authors' bisection
    would probe in between are tried (one forward), and where none crosses either
    the answer is eps_hi.  The search stops when the bracket [lo, hi]
    (g(lo) < 0 ≤ g(hi)) is narrower than the first bracket's width / 2**bisection_steps.

    ``g_zero``: g(0) (B,) if the caller already has the clean logits (MMA training
    does).  It saves the forward at η = 0 of the rows that cross by eps_mid, and for
    the others the far end is probed only when the line through g(0) and
    g(eps_mid), extended a little, does not cross before it.  Its values only place
    probes: every returned length is still a probed point with g ≥ 0 (or 0 where
    g_zero ≥ 0: misclassified at x), so clean logits from train mode (batch norm)
    are safe to pass for examples correct there.

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
    example without ``g_zero``, against the authors' 11.

    Returns the (B,) upper end of each final bracket (the adversarial side).
    """
    loss_fn = get_loss(loss)

    def g(rows: Tensor, eta: Tensor) -> Tensor:
        pts = (x[rows] + expand_like(eta, u[rows]) * u[rows]).clamp(0.0, 1.0)
        with fp32(x.device):  # sign decisions at 2^-10 resolution: never under autocast
            return loss_fn(full_precision(model(pts)), y[rows])

    with attack_mode(model):
        n = x.shape[0]
        all_rows = torch.arange(n, device=x.device)
        eps_mid = eps_mid.to(x.dtype)
        eps_hi = eps_hi.to(x.dtype)
        zero = torch.zeros_like(eps_mid)
        g_mid = g(all_rows, eps_mid)
        cross = g_mid >= 0  # crossed by eps_mid: bracket [0, eps_mid], else [eps_mid, eps_hi]
        lo, hi = torch.where(cross, zero, eps_mid), torch.where(cross, eps_mid, eps_hi)
        tol = ((hi - lo) / 2.0**bisection_steps).clamp_min(1e-7)  # the first bracket's resolution
        # the first bracket's other end, probed where not known: g(0) where eps_mid
        # crosses (given or probed); elsewhere g(eps_hi), or first a point just past
        # where the line through g(0), g(eps_mid) crosses
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
        a, fa, b, fb = torch.where(swap, b, a), torch.where(swap, fb, fa), torch.where(swap, a, b), torch.where(swap, fa, fb)

        _bracket_interior_crossings(g, eps_mid, eps_hi, g_mid, none, bisection_steps,
                                    lo, hi, g_lo, g_hi, tol, a, fa, b, fb)
        stalls = torch.zeros(n, dtype=torch.int8, device=x.device)
        for _ in range(4 * max(1, bisection_steps)):  # at worst 4 passes per halving
            live = ((hi - lo) > tol).nonzero().squeeze(1)
            if live.numel() == 0:
                break
            l, h, gl, gh, t = lo[live], hi[live], g_lo[live], g_hi[live], tol[live]
            pa, pfa, pb, pfb = a[live], fa[live], b[live], fb[live]
            false_pos = l - gl * (h - l) / (gh - gl).clamp_min(1e-12)
            secant = pb - pfb * (pb - pa) / (pfb - pfa)
            c = torch.where(torch.isfinite(secant) & (secant > l) & (secant < h), secant, false_pos)
            c = torch.where(stalls[live] >= 3, (l + h) / 2, c)  # a one-sided creep: bisect
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
            v2[two] = vals[live.numel():]
            # new bracket: [l, p1] if p1 crosses, [p1, p2] if p2 does, else [p2, h]
            cross1, cross2 = v1 >= 0, v2 >= 0
            new_h = torch.where(cross1, p1, torch.where(cross2, p2, h))
            new_gh = torch.where(cross1, v1, torch.where(cross2, v2, gh))
            new_l = torch.where(cross1, l, torch.where(cross2 | ~two, p1, p2))
            new_gl = torch.where(cross1, gl, torch.where(cross2 | ~two, v1, v2))
            halved = (new_h - new_l) <= (h - l) / 2
            stalls[live] = torch.where(halved, torch.zeros_like(stalls[live]), stalls[live] + 1)
            lo[live], hi[live], g_lo[live], g_hi[live] = new_l, new_h, new_gl, new_gh
            a[live], fa[live] = torch.where(two, p1, pb), torch.where(two, v1, pfb)
            b[live], fb[live] = torch.where(two, p2, p1), torch.where(two, v2, v1)
    return hi


def _bracket_interior_crossings(g, eps_mid, eps_hi, g_mid, none, steps, lo, hi, g_lo, g_hi, tol, a, fa, b, fb):
    """Rows where g(eps_mid) < 0 and g(eps_hi) < 0 may still cross in between (a class
    region the ray leaves and re-enters, e.g. the image box clipping the far end).
    Before concluding "no crossing", probe where the authors' bisection would look
    when nothing crosses, eps_mid + (eps_hi − eps_mid)·(1 − 2^-k) for k = 1..steps, in
    one forward; the first probe that crosses brackets a crossing with the probe (or
    eps_mid) before it.  Updates the bracket state in place."""
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
    new_lo = torch.where(first > 0, p[i, prev], m[found])
    new_glo = torch.where(first > 0, v[i, prev], g_mid[r])
    lo[r], hi[r], g_lo[r], g_hi[r] = new_lo, p[i, first], new_glo, v[i, first]
    tol[r] = ((e - m)[found] / 2.0**steps).clamp_min(1e-7)  # the resolution of the original bracket
    a[r], fa[r], b[r], fb[r] = lo[r], g_lo[r], hi[r], g_hi[r]


def default_tolerance(eps_max: float, bisection_steps: int = 10) -> float:
    """The resolution of a plain bisection over [0, eps_max] (for reporting)."""
    return eps_max / math.pow(2.0, bisection_steps)
