"""Algorithm 2 of the paper: the MMA training batch step, as the authors' final code
runs it (BorealisAI/mma_training, trainer.py, ``Trainer.train_one_batch``).

Per batch (B examples, positions ``idx`` in the training split), the model in train mode:

1. one forward of the clean batch (kept for the backward): its logits split the
   batch into correct (split loss < 0; by default the search loss, as theirs) and
   wrong examples, and give the clean loss L_clean = mean CE over the B rows;
2. wrong examples: their stored ε is reset to 0;
3. correct examples: AN-PGD (Algorithm 1) from ε_init = max(eps_min, stored ε)
   finds the approximate minimal perturbation x + δ* (unclipped, as theirs, unless
   ``clip_final``); the stored ε becomes its length;
4. one forward of the *mixed* batch: x + δ* in the rows of the correct examples (all
   of them, whatever their length), x in the rows of the wrong ones; a batch-norm
   model normalises it with the statistics of these B rows, and its running
   statistics see it, as theirs do;
5. L_MMA = (Σ_correct CE_mixed·[ε < d_max] + Σ_wrong CE_mixed) / B: the hinge (the
   final paper's; d_max = ∞ is the arXiv v1 form) drops rows from the loss, not
   from the forward;
6. loss = (1 − c)·L_MMA + c·L_clean (c = 1/3 in the final paper, 0 = OMMA), one
   backward.  Theirs backpropagates L_clean right after the clean forward, keeps
   that gradient aside, backpropagates L_MMA and sets grad = (1 − c)·∇L_MMA +
   c·∇L_clean (``GradCloner.combine_grad``): the same gradient, since a gradient
   is linear in the loss.

The attack itself runs in eval mode (``attack_mode``): their PGD does too
(``ctx_noparamgrad_and_eval``), their boundary search does not (docs/faithfulness.md).

The ε store is a (N,) tensor on the training device, indexed by dataset position;
it belongs to the trainer and goes into checkpoints.

Two paths, the same math: by default AN-PGD runs on the correct rows only (compacted:
its cost is per row); on the fixed-shape path (``mma.attacks.core.attack_path``; CUDA
graphs) it runs on all B rows and the split, the store's update, the mixed batch and the
hinge are masks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import an_pgd, get_loss
from ..attacks.core import expand_like, fixed_shape, full_precision
from ..config.model import MMATrainSpec


class MMAStep:
    def __init__(
        self,
        spec: MMATrainSpec,
        norm: str,
        num_train: int,
        *,
        device: torch.device | str = "cpu",
        l2_pgd: str = "advertorch",
    ):
        self.spec, self.norm, self.l2_pgd = spec, norm, l2_pgd
        self.eps_max = spec.resolved_eps_max
        self.split_loss = get_loss(spec.resolved_split_loss)
        # Algorithm 2, line 1 initialises every ε to eps_min; storing 0 and reading
        # max(eps_min, stored) is the same and lets "reset when wrong" be a plain 0
        self.eps = torch.zeros(num_train, device=device)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor, step: int | Tensor):
        s = self.spec
        batch = x.shape[0]
        logits_clean = full_precision(model(x))  # (B, K), fp32 also under autocast
        ce_clean = F.cross_entropy(logits_clean, y, reduction="none")
        with torch.no_grad():
            correct = self.split_loss(logits_clean, y) < 0
        n_correct = correct.sum()
        metrics = {"frac_correct": n_correct / batch}
        attack = self._attack_all_rows if fixed_shape() else self._attack_correct_rows
        mixed, eps, found = attack(model, x, y, idx, correct, n_correct, logits_clean)
        metrics.update(found)
        # one forward of the mixed batch, also when every row is wrong (then x again): the
        # batch statistics and running statistics of a batch-norm model are those of B rows
        ce_mixed = F.cross_entropy(full_precision(model(mixed)), y, reduction="none")
        keep = ~correct | (eps < s.hinge)  # the hinge, as a mask on the loss
        loss_mma = torch.where(keep, ce_mixed, torch.zeros_like(ce_mixed)).sum() / batch
        loss = (1 - s.clean_loss_coeff) * loss_mma + s.clean_loss_coeff * ce_clean.mean()
        metrics.update(
            loss=loss.detach(),
            loss_mma=loss_mma.detach(),
            loss_clean=ce_clean.detach().mean(),
            train_acc=(logits_clean.detach().argmax(1) == y).float().mean(),
        )
        return loss, metrics

    def _an_pgd(self, model, x, y, eps_init, clean_logits):
        s = self.spec
        return an_pgd(
            model,
            x,
            y,
            eps_init,
            norm=self.norm,
            eps_max=self.eps_max,
            eps_inc=s.eps_inc,
            steps=s.steps,
            step_size=s.step_size,
            random_init=s.random_init,
            bisection_steps=s.bisection_steps,
            attack_loss=s.attack_loss,
            search_loss=s.search_loss,
            repgd=s.repgd,
            clean_logits=clean_logits,
            clip_final=s.clip_final,
            l2_pgd=self.l2_pgd,
        )

    def _attack_correct_rows(self, model, x, y, idx, correct, n_correct, logits_clean):
        """(mixed batch, ε per row (0 where wrong), metrics): AN-PGD on the correct rows
        only (its cost is per row, and AN-PGD's secant search syncs anyway: its loop
        ends when every bracket is closed)."""
        s = self.spec
        with torch.no_grad():  # wrong examples: stored ε reset to 0 (a mask, no host sync)
            self.eps[idx] = torch.where(correct, self.eps[idx], torch.zeros_like(self.eps[idx]))
        mixed, eps, metrics = x, torch.zeros(x.shape[0], device=x.device), {}  # wrong rows: x, length 0
        rows = correct.nonzero().squeeze(1)
        if rows.numel():
            x_adv, eps_rows = self._an_pgd(
                model, x[rows], y[rows], self.eps[idx[rows]].clamp(min=s.eps_min), logits_clean[rows]
            )
            self.eps[idx[rows]] = eps_rows
            mixed = x.index_put((rows,), x_adv.to(x.dtype))
            eps = eps.index_put((rows,), eps_rows.to(eps.dtype))
            within = eps_rows < s.hinge
            metrics = dict(
                eps_mean=(eps_rows.sum(), n_correct),
                eps_median=(eps_rows.median(), torch.ones((), device=x.device)),
                frac_within_hinge=(within.sum(), n_correct),
            )
        return mixed, eps, metrics

    def _attack_all_rows(self, model, x, y, idx, correct, n_correct, logits_clean):
        """The fixed-shape path (a CUDA graph): AN-PGD on all B rows, the wrong rows'
        results masked out; the ε store gathered and scattered at ``idx`` (a static index
        buffer in a graph).  Rows do not interact in the attack (eval mode), so the
        correct rows' lengths are those of ``_attack_correct_rows`` with the same search,
        except that random starts are drawn for B rows (there: for the correct ones)."""
        s = self.spec
        zero = torch.zeros((), device=x.device)
        stored = torch.where(correct, self.eps[idx], zero)
        x_adv, found = self._an_pgd(model, x, y, stored.clamp(min=s.eps_min), logits_clean)
        eps = torch.where(correct, found.to(self.eps.dtype), zero)
        self.eps.index_put_((idx,), eps)
        mixed = torch.where(expand_like(correct, x), x_adv.to(x.dtype), x)
        some = (n_correct > 0).to(eps.dtype)  # the median counts where there is one, as above
        metrics = dict(
            eps_mean=(eps.sum(), n_correct),
            eps_median=(masked_median(eps, correct), some),
            frac_within_hinge=((correct & (eps < s.hinge)).sum(), n_correct),
        )
        return mixed, eps, metrics

    def state_dict(self) -> dict:
        return {"eps": self.eps.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.eps.copy_(state["eps"].to(self.eps.device))

    def eps_summary(self) -> dict:
        """The store's statistics (an all-zero store after warm-up means ε collapsed)."""
        seen = self.eps[self.eps > 0]
        frac_zero = (self.eps == 0).float().mean().item()
        return {
            "eps_store_mean": self.eps.mean().item(),
            "eps_store_frac_zero": frac_zero,
            "eps_store_median_nonzero": seen.median().item() if seen.numel() else 0.0,
            # every stored ε at 0: no example is correct any more, MMA has nothing to maximise
            "warn_eps_collapsed": float(frac_zero == 1.0),
        }


def masked_median(v: Tensor, mask: Tensor) -> Tensor:
    """``v[mask].median()`` (torch's lower median) without compaction: fixed shapes, no
    host read; 0 where ``mask`` is empty."""
    n = mask.sum()
    ordered = torch.where(mask, v, torch.full_like(v, math.inf)).sort().values
    median = ordered.gather(0, ((n - 1).clamp_min(0) // 2).view(1)).squeeze(0)
    return torch.where(n > 0, median, torch.zeros_like(median))
