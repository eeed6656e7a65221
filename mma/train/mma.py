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
        logits_clean = model(x)
        ce_clean = F.cross_entropy(logits_clean, y, reduction="none")
        with torch.no_grad():
            correct = self.split_loss(logits_clean, y) < 0
        wrong = ~correct
        self.eps[idx[wrong]] = 0.0

        mma_sum = ce_clean[wrong].sum()
        metrics = {"frac_correct": correct.float().mean().item()}
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
            within = eps < s.hinge
            if within.any():
                ce_adv = F.cross_entropy(model(x_adv[within]), y[rows][within], reduction="sum")
                mma_sum = mma_sum + ce_adv
            metrics.update(
                eps_mean=eps.mean().item(), eps_median=eps.median().item(),
                frac_within_hinge=within.float().mean().item(),
            )
        loss_mma = mma_sum / batch
        loss = (1 - s.clean_loss_coeff) * loss_mma + s.clean_loss_coeff * ce_clean.mean()
        metrics.update(
            loss=loss.item(), loss_mma=loss_mma.item(), loss_clean=ce_clean.mean().item(),
            train_acc=(logits_clean.argmax(1) == y).float().mean().item(),
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
