"""Algorithm 2 of the paper: the MMA training batch step.

Per batch (B examples, positions ``idx`` in the training split):

1. one forward of the clean batch (train mode, kept for the backward): its logits
   split the batch into correct (split loss < 0) and wrong examples, and give the
   clean cross-entropy;
2. wrong examples: their stored ε is reset to 0, they get clean cross-entropy;
3. correct examples: AN-PGD (Algorithm 1) from ε_init = max(eps_min, stored ε)
   finds the approximate minimal perturbation; the stored ε becomes its length;
   they get cross-entropy at x + δ*, kept only where the length is below d_max
   (the final paper's hinge; d_max = ∞ is the arXiv v1 form);
4. L_MMA = (Σ_correct CE_adv·[ε < d_max] + Σ_wrong CE_clean) / B, and the loss
   is (1 − c)·L_MMA + c·mean CE_clean (c = 1/3 in the final paper, 0 = OMMA),
   one backward pass.

The ε store is a (N,) tensor on the training device, indexed by dataset position;
it belongs to the trainer and goes into checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import an_pgd, get_loss
from ..attacks.core import full_precision
from ..config.model import MMATrainSpec


class MMAStep:
    def __init__(self, spec: MMATrainSpec, norm: str, num_train: int, *, device: torch.device | str = "cpu"):
        self.spec, self.norm = spec, norm
        self.eps_max = spec.resolved_eps_max
        self.split_loss = get_loss(spec.split_loss)
        # Algorithm 2, line 1 initialises every ε to eps_min; storing 0 and reading
        # max(eps_min, stored) is the same and lets "reset when wrong" be a plain 0
        self.eps = torch.zeros(num_train, device=device)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor, step: int):
        s = self.spec
        batch = x.shape[0]
        logits_clean = full_precision(model(x))  # (B, K), fp32 also under autocast
        ce_clean = F.cross_entropy(logits_clean, y, reduction="none")
        with torch.no_grad():
            correct = self.split_loss(logits_clean, y) < 0
            # wrong examples: stored ε reset to 0 (a mask, no host sync)
            self.eps[idx] = torch.where(correct, self.eps[idx], torch.zeros_like(self.eps[idx]))
        mma_sum = torch.where(correct, torch.zeros_like(ce_clean), ce_clean).sum()
        n_correct = correct.sum()
        metrics = {"frac_correct": n_correct / batch}
        # the attack runs on the correct rows only: its cost is per row, and AN-PGD's
        # search syncs anyway (its loop ends when every bracket is closed)
        rows = correct.nonzero().squeeze(1)
        if rows.numel():
            eps_init = self.eps[idx[rows]].clamp(min=s.eps_min)
            x_adv, eps = an_pgd(
                model, x[rows], y[rows], eps_init, norm=self.norm, eps_max=self.eps_max, eps_inc=s.eps_inc,
                steps=s.steps, step_size=s.step_size, random_init=s.random_init,
                bisection_steps=s.bisection_steps, attack_loss=s.attack_loss, search_loss=s.search_loss,
                repgd=s.repgd, clean_logits=logits_clean[rows],
            )
            self.eps[idx[rows]] = eps
            # the hinge as a mask: CE of rows at or beyond d_max is computed and dropped
            # (a few rows of one forward, against two syncs for a boolean index)
            within = eps < s.hinge
            ce_adv = F.cross_entropy(full_precision(model(x_adv)), y[rows], reduction="none")
            mma_sum = mma_sum + torch.where(within, ce_adv, torch.zeros_like(ce_adv)).sum()
            count = torch.ones((), device=eps.device)
            metrics.update(
                eps_mean=(eps.sum(), n_correct), eps_median=(eps.median(), count),
                frac_within_hinge=(within.sum(), n_correct),
            )
        loss_mma = mma_sum / batch
        loss = (1 - s.clean_loss_coeff) * loss_mma + s.clean_loss_coeff * ce_clean.mean()
        metrics.update(
            loss=loss.detach(), loss_mma=loss_mma.detach(), loss_clean=ce_clean.detach().mean(),
            train_acc=(logits_clean.detach().argmax(1) == y).float().mean(),
        )
        return loss, metrics

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
