"""The fixed-shape path (what a CUDA graph replays), on the CPU: it gives today's results,
reads nothing back and changes no shape.

* STD, PGD and PGDLS steps: bit for bit today's losses, gradients, weights and batch-norm
  statistics (the attacks did not compact before either).
* MMA steps: with the same boundary search, today's compacting step to float rounding;
  with today's default search (secant) against the path's (bisection), every ε within
  one search resolution.
* The bisection search is the authors' ``bisection_search`` (BorealisAI/mma_training,
  anpgd.py), written out below as an oracle, to one resolution step.
* Under ``FakeTensorMode`` (which refuses ``.item()``, ``nonzero()`` and boolean
  indexing: any host read or data-dependent shape) whole training steps and every
  evaluation attack run; the compacting step does not (the check can fail).
* The graph cache's bookkeeping (warm-up, capture, replay, static inputs), with the
  capture simulated.

LeNet5-Madry and a small WideResNet (wrn10_1, batch norm) on MNIST, trained for a few
dozen steps so that most of a batch is classified correctly and some of it is not.
Resume and the host-read counter of the loop on this path are in tests/test_train.py;
the capture itself in tests/test_gpu.py (CUDA).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mma import compute
from mma.attacks import an_pgd, boundary_search, fgsm, get_loss, pgd
from mma.attacks.core import attack_path
from mma.compute import Compute
from mma.config.model import ModelSpec
from mma.models import build_model
from mma.train.loop import FiniteCheck
from mma.train.optimize import TrainStep, make_optimizer
from mma.train.steps import make_step

ARCHS = ("lenet5_madry", "wrn10_1")
BATCH = 32
EAGER, FIXED = Compute("cpu"), Compute("cpu", fixed_shape=True)
GRAPH_PATH = Compute("cpu", cuda_graphs=True)  # the graph path's code (tensor lr, capturable Adam), not captured


@pytest.fixture(scope="module")
def nets(mnist_small) -> dict[str, nn.Module]:
    """LeNet5-Madry and wrn10_1 (one input channel) after a few Adam steps on MNIST (eval
    mode): most of a batch classified correctly, some of it not."""
    x, y = mnist_small["x_train"], mnist_small["y_train"]
    out = {}
    for arch, lr, steps in (("lenet5_madry", 2e-3, 25), ("wrn10_1", 1e-2, 40)):
        torch.manual_seed(0)
        model = build_model(arch, in_channels=1)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        for i in range(steps):
            b = slice(50 * i, 50 * i + 50)
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
        out[arch] = model.eval()
    return out


def spec_for(arch: str, norm: str, method: str) -> ModelSpec:
    eps = {"linf": 0.3, "l2": 2.0}[norm]
    blocks = {
        "std": {},
        "pgd": {"pgd": {"eps": eps, "steps": 3}},
        # no random start: at the ramp's ε = 0 the fixed-shape step attacks (PGD returns x
        # exactly) and so draws one start the eager step, which skips it, does not draw
        "pgdls": {"pgd": {"eps": eps, "steps": 3, "ramp_fraction": 0.5, "random_init": False}},
        "mma": {"mma": {"eps_min": eps / 3, "d_max": eps, "steps": 5, "random_init": False}},
    }[method]
    return ModelSpec(
        name=f"fixed-{method}",
        dataset="mnist",
        arch=arch,
        norm=norm,
        method={"pgdls": "pgd"}.get(method, method),
        train_steps=8,
        batch_size=BATCH,
        optimizer={"lr": 1e-3},
        **blocks,
    )


def run_steps(
    model: nn.Module, spec: ModelSpec, switches: Compute, batches, *, seed: int = 0, fresh: bool = True
) -> dict:
    """The loop's optimisation step (``TrainStep``) on a copy of ``model`` (``fresh=False``:
    on ``model`` itself) in train mode, one per (x, y, idx) of ``batches`` at steps 0, 1,
    ...: the last step's loss and gradients, the weights, buffers (batch norm's
    statistics) and MMA's ε store after them."""
    model = (copy.deepcopy(model) if fresh else model).train()
    optimizer = make_optimizer(spec, model, graph_safe=switches.cuda_graphs)
    step_fn = make_step(spec, 200, "cpu")
    run = TrainStep(
        spec, model, model, optimizer, step_fn, FiniteCheck(torch.device("cpu")), switches, torch.device("cpu")
    )
    torch.manual_seed(seed)
    for step, (x, y, idx) in enumerate(batches):
        metrics = run(x, y, idx, step)
    return {
        "loss": metrics["loss"],
        "metrics": metrics,
        "grads": {k: p.grad.clone() for k, p in model.named_parameters()},
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "eps": step_fn.eps.clone() if hasattr(step_fn, "eps") else None,
    }


def batches(mnist_small, n: int, offset: int = 3000 - 2 * BATCH):
    """n training batches (images the fixture nets were not trained on) with their positions."""
    x, y = mnist_small["x_train"], mnist_small["y_train"]
    out = []
    for i in range(n):
        idx = torch.arange(offset + i * BATCH, offset + (i + 1) * BATCH) % 3000
        out.append((x[idx], y[idx], idx % 200))
    return out


# --------------------------------------------------------------------------- STD / PGD / PGDLS: bit for bit
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("method", ["std", "pgd", "pgdls"])
def test_std_and_pgd_steps_are_todays_bit_for_bit(nets, mnist_small, arch, norm, method):
    """Two optimisation steps (PGDLS: at its ramp's ε = 0, where the eager step skips the
    attack and the fixed-shape one attacks at ε = 0, then ε > 0): the same loss,
    gradients, weights and batch-norm statistics, bitwise, with random starts (PGDLS:
    without, see ``spec_for``)."""
    spec = spec_for(arch, norm, method)
    data = batches(mnist_small, 2)
    today = run_steps(nets[arch], spec, EAGER, data)
    fixed = run_steps(nets[arch], spec, FIXED, data)
    assert torch.equal(today["loss"], fixed["loss"])
    for k in today["grads"]:
        assert torch.equal(today["grads"][k], fixed["grads"][k]), k
    for k in today["state"]:  # weights after two Adam steps; running_mean/var, num_batches_tracked
        assert torch.equal(today["state"][k], fixed["state"][k]), k
    if method == "pgdls":
        assert float(fixed["metrics"]["eps"]) == today["metrics"]["eps"] > 0


# --------------------------------------------------------------------------- MMA
def resolution(spec: ModelSpec) -> float:
    """The coarsest search resolution of a step: the widest first bracket (eps_max) / 2^steps."""
    return spec.mma.resolved_eps_max / 2**spec.mma.bisection_steps


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_mma_step_on_the_fixed_shape_path_is_todays_step(nets, mnist_small, arch, norm):
    """One MMA step on a batch with wrong rows, no random start:

    * the fixed-shape step (AN-PGD on all rows, masks) against today's compacting step
      with the same (bisection) search: the same ε store, loss, gradients and batch-norm
      statistics to float rounding (the attacked rows' forwards differ in batch size);
    * against today's default step (compacting, secant search): every stored ε within
      one search resolution, the loss within 1 %."""
    spec = spec_for(arch, norm, "mma")
    data = batches(mnist_small, 1)
    fixed = run_steps(nets[arch], spec, FIXED, data)
    same_search = run_steps(nets[arch], spec, Compute("cpu", search="bisection"), data)
    today = run_steps(nets[arch], spec, EAGER, data)
    correct = fixed["metrics"]["frac_correct"]
    assert 0.5 < correct < 1  # most rows attacked, some wrong ones masked
    attacked = fixed["eps"] > 0
    assert attacked.sum() >= BATCH // 2 and (fixed["eps"][attacked] < spec.mma.resolved_eps_max).any()

    torch.testing.assert_close(fixed["eps"], same_search["eps"], rtol=0, atol=1e-6)
    torch.testing.assert_close(fixed["loss"], same_search["loss"], rtol=1e-5, atol=1e-6)
    for k in fixed["grads"]:
        torch.testing.assert_close(fixed["grads"][k], same_search["grads"][k], rtol=1e-4, atol=1e-6, msg=k)
    for k in fixed["state"]:
        torch.testing.assert_close(fixed["state"][k], same_search["state"][k], rtol=1e-5, atol=1e-6, msg=k)
    for key in ("eps_mean", "eps_median", "frac_within_hinge"):
        (a, n), (b, m) = fixed["metrics"][key], same_search["metrics"][key]
        torch.testing.assert_close((a / n).float(), (b / m).float(), rtol=1e-5, atol=1e-7, msg=key)

    assert (fixed["eps"] - today["eps"]).abs().max() <= resolution(spec) * (1 + 1e-5)
    torch.testing.assert_close(fixed["loss"], today["loss"], rtol=1e-2, atol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_mma_step_with_random_starts_is_todays_where_every_row_is_attacked(nets, mnist_small, arch):
    """With random starts the two paths draw the same numbers when every row is attacked
    (both draw for the whole batch): the same ε store and loss to float rounding."""
    spec = spec_for(arch, "linf", "mma")
    spec = spec.model_copy(update={"mma": spec.mma.model_copy(update={"random_init": True})})
    x, y = mnist_small["x_train"][2000:2400], mnist_small["y_train"][2000:2400]
    idx = all_correct_batch(nets[arch], x, y, get_loss(spec.mma.resolved_split_loss))
    data = [(x[idx], y[idx], idx % 200)]
    fixed = run_steps(nets[arch], spec, FIXED, data, seed=3)
    same_search = run_steps(nets[arch], spec, Compute("cpu", search="bisection"), data, seed=3)
    assert fixed["metrics"]["frac_correct"] == 1
    torch.testing.assert_close(fixed["eps"], same_search["eps"], rtol=0, atol=1e-6)
    torch.testing.assert_close(fixed["loss"], same_search["loss"], rtol=1e-5, atol=1e-6)


def all_correct_batch(model: nn.Module, x, y, split_loss) -> torch.Tensor:
    """BATCH positions in x that ``model`` in train mode (batch norm: the batch's own
    statistics) classifies correctly by ``split_loss``, every one of them: rows that fail
    are swapped for the next candidates until none does."""
    model = copy.deepcopy(model).train()
    with torch.no_grad():
        candidates = iter((split_loss(model.eval()(x), y) < 0).nonzero().squeeze(1).tolist())
        rows = [next(candidates) for _ in range(BATCH)]
        for _ in range(20):
            ok = split_loss(model.train()(x[rows]), y[rows]) < 0
            if ok.all():
                return torch.tensor(rows)
            rows = [r if good else next(candidates) for r, good in zip(rows, ok.tolist())]
    raise AssertionError("no batch that the net classifies correctly in train mode")


# --------------------------------------------------------------------------- the authors' bisection
def authors_bisection_search(cur_eps, ptb, model, data, label, fn_margin, margin_init, maxeps, num_steps):
    """The authors' ``bisection_search`` (BorealisAI/mma_training, anpgd.py), written out:
    the oracle.  ``margin_init`` is the margin at cur_eps; it returns the last midpoint."""
    margin = margin_init
    cur_min = torch.zeros_like(margin)
    cur_max = maxeps.clone()
    for _ in range(num_steps):
        cur_min = torch.max((margin < 0).float() * cur_eps, cur_min)
        cur_max = torch.min((margin < 0).float() * maxeps + (margin >= 0).float() * cur_eps, cur_max)
        cur_eps = (cur_min + cur_max) / 2
        with torch.no_grad():
            margin = fn_margin(model((data + cur_eps.view(-1, *[1] * (data.dim() - 1)) * ptb).clamp(0, 1)), label)
    return cur_eps


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("with_g_zero", [False, True])
def test_bisection_search_is_the_authors_to_one_resolution(nets, eval_batch, norm, with_g_zero):
    """Along PGD's directions on the trained LeNet5 (as AN-PGD searches), from first radii
    below and above the crossings: our bisection's length is the authors' last midpoint or
    one resolution (its first bracket's width / 2^10) above it — the adversarial end of
    the bracket it halves — for every example."""
    model = nets["lenet5_madry"]
    x, y = eval_batch[0][:96], eval_batch[1][:96]
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep], y[keep]
    eps_max = 0.5 if norm == "linf" else 4.0
    torch.manual_seed(0)
    delta = pgd(model, x, y, 0.3 * eps_max, norm=norm, steps=10, loss="soft_margin", select="loss") - x
    u = delta / delta.flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1).view(-1, 1, 1, 1)
    eps_mid = eps_max * torch.linspace(0.05, 0.6, len(y))
    eps_hi = torch.full_like(eps_mid, eps_max)
    margin = get_loss("margin")
    with torch.no_grad():
        g_mid = margin(model((x + eps_mid.view(-1, 1, 1, 1) * u).clamp(0, 1)), y)
        g_zero = margin(model(x), y) if with_g_zero else None
    theirs = authors_bisection_search(eps_mid, u, model, x, y, margin, g_mid, eps_hi, 10)
    ours = boundary_search(model, x, y, u, eps_mid, eps_hi, g_zero=g_zero, search="bisection")
    width = torch.where(g_mid >= 0, eps_mid, eps_hi - eps_mid)
    assert ((g_mid >= 0).sum() > 10) and ((g_mid < 0).sum() > 10)  # both first brackets
    gap = ours - theirs
    assert (gap >= -1e-6).all() and (gap <= width / 2**10 * (1 + 1e-4) + 1e-6).all()
    assert (ours < eps_hi).sum() > 0.8 * len(y)  # crossings found, not only the far end


# --------------------------------------------------------------------------- no host read, no data-dependent shape
def fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["std", "pgd", "pgdls", "mma"])
def test_the_fixed_shape_training_step_reads_nothing_back(arch, method):
    """Two optimisation steps of the graph path's code (tensor learning rate, capturable
    Adam, the step number a device tensor) under FakeTensorMode, random starts on: no
    host read, no data-dependent shape anywhere (batch step, backward, finite check,
    optimiser)."""
    spec = spec_for(arch, "linf", method)
    if method == "mma":
        spec = spec.model_copy(update={"mma": spec.mma.model_copy(update={"random_init": True})})
    with fake_mode():
        model = build_model(arch, in_channels=1).train()
        data = [
            (torch.rand(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,)), torch.randperm(200)[:BATCH])
            for _ in range(2)
        ]
        out = run_steps(model, spec, GRAPH_PATH, data, fresh=False)
    assert out["loss"].shape == ()


def test_the_compacting_mma_step_is_refused_there():
    """The check can fail: today's compacting MMA step under FakeTensorMode is refused."""
    from torch._subclasses.fake_tensor import DynamicOutputShapeException

    spec = spec_for("lenet5_madry", "linf", "mma")
    with fake_mode(), pytest.raises(DynamicOutputShapeException):
        model = build_model("lenet5_madry", in_channels=1).train()
        run_steps(
            model, spec, EAGER, [(torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)), torch.arange(8))], fresh=False
        )


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_evaluation_attack_reads_nothing_back_on_the_fixed_shape_path(norm):
    """White-box PGD with restarts (select="target"), restarts chosen by loss (transfer
    sets), FGSM and AN-PGD (margins, repgd too) under FakeTensorMode on the fixed-shape
    path; the same PGD with early exit (the compacting path) is refused."""
    from torch._subclasses.fake_tensor import DynamicOutputShapeException

    with fake_mode():
        model = build_model("lenet5_madry").eval()
        x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
        eps = torch.full((16,), 0.1)
        with attack_path(fixed_shape=True, search="bisection"):
            pgd(model, x, y, eps, norm=norm, steps=3, restarts=3, select="target")
            pgd(model, x, y, 0.1, norm=norm, steps=3, restarts=2, select="loss")
            fgsm(model, x, y, 0.1, norm=norm)
            an_pgd(model, x, y, eps, norm=norm, eps_max=0.5, steps=3)
            an_pgd(model, x, y, eps, norm=norm, eps_max=0.5, steps=3, clean_logits=model(x), repgd=True)
        with pytest.raises(DynamicOutputShapeException):
            pgd(model, x, y, eps, norm=norm, steps=3, restarts=3, select="target")


# --------------------------------------------------------------------------- evaluation on the fixed-shape path
@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_white_box_evaluation_is_the_same_on_the_fixed_shape_path(trained_convnet, eval_batch, attack):
    """The white-box cascade (``survival``: PGD restarts with select="target", FGSM) gives
    the same restarts survived per example on the fixed-shape path (every row, every
    step, FGSM on the whole batch) as on the compacting one."""
    from mma.config.evaluation import AttackSetting
    from mma.evaluation.whitebox import survival

    x, y = eval_batch[0][:120], eval_batch[1][:120]
    setting = AttackSetting(attack=attack, steps=5, restarts=3) if attack == "pgd" else AttackSetting(attack="fgsm")
    kw = dict(
        norm="linf",
        loss="mixed",
        seed=7,
        active=torch.arange(120) % 5 != 0,
        clean_pred=y,
        batch_size=50,
        show_progress=False,
    )
    out = {}
    for name, switches in (("eager", EAGER), ("fixed", FIXED)):
        with compute.attacks(switches):
            out[name] = survival(trained_convnet, x, y, 0.12, setting, **kw)
    assert torch.equal(out["eager"], out["fixed"])
    assert (out["eager"] == 0).sum() > 5 and (out["eager"] > 0).sum() > 5  # broken and robust examples


# --------------------------------------------------------------------------- the graph path's optimiser
@pytest.mark.parametrize("saved_by, resumed_by", [("eager", "graph"), ("graph", "eager")])
def test_a_resumed_optimizer_keeps_its_own_paths_learning_rate(nets, saved_by, resumed_by):
    """``load_state_dict`` brings back the saved groups' settings; ``keep_graph_safe`` puts
    the resuming path's back: a device tensor lr and capturable Adam on the graph path, a
    float lr elsewhere, the saved value either way."""
    from mma.train.optimize import keep_graph_safe, set_lr

    spec = spec_for("lenet5_madry", "linf", "std")
    model = copy.deepcopy(nets["lenet5_madry"])
    saved = make_optimizer(spec, model, graph_safe=saved_by == "graph")
    set_lr(saved, 3e-4)
    resumed = make_optimizer(spec, model, graph_safe=resumed_by == "graph")
    resumed.load_state_dict(saved.state_dict())
    keep_graph_safe(resumed, resumed_by == "graph")
    group = resumed.param_groups[0]
    assert isinstance(group["lr"], torch.Tensor) == (resumed_by == "graph")
    assert group["capturable"] == (resumed_by == "graph")
    assert float(group["lr"]) == pytest.approx(3e-4)


# --------------------------------------------------------------------------- the graph cache
class SimulatedCapture:
    """Stands in for a CUDA capture on the CPU: 'capturing' runs ``fn`` on static copies of
    the inputs, a 'replay' copies the new inputs in and runs it on the static ones again."""

    captures = 0

    def __init__(self, fn, inputs, stream, pool):
        SimulatedCapture.captures += 1
        self.fn = fn
        self.static = tuple(t.clone() for t in inputs)
        self.outputs = None

    def replay(self, inputs):
        for s, t in zip(self.static, inputs):
            s.copy_(t)
        self.outputs = self.fn(*self.static)
        return self.outputs


def test_graph_cache_warms_up_captures_once_then_replays(monkeypatch):
    """Per key: ``warmup`` eager calls, then one capture, then replays fed through the
    static inputs; outputs copied (unless told not to); past ``max_graphs`` keys, eager."""
    from mma import graphs

    monkeypatch.setattr(graphs, "_Captured", SimulatedCapture)
    monkeypatch.setattr(graphs.GraphCache, "_on_side_stream", lambda self, fn, inputs, device: fn(*inputs))
    monkeypatch.setattr(graphs.torch.cuda, "Stream", lambda device: None)
    monkeypatch.setattr(graphs.torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(graphs, "_captures", lambda device: True)
    SimulatedCapture.captures = 0
    cache = graphs.GraphCache(warmup=2, max_graphs=1)
    calls = []

    def fn(a):
        calls.append(a)
        return {"twice": a * 2}

    results = [cache("k", fn, (torch.tensor([float(i)]),)) for i in range(5)]
    assert [float(r["twice"]) for r in results] == [0, 2, 4, 6, 8]
    assert SimulatedCapture.captures == 1
    assert calls[0] is not calls[2]  # from the third call on: the static input
    assert all(c is calls[2] for c in calls[3:])
    assert results[3]["twice"] is not results[4]["twice"]  # copied outputs
    cache("other", fn, (torch.tensor([1.0]),))
    cache("other", fn, (torch.tensor([1.0]),))
    cache("other", fn, (torch.tensor([1.0]),))
    assert SimulatedCapture.captures == 1  # max_graphs reached: eager
