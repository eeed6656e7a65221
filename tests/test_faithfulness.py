"""Faithful to the authors' final code (BorealisAI/mma_training, commit 1c29b9e).

``AUTHORS`` is the one table of their values, each with the file and variable it is read
from.  The tests pin our schema defaults and every model entry of params.yaml (its
MNIST-L2 and CIFAR10 switches on) to it, so a drift fails here; a value of theirs we do
not follow must be a row of docs/faithfulness.md.  The second half checks the MMA batch
step against their ``Trainer.train_one_batch`` on a batch-norm model.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mma.train.mma as mma_step_module
from mma.attacks import an_pgd, anpgd_for_test, lp_norm, margin_loss, pgd, soft_margin_loss
from mma.attacks.an_pgd import final_point
from mma.attacks.core import STEP_SIZE_FACTOR, random_delta
from mma.config.model import MMATrainSpec, ModelSpec, OptimizerSpec, SelectionSpec
from mma.config.params import load_params
from mma.train import MMAStep

ROOT = Path(__file__).resolve().parents[1]
SLM = "soft_margin"  # advertorch's SoftLogitMarginLoss ("slm"): logsumexp_{j≠y} f_j − f_y
LR_STEPS = [[20000, 0.09], [30000, 0.03], [40000, 0.009]]

# scope → key → (their value, where it is set).  Scopes: "all" (config.py's BaseConfig and
# the trainer, every MMA model), a dataset (its config.py block, every model of it) and a
# dataset × norm.  Keys are ours; ``ours`` below says where each is read.
AUTHORS: dict = {
    "all": {
        "attack_loss": (SLM, "config.py: BaseConfig.attack_loss_fn = 'slm'"),
        "search_loss": (SLM, "config.py: BaseConfig.search_loss_fn = 'slm'"),
        "split_loss": (SLM, "trainer.py: Trainer.train_one_batch, cln_correct = (search_loss < 0)"),
        "clean_loss_coeff": (1 / 3, "config.py: BaseConfig.clean_loss_coeff = 1. / 3"),
        "step_size_factor": (2.5, "config.py: BaseConfig.eps_iter_scale = 2.5 (anpgd.py: ANPGD.scale_eps_iter)"),
        "bisection_steps": (10, "config.py: BaseConfig.num_search_steps = 10"),
        "random_init": (True, "config.py: BaseConfig.rand_init = True"),
        "eps_max_over_d_max": (1.05, "train.py: get_adversaries, cfg.attack_maxeps = cfg.hinge_maxeps * 1.05"),
        "eps_inc": (None, "anpgd.py: bisection_search, the bracket's upper end is maxeps"),
        "repgd": (False, "anpgd.py: ANPGD.perturb, xadv = x + curr_eps * unitptb (no second PGD)"),
        "clip_final": (False, "anpgd.py: ANPGD.perturb, xadv = x + batch_multiply(curr_eps, unitptb), no clamp"),
        "val_eps_max_over_d_max": (1.05, "train.py: get_adversaries, ANPGDForTest(maxeps=cfg.attack_maxeps)"),
    },
    # model selection, every model (STD, PGD and MMA)
    "selection": {
        "selection_metric": (
            "mean_margin",
            "the final paper, Setup: 'choose the model with largest average margin "
            "from the sequence of checkpoints'; train.py main loop: best by val_avgeps",
        ),
        "margin_attack": ("authors", "train.py: get_adversaries, test_adversary = ANPGDForTest(...)"),
        "eval_every": ("epoch", "train.py: main loop, val_evaluater.test_one_epoch() after every train_one_epoch()"),
        "val_bisection_steps": (10, "train.py: get_adversaries, ANPGDForTest(num_search_steps=cfg.num_search_steps)"),
        "l2_pgd": (
            "advertorch",
            "train.py: get_adversaries, advertorch's L2PGDAttack (rand_init_delta, perturb_iterative)",
        ),
    },
    "mnist": {
        "steps": (40, "config.py: MNIST.nb_iter = 40"),
        "optimizer": ("adam", "config.py: MNIST.optimizer = 'Adam'"),
        "lr": (1e-4, "config.py: MNIST.initial_learning_rate = 1e-4"),
        "lr_steps": ([], "config.py: MNIST.learning_rate_schedule = None"),
        "weight_decay": (0.0, "train.py: get_optimizer, optim.Adam(model.parameters(), lr) (no weight decay)"),
        "batch_size": (50, "config.py: MNIST.training_batch_size = 50"),
        "train_steps": (100_000, "config.py: MNIST.max_num_training_steps = 100000"),
        "augment": (False, "train.py: get_data_loaders, train_transform = None for MNIST"),
        "val_steps": (40, "train.py: get_adversaries, test_pgdadv nb_iter=cfg.nb_iter (config.py: MNIST.nb_iter)"),
    },
    "cifar10": {
        "steps": (10, "config.py: CIFAR10.nb_iter = 10"),
        "optimizer": ("sgd", "config.py: CIFAR10.optimizer = 'SGD'"),
        "lr": (0.3, "config.py: CIFAR10.learning_rate_schedule[0] = 0.3"),
        "lr_steps": (LR_STEPS, "config.py: CIFAR10.learning_rate_schedule (20000, 30000, 40000)"),
        "momentum": (0.9, "config.py: CIFAR10.momentum = 0.9"),
        "weight_decay": (2e-4, "config.py: CIFAR10.weight_decay = 0.0002"),
        "batch_size": (128, "config.py: CIFAR10.training_batch_size = 128"),
        "train_steps": (50_000, "config.py: CIFAR10.max_num_training_steps = 50000"),
        "augment": (True, "train.py: get_data_loaders, get_madry_et_al_cifar10_train_transform()"),
        "val_steps": (10, "train.py: get_adversaries, test_pgdadv nb_iter=cfg.nb_iter (config.py: CIFAR10.nb_iter)"),
    },
    ("mnist", "linf"): {
        "eps_min": (0.1, "config.py: LinfMNIST.attack_mineps = 0.1"),
        "d_max": ({0.45}, "run_mnist_training.sh: --hinge_maxeps 0.45"),
        "test_eps": (0.3, "config.py: LinfMNIST.test_eps = 0.3"),
        "test_eps_iter": (0.01, "config.py: LinfMNIST.test_eps_iter = 0.01"),
    },
    ("mnist", "l2"): {
        "eps_min": (0.5, "config.py: L2MNIST.attack_mineps = 0.5"),
        "d_max": ({2.0, 4.0, 6.0}, "run_mnist_training.sh: --hinge_maxeps 2. / 4. / 6."),
        "test_eps": (2.0, "config.py: L2MNIST.test_eps = 2."),
        "test_eps_iter": (0.125, "config.py: L2MNIST.test_eps_iter = 0.125"),
    },
    ("cifar10", "linf"): {
        "eps_min": (0.005, "config.py: LinfCIFAR10.attack_mineps = 0.005"),
        # 12/255, 20/255, 32/255 written to 4 decimals; we hold the exact fractions
        "d_max": ({0.0471, 0.0784, 0.1255}, "run_cifar10_training.sh: --hinge_maxeps 0.0471 / 0.0784 / 0.1255"),
        "test_eps": (8 / 255, "config.py: LinfCIFAR10.test_eps = 8. / 255"),
        "test_eps_iter": (2 / 255, "config.py: LinfCIFAR10.test_eps_iter = 2. / 255"),
    },
    ("cifar10", "l2"): {
        "eps_min": (0.5, "config.py: L2CIFAR10.attack_mineps = 0.5"),
        "d_max": ({1.0, 2.0, 3.0}, "run_cifar10_training.sh: --hinge_maxeps 1. / 2. / 3."),
        "test_eps": (1.0, "config.py: L2CIFAR10.test_eps = 1."),
        "test_eps_iter": (0.25, "config.py: L2CIFAR10.test_eps_iter = 0.25"),
    },
}

# the rows of a dataset × norm that every model has (its validation attack); the others are MMA's
SELECTION_ROWS = {"test_eps", "test_eps_iter"}
# params.yaml entries that are deliberately another form, and what they set instead
OTHER_FORMS = {
    # arXiv v1 (Table 1's MMA model): no hinge, no clean loss; it searches up to 0.45
    "mnist-linf-mma-v1": {
        "clean_loss_coeff": 0.0,
        "d_max": None,
        "eps_max_over_d_max": None,
        "val_eps_max_over_d_max": None,
    }
}


def ours(m: ModelSpec, key: str):
    """Our value of ``key`` for model ``m``."""
    if key == "optimizer":
        return m.optimizer.name
    if key in ("lr", "momentum", "weight_decay"):
        return getattr(m.optimizer, key)
    if key == "lr_steps":
        return [list(s) for s in m.optimizer.lr_steps]
    if key in ("batch_size", "train_steps", "augment"):
        return getattr(m, key)
    if key == "steps":
        return (m.mma or m.pgd).steps
    if key == "split_loss":
        return m.mma.resolved_split_loss
    if key == "step_size_factor":
        return STEP_SIZE_FACTOR if m.mma.step_size is None else m.mma.step_size
    if key == "eps_max_over_d_max":
        return None if m.mma.d_max is None else round(m.mma.resolved_eps_max / m.mma.d_max, 12)
    selection = m.resolved_selection
    if key in ("test_eps", "test_eps_iter", "margin_attack"):
        return getattr(selection, key)
    if key in ("selection_metric", "val_steps", "val_bisection_steps"):
        return getattr(selection, key.removeprefix("selection_").removeprefix("val_"))
    if key == "val_eps_max_over_d_max":
        return None if m.mma.d_max is None else round(selection.eps_max / m.mma.d_max, 12)
    if key in ("eval_every", "l2_pgd"):
        return getattr(m, key)
    return getattr(m.mma, key)


def keys_for(m: ModelSpec) -> dict:
    """The table's rows that apply to model ``m`` (every method: its dataset's training
    settings and attack steps, and the model selection; MMA models also the MMA rows)."""
    rows = {**AUTHORS[m.dataset], **AUTHORS["selection"]}
    per_threat = AUTHORS[(m.dataset, m.norm)]
    rows.update({k: v for k, v in per_threat.items() if k in SELECTION_ROWS})
    if m.method == "std":
        rows.pop("steps")
    if m.method == "mma":
        rows.update(AUTHORS["all"])
        rows.update(per_threat)
    if m.optimizer.name != "sgd":
        rows.pop("momentum", None)
    return rows


def agrees(key: str, mine, theirs) -> bool:
    if key == "d_max":  # one of their hinges; their CIFAR10 Linf ones are written to 4 decimals
        return mine is not None and any(abs(mine - t) < 5e-5 for t in theirs)
    if isinstance(theirs, float) and mine is not None and not isinstance(mine, bool):
        return mine == pytest.approx(theirs, rel=1e-12)
    return mine == theirs


def params_with_every_switch_on(tmp_path):
    """params.yaml with its commented MNIST-L2 and CIFAR10 blocks switched on."""
    out, inside = [], False
    for line in (ROOT / "params.yaml").read_text().splitlines():
        if line.strip().startswith("# >>> switch"):
            inside = True
        elif line.strip().startswith("# <<< switch"):
            inside = False
        elif inside and line.strip().startswith("# "):
            line = re.sub(r"^(\s*)# ", r"\1", line)
        out.append(line)
    path = tmp_path / "all.yaml"
    path.write_text("\n".join(out).replace("datasets: [mnist]", "datasets: [mnist, cifar10]"))
    return load_params(path)


# --------------------------------------------------------------------------- defaults and params.yaml
@pytest.mark.parametrize("method", ["std", "pgd", "mma"])
def test_schema_defaults_are_the_authors_mnist_linf_settings(method):
    """MMATrainSpec(), OptimizerSpec() and ModelSpec's training and selection fields default
    to their final code's MNIST Linf configuration (the CIFAR10 entries set theirs
    explicitly); every method is selected by the mean margin, validated every epoch."""
    blocks = {"std": {}, "pgd": {"pgd": {"eps": 0.3}}, "mma": {"mma": MMATrainSpec()}}[method]
    m = ModelSpec(
        name="defaults",
        dataset="mnist",
        arch="lenet5_madry",
        norm="linf",
        method=method,
        optimizer=OptimizerSpec(),
        **blocks,
    )
    checked = keys_for(m)
    assert {"lr", "batch_size", "selection_metric", "eval_every", "test_eps", "val_steps", "l2_pgd"} <= set(checked)
    if method == "mma":
        assert {"search_loss", "split_loss", "eps_min", "d_max", "steps", "clip_final"} <= set(checked)
    wrong = {
        k: (ours(m, k), theirs, where) for k, (theirs, where) in checked.items() if not agrees(k, ours(m, k), theirs)
    }
    assert not wrong, wrong
    assert OptimizerSpec().momentum == AUTHORS["cifar10"]["momentum"][0]  # the SGD default too


@pytest.mark.parametrize("dataset, norm", [("mnist", "linf"), ("mnist", "l2"), ("cifar10", "linf"), ("cifar10", "l2")])
def test_selection_defaults_per_threat_model_are_the_authors(dataset, norm):
    """The validation attack resolves to their config.py values per dataset × norm, for
    a model of any method; a model without a hinge searches up to 1.05 × their largest."""
    std = ModelSpec(name="s", dataset=dataset, arch="lenet5_madry", norm=norm, method="std")
    for key in ("test_eps", "test_eps_iter", "val_steps", "selection_metric", "margin_attack"):
        theirs, where = {**AUTHORS[dataset], **AUTHORS["selection"], **AUTHORS[(dataset, norm)]}[key]
        assert agrees(key, ours(std, key), theirs), (key, ours(std, key), where)
    largest = max(AUTHORS[(dataset, norm)]["d_max"][0])
    assert std.resolved_selection.eps_max == pytest.approx(1.05 * largest, abs=1e-4)


@pytest.mark.parametrize("dataset, norm", [("mnist", "linf"), ("mnist", "l2"), ("cifar10", "linf"), ("cifar10", "l2")])
def test_every_params_yaml_model_has_the_authors_values(dataset, norm, tmp_path):
    """Each model of params.yaml (switches on) of this dataset × norm, by method, against
    the table; entries of another form (arXiv v1) differ only where OTHER_FORMS says."""
    p = params_with_every_switch_on(tmp_path)
    models = [m for m in p.models.values() if (m.dataset, m.norm) == (dataset, norm)]
    assert {"pgd", "mma"} <= {m.method for m in models}, [m.name for m in models]
    checked = 0
    for m in models:
        exceptions = OTHER_FORMS.get(m.name, {})
        for key, (theirs, where) in keys_for(m).items():
            want = exceptions.get(key, theirs)
            mine = ours(m, key)
            ok = mine == want if key in exceptions else agrees(key, mine, want)
            assert ok, f"{m.name}: {key} = {mine!r}, the authors' {want!r} ({where})"
            checked += 1
    assert checked >= 10 * len(models)
    assert p.data.val_size == 5000  # train.py: --val_size default 5000


def test_the_split_follows_the_search_loss_by_default():
    """Their trainer splits correct/wrong with the search loss: ours too unless split_loss
    is set (a step built from a spec uses the resolved function)."""
    assert MMAStep(MMATrainSpec(), "linf", 4).split_loss is soft_margin_loss
    assert MMAStep(MMATrainSpec(search_loss="margin"), "linf", 4).split_loss is margin_loss
    assert (
        MMAStep(MMATrainSpec(search_loss="margin", split_loss="soft_margin"), "linf", 4).split_loss is soft_margin_loss
    )


def test_every_switch_to_the_other_behaviour_is_documented():
    """docs/faithfulness.md names each setting that gives the non-default behaviour."""
    doc = (ROOT / "docs" / "faithfulness.md").read_text()
    for key in (
        "clip_final",
        "l2_pgd",
        "an_pgd_l2_pgd",
        "eval_every",
        "selection.metric",
        "selection.margin_attack",
        "search_loss",
        "test_eps",
        "test_eps_iter",
    ):
        assert re.search(r"`[A-Za-z_.]*" + re.escape(key) + r"[:`]", doc), key  # a setting in code style
    assert "docs/faithfulness.md" in (ROOT / "README.md").read_text()


# --------------------------------------------------------------------------- the batch step on batch norm
N, D_MAX, EPS_MIN, C = 16, 0.3, 0.1, 1 / 3


def bn_net(seed: int = 0) -> nn.Module:
    """A tiny conv + BatchNorm2d classifier of 1×8×8 images.  Class 0's bias is raised so
    that rows labelled 0 are correct (soft margin < 0) and the others wrong."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    with torch.no_grad():
        net[-1].bias[0] += 6.0
    return net.train()


def adversarial(x: torch.Tensor) -> torch.Tensor:
    """The stand-in attack's points: far from x, inside [0, 1]."""
    return 1.0 - x


class FixedAttack:
    """Stands in for AN-PGD: records what it is called with and returns ``adversarial(x)``
    and the given lengths."""

    def __init__(self, lengths: torch.Tensor):
        self.lengths, self.calls = lengths, []

    def __call__(self, model, x, y, eps_init, **kwargs):
        self.calls.append({"x": x.clone(), "y": y.clone(), "eps_init": eps_init.clone(), **kwargs})
        return adversarial(x), self.lengths[: x.shape[0]].clone()


def authors_step(net: nn.Module, x, y, x_adv_correct, lengths, d_max=D_MAX, c=C):
    """Their train_one_batch, by hand: a clean forward (split by the soft margin, clean CE
    mean), the mixed batch built row by row, one forward of it, the hinge on the correct
    rows' CE, (Σ + Σ) / B; returns (loss, correct)."""
    logits_clean = net(x)
    ce_clean = F.cross_entropy(logits_clean, y)
    correct = soft_margin_loss(logits_clean.detach(), y) < 0
    mixed = x.clone()
    mixed[correct] = x_adv_correct
    logits = net(mixed)
    ce = F.cross_entropy(logits, y, reduction="none")
    margin_part = ce[correct][lengths < d_max].sum()
    wrong_part = ce[~correct].mean() * (~correct).sum() if (~correct).any() else 0.0
    l_mma = (margin_part + wrong_part) / x.shape[0]
    return (1 - c) * l_mma + c * ce_clean, correct, mixed


def running_stats_by_formula(conv: nn.Conv2d, batches, momentum: float = 0.1):
    """BatchNorm2d's running mean and (unbiased) variance after train-mode forwards of
    ``batches`` through ``conv`` then the norm, from the initial (0, 1)."""
    mean, var = torch.zeros(conv.out_channels), torch.ones(conv.out_channels)
    with torch.no_grad():
        for b in batches:
            h = conv(b).transpose(0, 1).flatten(1)
            mean = (1 - momentum) * mean + momentum * h.mean(1)
            var = (1 - momentum) * var + momentum * h.var(1, unbiased=True)
    return mean, var


CASES = {
    # labels: 0 = correct (raised bias), else wrong; lengths of the correct rows (d_max 0.3)
    "mixed": ([0, 3] * (N // 2), torch.linspace(0.05, 0.6, N // 2)),
    "all wrong": ([5] * N, torch.zeros(0)),
    "all correct, some beyond the hinge": ([0] * N, torch.linspace(0.05, 0.6, N)),
    "all correct, all beyond the hinge": ([0] * N, torch.full((N,), D_MAX)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_mma_step_is_the_authors_train_one_batch_on_a_batch_norm_model(case, monkeypatch):
    """Loss, every parameter's gradient and the BN running statistics after one MMA step
    equal a hand computation of their train_one_batch: one train-mode forward of the
    clean batch, one of the mixed batch (adversarial rows for every correct example,
    clean rows for the wrong ones), L_MMA with the hinge on the loss, (1 − c)·L_MMA +
    c·mean clean CE.  The stand-in attack fixes the points and lengths; it must be
    called with the correct rows and ε_init = max(eps_min, stored ε)."""
    labels, lengths = CASES[case]
    x = torch.rand(N, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor(labels)
    net = bn_net()
    reference = copy.deepcopy(net)
    conv0 = copy.deepcopy(net[0])
    attack = FixedAttack(lengths)
    monkeypatch.setattr(mma_step_module, "an_pgd", attack)
    spec = MMATrainSpec(eps_min=EPS_MIN, d_max=D_MAX, clean_loss_coeff=C, steps=2)
    step = MMAStep(spec, "linf", 3 * N)
    idx = torch.arange(N) * 3  # positions in a 48-example training split
    stored = torch.linspace(0.0, 0.4, N)
    step.eps[idx] = stored

    loss, metrics = step(net, x, y, idx, step=0)
    loss.backward()

    correct_rows = y == 0
    expected, correct, mixed = authors_step(reference, x, y, adversarial(x[correct_rows]), lengths)
    expected.backward()
    assert torch.equal(correct, correct_rows)  # the raised bias splits as meant
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-6, atol=1e-7)
    for (name, p), (_, q) in zip(net.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)
    for (name, b), (_, r) in zip(net.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(b, r, rtol=1e-6, atol=1e-7, msg=name)
    # the running statistics are those of two forwards of B rows: the clean and the mixed batch
    mean, var = running_stats_by_formula(conv0, [x, mixed])
    torch.testing.assert_close(net[1].running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net[1].running_var, var, rtol=1e-5, atol=1e-6)
    assert int(net[1].num_batches_tracked) == 2

    if correct.any():
        (call,) = attack.calls
        assert torch.equal(call["x"], x[correct]) and torch.equal(call["y"], y[correct])
        torch.testing.assert_close(call["eps_init"], stored[correct].clamp(min=EPS_MIN))
        assert call["search_loss"] == SLM
        assert torch.equal(step.eps[idx[correct]], lengths)
        within = lengths < D_MAX
        assert metrics["frac_within_hinge"][0] == within.sum()
    else:
        assert attack.calls == []
    assert (step.eps[idx[~correct]] == 0).all()
    if case == "all correct, all beyond the hinge":  # the hinge drops every row: only the clean part is left
        ce_clean = F.cross_entropy(bn_net()(x), y)
        torch.testing.assert_close(loss.detach(), C * ce_clean.detach(), rtol=1e-6, atol=1e-7)


def test_the_real_attack_leaves_batch_norm_statistics_to_the_two_training_forwards(monkeypatch):
    """With the real AN-PGD (its PGD and boundary search run in eval mode), the running
    statistics after a step are still exactly those of the clean and the mixed forward,
    and the loss is the authors' formula on the points it found."""
    x = torch.rand(N, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 7] * (N // 2))
    net = bn_net(1)
    reference = copy.deepcopy(net)
    found = {}
    real = mma_step_module.an_pgd

    def spy(*args, **kwargs):
        found["x_adv"], found["eps"] = real(*args, **kwargs)
        return found["x_adv"], found["eps"]

    monkeypatch.setattr(mma_step_module, "an_pgd", spy)
    spec = MMATrainSpec(eps_min=EPS_MIN, d_max=D_MAX, clean_loss_coeff=C, steps=3, bisection_steps=4)
    step = MMAStep(spec, "linf", N)
    torch.manual_seed(0)
    loss, _ = step(net, x, y, torch.arange(N), step=0)
    expected, correct, _ = authors_step(reference, x, y, found["x_adv"], found["eps"])
    assert correct.sum() == N // 2
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-6, atol=1e-7)
    for (name, b), (_, r) in zip(net.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(b, r, rtol=1e-6, atol=1e-7, msg=name)
    assert int(net[1].num_batches_tracked) == 2


# --------------------------------------------------------------------------- L2 PGD: advertorch's, by hand
def sparse_images(n: int, seed: int) -> torch.Tensor:
    """(n, 1, 8, 8) float64 images, ~70 % of the pixels 0 (as MNIST's): the box binds."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64)
    return torch.where(torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64) < 0.7, 0.0, x)


def linear_net(scale: float = 1.0) -> nn.Module:
    torch.manual_seed(5)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).double()
    with torch.no_grad():
        net[1].weight.mul_(scale)
        net[1].bias.mul_(scale)
    return net.eval()


def advertorch_l2_start_by_hand(x: torch.Tensor, eps: float) -> torch.Tensor:
    """advertorch's rand_init_delta (ord 2) then PGDAttack.perturb's clamp, as its code
    reads: delta.uniform_(clip_min, clip_max); delta − x; clamp_by_pnorm (factor
    min(r / ‖δ‖₂, 1)); clamp(x + delta, 0, 1) − x.  Returns the start x + delta."""
    delta = torch.empty_like(x).uniform_(0.0, 1.0) - x
    for i in range(len(x)):
        delta[i] = delta[i] * min(eps / delta[i].norm().item(), 1.0)
    return x + ((x + delta).clamp(0.0, 1.0) - x)


def advertorch_l2_pgd_by_hand(model, x, y, start, eps: float, eps_iter: float, nb_iter: int) -> torch.Tensor:
    """advertorch's perturb_iterative with ord 2 (CE loss), example by example: the
    gradient over max(‖g‖₂, 1e-6) (normalize_by_pnorm), a step, the box clamp, THEN the
    ball (clamp_by_pnorm); the result clamp(x + delta, 0, 1)."""
    out = []
    for i in range(len(x)):
        xi, yi, d = x[i : i + 1], y[i : i + 1], (start[i : i + 1] - x[i : i + 1]).clone()
        for _ in range(nb_iter):
            d.requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(model(xi + d), yi, reduction="sum"), d)
            d = d.detach() + eps_iter * g / max(g.norm().item(), 1e-6)
            d = (xi + d).clamp(0.0, 1.0) - xi
            d = d * min(eps / d.norm().item(), 1.0)
        out.append((xi + d).clamp(0.0, 1.0))
    return torch.cat(out)


@pytest.mark.parametrize("eps", [0.5, 3.0, 50.0])
def test_l2_random_start_is_advertorchs_rand_init_delta(eps):
    """The default L2 start (core.random_delta, l2_pgd "advertorch") is their uniform
    random image minus x scaled to length ε: on the sphere unless the image is nearer
    than ε (ε = 50 > every ‖r − x‖ here: the random image itself)."""
    x = sparse_images(12, 0)
    eps_t = torch.full((12,), eps, dtype=torch.float64)
    torch.manual_seed(7)
    ours = (x + random_delta(x.shape, eps_t, "l2", device=x.device, dtype=x.dtype, x=x)).clamp(0.0, 1.0)
    torch.manual_seed(7)
    theirs = advertorch_l2_start_by_hand(x, eps)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    length = lp_norm(ours - x, "l2")
    if eps < 3.5:  # ‖r − x‖₂ ≈ 4 for 64 pixels: the start is on the sphere
        torch.testing.assert_close(length, eps_t, rtol=1e-12, atol=0)
    # ours of the other form: lengths uniform in [0, ε], not on the sphere
    torch.manual_seed(7)
    iso = random_delta(x.shape, eps_t, "l2", device=x.device, dtype=x.dtype, l2_pgd="torchattacks")
    assert (lp_norm(iso, "l2") < 0.99 * eps).any()


@pytest.mark.parametrize("scale", [1.0, 1e-9], ids=["gradient", "vanishing gradient"])
@pytest.mark.parametrize("random_init", [True, False])
def test_l2_pgd_is_advertorchs_perturb_iterative(scale, random_init):
    """pgd(norm="l2") by default is advertorch's L2 PGD, iterate for iterate: their start,
    step over max(‖g‖, 1e-6), box clamp, then the ball.  Large steps on sparse images make
    the box and the ball bind together, where "torchattacks" (ball, then box; g / ‖g‖)
    ends elsewhere; a vanishing gradient (scale 1e-9) makes their step short."""
    x, model = sparse_images(12, 1), linear_net(scale)
    y = torch.arange(12) % 10
    eps, alpha, steps = 1.5, 0.9, 4
    torch.manual_seed(3)
    ours = pgd(model, x, y, eps, norm="l2", steps=steps, step_size=alpha, random_init=random_init, select="loss")
    torch.manual_seed(3)
    start = advertorch_l2_start_by_hand(x, eps) if random_init else x.clone()
    theirs = advertorch_l2_pgd_by_hand(model, x, y, start, eps, alpha, steps)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    torch.manual_seed(3)
    other = pgd(
        model,
        x,
        y,
        eps,
        norm="l2",
        steps=steps,
        step_size=alpha,
        random_init=False,
        select="loss",
        l2_pgd="torchattacks",
    )
    theirs_from_x = advertorch_l2_pgd_by_hand(model, x, y, x.clone(), eps, alpha, steps)
    assert (other - theirs_from_x).abs().flatten(1).amax(1).max() > 1e-3  # the forms differ: the test can fail


# --------------------------------------------------------------------------- model selection: ANPGDForTest
def elementwise_margin_by_hand(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """advertorch's elementwise_margin: the largest other logit (via top-2) minus the true one."""
    top, idx = logits.topk(2, dim=1)
    other = torch.where(idx[:, 0] == y, top[:, 1], top[:, 0])
    return other - logits.gather(1, y[:, None]).squeeze(1)


def anpgd_for_test_by_hand(model, x, y, test_eps, test_eps_iter, nb_iter, maxeps, num_search_steps):
    """Their ANPGDForTest.perturb (Linf, as train.py builds it), as the code reads:
    LinfPGDAttack (rand_init_delta: uniform(−1, 1)·ε, box clamp; sign steps of
    test_eps_iter on the summed soft logit margin, clamp to ε, box clamp), unitptb =
    (xadv − x) / (test_eps + 1e-12), the margin at xadv, then bisection_search from
    maxeps·0.5 with float masks, returning cur_eps."""
    delta = torch.empty_like(x).uniform_(-1, 1) * test_eps
    delta = (x + delta).clamp(0.0, 1.0) - x
    for _ in range(nb_iter):
        delta.requires_grad_(True)
        (g,) = torch.autograd.grad(soft_margin_loss(model(x + delta), y).sum(), delta)
        delta = delta.detach() + test_eps_iter * g.sign()
        delta = delta.clamp(-test_eps, test_eps)
        delta = (x + delta).clamp(0.0, 1.0) - x
    xadv = (x + delta).clamp(0.0, 1.0)
    unitptb = (xadv - x) / (test_eps + 1e-12)
    with torch.no_grad():
        margin = elementwise_margin_by_hand(model(xadv), y)
        maxeps_t = torch.full((len(x),), maxeps, dtype=x.dtype)
        cur_eps, cur_min, cur_max = maxeps_t * 0.5, torch.zeros_like(maxeps_t), maxeps_t.clone()
        for _ in range(num_search_steps):
            cur_min = torch.max((margin < 0).to(x.dtype) * cur_eps, cur_min)
            cur_max = torch.min((margin < 0).to(x.dtype) * maxeps_t + (margin >= 0).to(x.dtype) * cur_eps, cur_max)
            cur_eps = (cur_min + cur_max) / 2
            margin = elementwise_margin_by_hand(model((x + cur_eps[:, None, None, None] * unitptb).clamp(0, 1)), y)
    return cur_eps, model(xadv).argmax(1) == y


def test_validation_measure_is_the_authors_anpgd_for_test():
    """anpgd_for_test equals a hand computation of their ANPGDForTest on a model that
    classifies some images wrongly (they are searched too), at MNIST Linf's settings."""
    x, model = sparse_images(40, 2), linear_net()
    y = model(x).argmax(1)
    y[::4] = (y[::4] + 1) % 10  # a quarter misclassified
    torch.manual_seed(11)
    length, adv_ok = anpgd_for_test(
        model, x, y, norm="linf", test_eps=0.3, test_eps_iter=0.01, steps=40, eps_max=0.4725, bisection_steps=10
    )
    torch.manual_seed(11)
    theirs, theirs_ok = anpgd_for_test_by_hand(model, x, y, 0.3, 0.01, 40, 0.4725, 10)
    torch.testing.assert_close(length, theirs, rtol=0, atol=1e-12)
    assert torch.equal(adv_ok, theirs_ok)
    assert 0 < length.min() and length[::4].max() < 0.4725 / 2**10  # misclassified: searched, ending near 0
    assert length.unique().numel() > 10  # a spread of lengths, not one value


class TwoClassLine(nn.Module):
    """Logits (0, c − Σx) of d pixels: class 1 while Σx < c.  From x = 0.5, Linf PGD on
    label 1 raises every pixel to 0.5 + ε, so along its direction Σx = d·(0.5 + η) and the
    boundary lies at η = ``cross``."""

    def __init__(self, d: int, cross: float):
        super().__init__()
        self.c = d * (0.5 + cross)

    def forward(self, x):
        s = x.flatten(1).sum(1)
        return torch.stack([torch.zeros_like(s), self.c - s], 1)


@pytest.mark.parametrize("cross, expect", [(0.20, "found"), (0.26, "capped"), (0.35, "found")])
def test_the_authors_first_bisection_update_reads_the_margin_at_test_eps(cross, expect):
    """Their bisection starts at maxeps/2 (0.236 for MNIST Linf) but its first update uses
    the margin measured at test_eps (0.3): a boundary between the two (0.26) is read as
    crossed by 0.236, and the length found is capped just below 0.236; a boundary
    outside that interval is found to the search's resolution.  Our AN-PGD (the
    "an_pgd" measure) finds 0.26.  (Steps of 0.05 take every pixel from its random start
    to 0.5 + test_eps, so u is the all-ones direction.)"""
    eps_max = 0.4725
    x, y, model = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64), torch.tensor([1]), TwoClassLine(16, cross)
    torch.manual_seed(0)
    length, _ = anpgd_for_test(
        model, x, y, norm="linf", test_eps=0.3, test_eps_iter=0.05, steps=40, eps_max=eps_max, bisection_steps=10
    )
    res = eps_max / 2**10
    if expect == "found":
        assert abs(length.item() - cross) <= res
    else:
        assert eps_max / 2 - res <= length.item() < eps_max / 2
        torch.manual_seed(0)
        _, ours = an_pgd(model, x, y, eps_max / 2, norm="linf", eps_max=eps_max, steps=40, search_loss="margin")
        assert abs(ours.item() - cross) <= res


# --------------------------------------------------------------------------- selection in the loop
class TinyBatcher:
    """Fixed batches of a 16-example split (no steps_per_epoch: the loop reads N // batch)."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(16, 1, 4, 4, generator=g)
        self.y = torch.arange(16) % 3
        self.num_examples = 16

    def batch(self, step):
        idx = torch.arange(4) + 4 * (step % 4)
        return self.x[idx], self.y[idx], idx


@pytest.mark.filterwarnings("ignore:.*every per-example MMA epsilon is 0")  # the toy is not learnable in 10 steps
@pytest.mark.parametrize("method", ["std", "pgd", "mma"])
def test_every_method_is_selected_by_mean_margin_every_epoch(method, tmp_path):
    """By default (train.py's main loop; the final paper, Setup): validation after every
    epoch (16 examples / batch 4 = 4 steps) and after the last step, and the kept model is
    the checkpoint with the largest mean margin, which the model file names with its step."""
    from mma.io import load_tensors
    from mma.train import train

    blocks = {
        "std": {},
        "pgd": {"pgd": {"eps": 0.1, "steps": 2}},
        "mma": {"mma": {"eps_min": 0.05, "d_max": 0.3, "steps": 2}},
    }[method]
    spec = ModelSpec(
        name="toy",
        dataset="mnist",
        arch="lenet5_madry",
        norm="linf",
        method=method,
        train_steps=10,
        batch_size=4,
        checkpoint_every=100,
        optimizer={"lr": 1e-2},
        selection={"steps": 3},
        **blocks,
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    b = TinyBatcher()
    result = train(
        spec,
        b,
        (b.x, b.y),
        model_path=tmp_path / "m.pt",
        resume_path=tmp_path / "r.pt",
        model=model,
        show_progress=False,
    )
    assert [h["step"] for h in result.history] == [4, 8, 10]
    margins = [h["val_mean_margin"] for h in result.history]
    assert result.selection_metric == "val_mean_margin" and "val_adv_acc" in result.history[0]
    assert result.best_value == max(margins) and result.best_step == result.history[margins.index(max(margins))]["step"]
    saved = load_tensors(tmp_path / "m.pt")
    assert saved["step"] == result.best_step and saved["selection_metric"] == "val_mean_margin"
    chosen = saved["selection"]
    assert (chosen["metric"], chosen["margin_attack"], chosen["eval_every"], chosen["eval_every_steps"]) == (
        "mean_margin",
        "authors",
        "epoch",
        4,
    )
    assert (chosen["test_eps"], chosen["test_eps_iter"], chosen["steps"]) == (0.3, 0.01, 3)


def test_the_unclipped_training_point_is_the_default(monkeypatch):
    """MMA trains on x + ε·u unclipped (anpgd.py, ANPGD.perturb), unless clip_final: the
    step passes the setting to an_pgd, which computes the point in one place."""
    seen = []
    real = mma_step_module.an_pgd

    def spy(*args, **kwargs):
        seen.append(kwargs["clip_final"])
        return real(*args, **kwargs)

    monkeypatch.setattr(mma_step_module, "an_pgd", spy)
    x = torch.rand(N, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 7] * (N // 2))
    for clip in (False, True):
        spec = MMATrainSpec(eps_min=EPS_MIN, d_max=D_MAX, steps=2, bisection_steps=3, clip_final=clip)
        MMAStep(spec, "linf", N)(bn_net(1), x, y, torch.arange(N), step=0)
    assert seen == [False, True] and MMATrainSpec().clip_final is False
    u = torch.ones(2, 3)
    x0 = torch.tensor([[0.9, 0.5, 0.0], [0.2, 0.2, 0.2]])
    raw = final_point(x0, u, torch.tensor([0.3, 0.1]), clip=False)
    torch.testing.assert_close(raw, torch.tensor([[1.2, 0.8, 0.3], [0.3, 0.3, 0.3]]))
    torch.testing.assert_close(final_point(x0, u, torch.tensor([0.3, 0.1]), clip=True), raw.clamp(0, 1))


def test_the_other_selections_are_kept_as_options():
    """selection.margin_attack "an_pgd" is the measure used before (AN-PGD from ε_max/2 on
    the correctly classified images, the others counting 0); metric pgd_acc (PGD models
    only) and clean_acc select by those accuracies."""
    from mma.train import validate

    x, model = sparse_images(24, 3), linear_net()
    y = model(x).argmax(1)
    y[::3] = (y[::3] + 1) % 10
    spec = ModelSpec(
        name="v",
        dataset="mnist",
        arch="lenet5_madry",
        norm="linf",
        method="mma",
        mma={"d_max": 0.3, "steps": 5, "attack_loss": "margin"},
        selection={"margin_attack": "an_pgd", "steps": 5},
    )
    torch.manual_seed(2)
    out = validate(spec, model, x, y)
    ok = model(x).argmax(1) == y
    torch.manual_seed(2)
    _, lengths = an_pgd(model, x[ok], y[ok], 0.315 / 2, norm="linf", eps_max=0.315, steps=5, attack_loss="margin")
    assert out["val_mean_margin"] == pytest.approx(lengths.sum().item() / 24, rel=1e-9)
    assert out["val_clean_acc"] == pytest.approx(16 / 24) and "val_adv_acc" not in out
    clean = validate(spec.model_copy(update={"selection": SelectionSpec(metric="clean_acc")}), model, x, y)
    assert clean == {"val_clean_acc": pytest.approx(16 / 24)}
    with pytest.raises(ValueError, match="pgd_acc' needs method 'pgd'"):
        ModelSpec(
            name="v", dataset="mnist", arch="lenet5_madry", norm="linf", method="std", selection={"metric": "pgd_acc"}
        )


@pytest.mark.parametrize("selection", [{"metric": "pgd_acc"}, {"metric": "clean_acc"}, {"margin_attack": "an_pgd"}])
def test_how_a_model_is_selected_never_changes_its_training(selection, tmp_path):
    """Validation draws from a random stream of its own: a PGD model trained with another
    selection, or another cadence, ends with bitwise the same weights (only which
    checkpoint is kept may differ)."""
    from mma.train import train

    def final_weights(**over):
        spec = ModelSpec(
            name="toy",
            dataset="mnist",
            arch="lenet5_madry",
            norm="linf",
            method="pgd",
            pgd={"eps": 0.1, "steps": 2},
            train_steps=9,
            batch_size=4,
            checkpoint_every=100,
            optimizer={"lr": 1e-2},
            **over,
        )
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        b = TinyBatcher()
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        train(
            spec,
            b,
            (b.x, b.y),
            model_path=folder / "m.pt",
            resume_path=folder / "r.pt",
            model=model,
            show_progress=False,
        )
        return [p.detach().clone() for p in model.parameters()]

    default = final_weights(selection={"steps": 2})
    for other in (
        final_weights(selection={"steps": 2, **selection}),
        final_weights(selection={"steps": 2}, eval_every=2),
    ):
        assert all(torch.equal(a, b) for a, b in zip(default, other))
