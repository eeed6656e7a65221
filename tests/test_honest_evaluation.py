"""Evaluation that cannot flatter: numbers that a broken model or a
weak attack could inflate are refused or flagged.

* PGD-model validation counts an example robust only if it is also classified correctly
  without attack.
* A model whose logits are not finite stops the evaluation (and the CLI, exit 2, one line)
  naming the model, instead of reporting ~10 % robust at every ε.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from mma import paths
from mma.train import ModelSpec, OptimizerSpec, PGDTrainSpec, validate


# --------------------------------------------------------------------------- validation of PGD models
class GridMemorizer(nn.Module):
    """Three classes on inputs in [0, 1]: class 2 where the mean pixel exceeds 0.9, else
    class 1 on the 8-bit grid (every pixel a multiple of 1/255: the clean images) and
    class 0 off it.  Its input gradient is zero, so PGD stays at its random start, which
    lies off the grid: the predictions flip from 1 to 0 under any perturbation."""

    def forward(self, x):
        flat = x.flatten(1)
        scaled = flat * 255
        on_grid = ((scaled - scaled.round()).abs() < 1e-3).all(1)
        cls = torch.where(flat.mean(1) > 0.9, 2, torch.where(on_grid, 1, 0))
        return 5.0 * F.one_hot(cls, 3).float() + 0.0 * flat.sum(1, keepdim=True)  # differentiable, gradient 0


def test_pgd_validation_counts_only_examples_also_correct_clean():
    spec = ModelSpec(
        name="toy-pgd",
        dataset="mnist",
        arch="lenet5_madry",
        norm="linf",
        method="pgd",
        pgd=PGDTrainSpec(eps=0.1, steps=3),
        optimizer=OptimizerSpec(name="adam", lr=1e-3),
        selection={"metric": "pgd_acc"},
    )
    x = torch.tensor([100, 120, 250], dtype=torch.float32)[:, None].expand(3, 4) / 255
    # A: wrong clean (1 ≠ 0), "right" at its adversarial point (0); B: right clean, fooled;
    # C: bright, right everywhere
    y = torch.tensor([0, 1, 2])
    model = GridMemorizer()
    assert model(x).argmax(1).tolist() == [1, 1, 2]
    torch.manual_seed(0)
    out = validate(spec, model, x, y)
    assert out["val_clean_acc"] == 2 / 3
    assert out["val_pgd_acc"] == 1 / 3  # C only; counting A (right at its adversarial point) gave 2/3


def test_margin_validation_robust_accuracy_counts_only_examples_also_correct_clean():
    """The same for the authors' validation attack's side number, val_adv_acc (their
    Evaluator's advacc counts A)."""
    spec = ModelSpec(
        name="toy-std",
        dataset="mnist",
        arch="lenet5_madry",
        norm="linf",
        method="std",
        selection={"steps": 3, "test_eps": 0.1, "eps_max": 0.2},
    )
    x = torch.tensor([100, 120, 250], dtype=torch.float32)[:, None].expand(3, 4) / 255
    torch.manual_seed(0)
    out = validate(spec, GridMemorizer(), x, torch.tensor([0, 1, 2]))
    assert out["val_clean_acc"] == 2 / 3
    assert out["val_adv_acc"] == 1 / 3


# --------------------------------------------------------------------------- non-finite logits
def nan_lenet():
    from mma.models import build_model

    torch.manual_seed(0)
    model = build_model("lenet5_madry", num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    return model


def test_nan_model_stops_the_evaluation_naming_it():
    from mma.config.evaluation import AttackSetting, ChecksParams, EvaluateParams, ThreatModel
    from mma.evaluation.finite import NonFiniteLogits
    from mma.evaluation.protocol import WhiteboxAttack, evaluate_model

    model = nan_lenet()
    torch.manual_seed(1)
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)
    assert torch.isnan(model(x)).all()  # argmax of these is class 0 for every image: "accuracy" 1 in 8
    tm = ThreatModel(
        dataset="mnist", norm="linf", curve_eps=[0.1, 0.3], headline_eps=0.3, margin_eps_max=1.0, unbounded_eps=1.0
    )
    ev = EvaluateParams(
        threat_models=[tm],
        checks=ChecksParams(enabled=False),
        autoattack={"enabled": False},
        margins={"enabled": False},
        batch_size=8,
    )
    with pytest.raises(NonFiniteLogits, match=r"model lenet-nan: its logits are not finite.*mma train lenet-nan"):
        evaluate_model(
            model,
            x,
            y,
            name="lenet-nan",
            tm=tm,
            ev=ev,
            curve=AttackSetting(steps=2),
            whitebox=[WhiteboxAttack(0.3, AttackSetting(steps=2))],
            seed=0,
            show_progress=False,
        )


def test_finite_model_is_unchanged_by_the_check():
    """The wrapper is transparent: same logits, same gradient, same train/eval flag after an attack."""
    from mma.attacks import pgd
    from mma.evaluation.finite import finite_logits

    torch.manual_seed(0)
    inner = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3), torch.nn.BatchNorm1d(3)).eval()
    model = finite_logits(inner, "m")
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.equal(model(x), inner(x))
    torch.manual_seed(2)
    a = pgd(model, x, y, 0.1, steps=3)
    torch.manual_seed(2)
    b = pgd(inner, x, y, 0.1, steps=3)
    assert torch.equal(a, b) and not inner.training and not model.training


def test_cli_evaluate_of_a_model_with_inf_logits_is_one_line_exit_2(tmp_path, monkeypatch):
    """Finite but huge weights (the model file passes load_model's finite-weights check):
    every logit overflows to inf, and `mma evaluate` says so in one line, exit 2."""
    from conftest import mnist_source
    from test_faults import STD, invoke, one_line_exit_2, project_params

    src = mnist_source()
    if not (src / "t10k-images-idx3-ubyte.gz").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"MNIST not found at {src}")
        pytest.skip(f"MNIST not found at {src}")
    p = project_params(tmp_path / "data")
    p["models"] = {STD: {**p["models"][STD], "train_steps": 2, "eval_every": 2, "checkpoint_every": 2}}
    p["table1"] = {"eps": [0.3], "sources": {"STD": {"model": STD, "attacks": ["pgd5x1"]}}, "columns": {STD: "STD"}}
    (tmp_path / "data").mkdir()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MMA_DATA_SOURCE", str(src))
    for args in (["data"], ["train", STD]):
        assert invoke(*args, "--params", "params.yaml").exit_code == 0, args
    path = paths.model_file(STD, 0)
    obj = torch.load(path, weights_only=True)
    obj["state_dict"] = {
        k: torch.full_like(v, 1e20) if v.is_floating_point() else v for k, v in obj["state_dict"].items()
    }
    torch.save(obj, path)
    one_line_exit_2(
        invoke("evaluate", STD, "--params", "params.yaml"),
        f"model {STD}: its logits are not finite",
        str(paths.model_file(STD, 0)),
        f"mma train {STD} --seed 0 --restart",
    )
    assert not (paths.eval_dir(STD, 0) / "metrics.json").exists()
