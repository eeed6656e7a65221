"""Gradient-masking checks flag a deliberately masked model (zero input gradient
everywhere) and pass an honest one; the paper's own Table 1 is flagged for MMA."""

import torch
import torch.nn.functional as F
from torch import nn

from mma.config.evaluation import AttackSetting, ChecksParams, EvaluateParams, ReportParams, Table1Params, ThreatModel
from mma.config.model import ModelSpec
from mma.evaluation.protocol import evaluate_model, whitebox_attacks
from mma.evaluation.records import attack_record, record_key
from mma.evaluation.transfer import build_set
from mma.params import Params
from mma.report.checks import masking_checks, paper_table1_transfer_check


class Quantized(nn.Module):
    """The honest model behind a rounding of its input: the same decisions (almost), a
    zero gradient everywhere — the textbook masked model."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 8) / 8)


def honest_model():
    torch.manual_seed(0)
    x = torch.rand(600, 1, 4, 4)
    teacher = torch.randn(16, 10)
    y = (x.flatten(1) @ teacher).argmax(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    opt = torch.optim.Adam(model.parameters(), 0.05)
    for _ in range(300):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x[:200], y[:200]


TM = ThreatModel(dataset="mnist", norm="linf", curve_eps=[0.02, 0.05, 0.1, 0.2], headline_eps=0.05,
                 margin_eps_max=1.0, unbounded_eps=1.0)
PARAMS = Params(
    models=[ModelSpec(name="m", dataset="mnist", arch="lenet5_madry", norm="linf", method="std")],
    attacks={"pgd100x1": AttackSetting(steps=20)}, table1=Table1Params(sources={}, columns={}),
    evaluate=EvaluateParams(curve_attack="pgd100x1", threat_models=[TM], batch_size=100,
                            checks=ChecksParams(unbounded_steps=50, more_steps=60, more_restarts=3),
                            autoattack={"enabled": False}, margins={"enabled": False}))


def evaluate(model, x, y, transfer_from):
    x_u8 = (x * 255).round().to(torch.uint8)
    sets = []
    for eps in (0.05, 0.1):
        setting = AttackSetting(steps=20)
        adv = build_set(transfer_from, x_u8, y, eps, setting, norm="linf", loss="ce", seed=1,
                        batch_size=100, device="cpu")
        record = attack_record("transfer", setting, eps, loss="ce", n=len(y), seed=0, source="other")
        sets.append(({"record": record_key(record), "file": "-"}, adv))
    return evaluate_model(model, x_u8.float() / 255, y, name="m", tm=TM, ev=PARAMS.evaluate,
                          whitebox=whitebox_attacks("m", TM, PARAMS), curve=PARAMS.curve_attack(), seed=0,
                          transfer_sets=sets, show_progress=False)


def statuses(res):
    checks = masking_checks("m", res, TM, PARAMS)
    return {c["check"]: c["status"] for c in checks}, checks


def test_masked_model_is_flagged_and_honest_passes():
    honest, x, y = honest_model()
    masked = Quantized(honest).eval()
    # a masked model really has zero gradient
    xr = x[:5].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(masked(xr), y[:5]), xr)
    assert g.abs().max() == 0

    st_m, checks_m = statuses(evaluate(masked, x, y, transfer_from=honest))
    assert st_m["unbounded"] == "flag", checks_m
    assert st_m["transfer_vs_whitebox"] == "flag", checks_m

    st_h, checks_h = statuses(evaluate(honest, x, y, transfer_from=masked))
    assert all(s == "pass" for s in st_h.values()), [c for c in checks_h if c["status"] == "flag"]
    assert {"unbounded", "transfer_vs_whitebox", "monotone/white-box curve", "more_attack/more_steps",
            "more_attack/more_restarts"} <= set(st_h)


def test_paper_table1_flags_mma_transfer():
    checks = paper_table1_transfer_check(ReportParams())
    mma = [c for c in checks if c["model"] == "paper MMA model" and c["eps"] == 0.3]
    assert mma and mma[0]["status"] == "flag"
    assert mma[0]["transfer_accuracy"] == 92.86 and mma[0]["whitebox_accuracy"] == 93.64
