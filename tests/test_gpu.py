"""The device tests of `make gpu-check`: CUDA results against CPU ones, resume
equality and bf16 on the device, no host sync inside a training step, and the graph
path (``compute.cuda_graphs``): captured training steps and attacks against the same
code run eagerly, resume, bf16 and channels_last on top.

Marked ``gpu``; the device is ``$MMA_TEST_DEVICE`` (default ``cuda``), and every test
skips when that device is not there, so a plain ``pytest`` on a CPU machine skips
them.  ``MMA_TEST_DEVICE=cpu`` runs them on the CPU (the dry run of ``make gpu-check
DEVICE=cpu``: the CPU-vs-device comparisons are then trivial, the code paths are not).
"""

from __future__ import annotations

import copy
import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (before CUDA starts)

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from mma.attacks import an_pgd, pgd  # noqa: E402
from mma.attacks.core import attack_precision  # noqa: E402

pytestmark = pytest.mark.gpu
DEVICE = os.environ.get("MMA_TEST_DEVICE", "cuda")


@pytest.fixture(scope="module")
def device() -> torch.device:
    dev = torch.device(DEVICE)
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"no CUDA device (torch {torch.__version__}); MMA_TEST_DEVICE=cpu runs these on the CPU")
    return dev


@pytest.fixture(scope="module")
def batch(eval_batch):
    x, y = eval_batch
    return x[:200], y[:200]


def robust(model, x_adv, y) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.5)])
def test_pgd_on_the_device_agrees_with_cpu(trained_convnet, batch, device, norm, eps):
    """Same inputs, no random start: the device's PGD-10 examples equal the CPU's except
    where a gradient component is ~0 and its sign flips with rounding (≤ 1 % of the
    pixels), and the robust accuracy agrees to 2 examples in 200."""
    x, y = batch
    cpu = pgd(trained_convnet, x, y, eps, norm=norm, steps=10, random_init=False, loss="ce")
    model = copy.deepcopy(trained_convnet).to(device)
    dev = pgd(model, x.to(device), y.to(device), eps, norm=norm, steps=10, random_init=False, loss="ce").cpu()
    assert ((dev - cpu).abs() > 1e-4).float().mean() <= 0.01
    assert abs(int(robust(trained_convnet, dev, y).sum()) - int(robust(trained_convnet, cpu, y).sum())) <= 2


def test_an_pgd_on_the_device_agrees_with_cpu(trained_convnet, batch, device):
    """AN-PGD's found lengths: 90 % of the examples within two search resolutions."""
    x, y = batch
    kw = dict(norm="linf", eps_max=0.5, steps=10, random_init=False)
    _, cpu = an_pgd(trained_convnet, x, y, 0.1, **kw)
    model = copy.deepcopy(trained_convnet).to(device)
    _, dev = an_pgd(model, x.to(device), y.to(device), 0.1, **kw)
    resolution = 0.5 / 2**10
    assert ((dev.cpu() - cpu).abs() <= 2 * resolution).float().mean() >= 0.9


def test_mma_step_on_the_device_agrees_with_cpu(trained_convnet, mnist_small, device):
    from mma.train import MMAStep, MMATrainSpec

    x, y = mnist_small["x_train"][:50], mnist_small["y_train"][:50]
    idx = torch.arange(50)
    spec = MMATrainSpec(steps=10, random_init=False)
    out = {}
    for name, dev in (("cpu", torch.device("cpu")), ("device", device)):
        model = copy.deepcopy(trained_convnet).to(dev).train()
        for p in model.parameters():
            p.requires_grad_(True)
        step = MMAStep(spec, "linf", 100, device=dev)
        loss, metrics = step(model, x.to(dev), y.to(dev), idx.to(dev), 0)
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters()]).cpu()
        out[name] = (float(loss), step.eps.cpu(), grad)
    (l_cpu, e_cpu, g_cpu), (l_dev, e_dev, g_dev) = out["cpu"], out["device"]
    assert l_dev == pytest.approx(l_cpu, rel=2e-2)
    assert ((e_dev - e_cpu).abs() <= 2 * 0.4725 / 2**10).float().mean() >= 0.9
    assert torch.nn.functional.cosine_similarity(g_dev, g_cpu, dim=0) > 0.98


def _graph_path(device):
    from mma.compute import Compute

    return Compute(device.type, cuda_graphs=True)


def _wrn_small():
    from mma.models import build_model

    torch.manual_seed(0)
    return build_model("wrn10_1", in_channels=1)


@pytest.mark.parametrize(
    "arch, method", [("convnet", "std"), ("convnet", "pgd"), ("convnet", "mma"), ("wrn10_1", "mma")]
)
def test_graph_path_steps_equal_the_same_steps_run_eagerly(trained_convnet, mnist_small, device, arch, method):
    """Six optimisation steps of the graph path (three warm-up steps, the capture, two
    replays) against the same code without capture (``TrainStep.graphs = None``): the same
    weights, batch-norm statistics, MMA ε store and last loss (deterministic algorithms
    where torch has them: the WRN's global average pooling backward has none, but with one
    output per channel each input gets a single contribution; random starts on, from the
    same generator; PGDLS's ε ramp read from the step tensor).
    The WideResNet (batch norm) learns the labels it predicts, so that MMA attacks rows.
    On a CPU both run eagerly."""
    from mma.config.model import ModelSpec
    from mma.train.loop import FiniteCheck
    from mma.train.optimize import TrainStep, make_optimizer
    from mma.train.steps import make_step

    blocks = {
        "std": {},
        "pgd": {"pgd": {"eps": 0.3, "steps": 5, "ramp_fraction": 0.5}},
        "mma": {"mma": {"eps_min": 0.1, "d_max": 0.3, "steps": 5, "search_loss": "margin"}},
    }[method]
    spec = ModelSpec(
        name="graphs",
        dataset="mnist",
        arch="lenet5_madry",
        norm="linf",
        method=method,
        train_steps=12,
        batch_size=32,
        optimizer={"lr": 1e-3},
        **blocks,
    )
    base = copy.deepcopy(trained_convnet) if arch == "convnet" else _wrn_small()
    x, y = mnist_small["x_train"][:192].to(device), mnist_small["y_train"][:192].to(device)
    if arch == "wrn10_1":
        with torch.no_grad():
            y = torch.cat([copy.deepcopy(base).to(device).train()(x[i : i + 32]).argmax(1) for i in range(0, 192, 32)])
    out = {}
    torch.use_deterministic_algorithms(True, warn_only=True)  # WRN: global average pooling's backward
    try:
        for name in ("graphs", "eager"):
            model = copy.deepcopy(base).to(device).train()
            for p in model.parameters():
                p.requires_grad_(True)
            optimizer = make_optimizer(spec, model, graph_safe=True)
            step_fn = make_step(spec, 192, device)
            run = TrainStep(spec, model, model, optimizer, step_fn, FiniteCheck(device), _graph_path(device), device)
            if name == "eager":
                run.graphs = None
            torch.manual_seed(5)
            for step in range(6):
                idx = torch.arange(32 * step, 32 * step + 32, device=device)
                metrics = run(x[idx], y[idx], idx, step)
            out[name] = (
                {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                step_fn.eps.cpu().clone() if method == "mma" else None,
                float(metrics["loss"]),
            )
    finally:
        torch.use_deterministic_algorithms(False)
    (state_g, eps_g, loss_g), (state_e, eps_e, loss_e) = out["graphs"], out["eager"]
    for k in state_e:
        torch.testing.assert_close(state_g[k], state_e[k], rtol=1e-5, atol=1e-6, msg=k)
    if method == "mma":
        torch.testing.assert_close(eps_g, eps_e, rtol=0, atol=1e-6)
        assert (eps_e > 0).sum() > 96  # the store is in use
    assert loss_g == pytest.approx(loss_e, rel=1e-5)


@pytest.mark.parametrize("attack", ["pgd", "fgsm", "an_pgd"])
def test_captured_attacks_equal_the_eager_ones(trained_convnet, batch, device, attack):
    """Under ``compute.attacks`` on the graph path each evaluation attack is captured (first
    call eager, second captured, third replayed): every call, seeded, gives the eager
    fixed-shape call's result."""
    from mma import compute
    from mma.attacks.core import seeded
    from mma.compute import Compute

    model = copy.deepcopy(trained_convnet).to(device)
    x, y = batch[0][:100].to(device), batch[1][:100].to(device)
    eps = torch.linspace(0.05, 0.2, 100, device=device)

    def call(seed):
        with seeded(seed, device):
            if attack == "pgd":
                return pgd(model, x, y, eps, steps=5, restarts=3, loss="ce", select="target")
            if attack == "fgsm":
                from mma.attacks import fgsm

                return fgsm(model, x, y, 0.1)
            return torch.cat([t.flatten() for t in an_pgd(model, x, y, eps, eps_max=0.5, steps=5)])

    results = {}
    torch.use_deterministic_algorithms(True)
    try:
        for name, switches in (("graphs", _graph_path(device)), ("eager", Compute(device.type, fixed_shape=True))):
            with compute.attacks(switches):
                results[name] = [call(seed) for seed in (1, 2, 1)]
    finally:
        torch.use_deterministic_algorithms(False)
    for g, e in zip(results["graphs"], results["eager"]):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results["graphs"][0], results["graphs"][2], rtol=0, atol=0)  # the seed decides


def test_bf16_pgd_robust_accuracy_within_binomial_noise_on_the_device(trained_convnet, eval_batch, device):
    x, y = eval_batch
    model = copy.deepcopy(trained_convnet).to(device)
    x, y = x.to(device), y.to(device)
    acc = {}
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(0)
        with attack_precision(dtype):
            x_adv = pgd(model, x, y, 0.1, steps=20, loss="ce")
        acc[dtype] = robust(model, x_adv, y).float().mean().item()
    p, n = acc[None], len(y)
    assert abs(acc[torch.bfloat16] - p) <= 2 * (p * (1 - p) / n) ** 0.5 + 1 / n


class _Batcher:
    def __init__(self, device, n=256, dim=16):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, dim, generator=g).to(device)
        self.y = ((self.x[:, :3].sum(1) > 1.5).long() + 2 * (self.x[:, 3] > 0.5).long()).to(device)
        self.num_examples, self.crash_at = n, None

    def batch(self, step):
        if step == self.crash_at:
            raise KeyboardInterrupt(step)
        perm = torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(step // 8))
        idx = perm[(step % 8) * 32 : (step % 8 + 1) * 32].to(self.x.device)
        return self.x[idx], self.y[idx], idx


def _toy(method, device, tmp, batcher, switches=None):
    from mma.compute import FP32
    from mma.train import ModelSpec, train

    blocks = {"mma": {"mma": {"eps_min": 0.02, "d_max": 0.3, "steps": 5}}, "pgd": {"pgd": {"eps": 0.1, "steps": 5}}}
    spec = ModelSpec(
        name=f"gpu-{method}",
        dataset="mnist",
        arch="lenet5_madry",
        norm="linf",
        method=method,
        train_steps=24,
        batch_size=32,
        eval_every=8,
        checkpoint_every=6,
        log_every=4,
        optimizer={"lr": 2e-2},
        **blocks[method],
    )
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 10)).to(device)
    train(
        spec,
        batcher,
        (batcher.x[:64], batcher.y[:64]),
        model_path=tmp / "model.pt",
        resume_path=tmp / "resume.pt",
        model=model,
        show_progress=False,
        device=device,
        compute=switches or FP32,
    )
    return model


@pytest.mark.parametrize("path", ["eager", "graphs"])
@pytest.mark.parametrize("method", ["pgd", "mma"])
def test_resume_on_the_device_equals_training_in_one_go(method, path, device, tmp_path):
    """A crash and a resume give the weights (and MMA's ε store) of training in one go; on
    the graph path the resumed run captures anew, its random starts continuing from the
    checkpointed CUDA generator state."""
    from mma.io import load_tensors

    switches = _graph_path(device) if path == "graphs" else None
    torch.use_deterministic_algorithms(True)
    try:
        whole = _toy(method, device, tmp_path / "a", _Batcher(device), switches)
        crashing = _Batcher(device)
        crashing.crash_at = 15
        with pytest.raises(KeyboardInterrupt):
            _toy(method, device, tmp_path / "b", crashing, switches)
        assert load_tensors(tmp_path / "b" / "resume.pt")["result"]["step"] == 12
        torch.manual_seed(999)
        resumed = _toy(method, device, tmp_path / "b", _Batcher(device), switches)
    finally:
        torch.use_deterministic_algorithms(False)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    if method == "mma":
        a, b = load_tensors(tmp_path / "a" / "resume.pt"), load_tensors(tmp_path / "b" / "resume.pt")
        assert torch.equal(a["step_fn"]["eps"], b["step_fn"]["eps"])
        assert (a["step_fn"]["eps"] > 0).any()  # the store is in use


@pytest.mark.parametrize(
    "method, path", [("std", "eager"), ("pgd", "eager"), ("std", "fixed"), ("pgd", "fixed"), ("mma", "fixed")]
)
def test_training_step_makes_no_host_sync(trained_convnet, mnist_small, device, method, path):
    """CUDA's sync debug mode turns any synchronising call into an error: a training step
    (batch step, backward, finite check, Adam, metrics summed on the device) makes none;
    MMA's on the fixed-shape path (what the graph path captures) neither."""
    if device.type != "cuda":
        pytest.skip("sync debug mode is CUDA's (tests/test_train.py counts host reads on the CPU)")
    from mma.compute import Compute
    from mma.config.model import ModelSpec
    from mma.train.loop import FiniteCheck, MetricWindow
    from mma.train.optimize import TrainStep, make_optimizer
    from mma.train.steps import make_step

    blocks = {"std": {}, "pgd": {"pgd": {"eps": 0.3, "steps": 5}}, "mma": {"mma": {"eps_min": 0.1, "steps": 5}}}
    spec = ModelSpec(
        name="sync",
        dataset="mnist",
        arch="lenet5_madry",
        norm="linf",
        method=method,
        train_steps=10**9,
        batch_size=50,
        optimizer={"lr": 1e-4},
        **blocks[method],
    )
    switches = Compute("cuda", fixed_shape=path == "fixed")
    model = copy.deepcopy(trained_convnet).to(device).train()
    for p in model.parameters():
        p.requires_grad_(True)
    run = TrainStep(
        spec,
        model,
        model,
        make_optimizer(spec, model),
        make_step(spec, 50, device),
        FiniteCheck(device),
        switches,
        device,
    )
    x, y = mnist_small["x_train"][:50].to(device), mnist_small["y_train"][:50].to(device)
    idx = torch.arange(50, device=device)
    window = MetricWindow()
    window.add(run(x, y, idx, 0))  # first step: lazy initialisation (Adam state, cuDNN plans) may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 4):
            window.add(run(x, y, idx, step))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert window.read()["loss"] > 0


def test_bf16_and_channels_last_on_the_graph_path(trained_convnet, mnist_small, device, tmp_path):
    """precision bf16 and channels_last stay switches on top of the graph path: MMA
    training runs (warm-up, capture, replays), its losses finite, its ε store in use, the
    switches recorded in the model file."""
    import math

    from mma.compute import Compute
    from mma.data import TensorBatcher, to_float
    from mma.io import load_tensors
    from mma.train import ModelSpec, train

    switches = Compute(device.type, precision="bf16", channels_last=True, cuda_graphs=True)
    spec = ModelSpec(
        name="bf16-graphs",
        dataset="mnist",
        arch="lenet5_madry",
        norm="linf",
        method="mma",
        mma={"eps_min": 0.1, "d_max": 0.3, "steps": 3},
        train_steps=8,
        batch_size=50,
        eval_every=8,
        checkpoint_every=8,
        log_every=2,
        optimizer={"lr": 1e-4},
    )
    x_u8 = (mnist_small["x_train"][:400] * 255).round().to(torch.uint8)
    batcher = TensorBatcher(x_u8, mnist_small["y_train"][:400], 50, seed=0, device=device)
    model = copy.deepcopy(trained_convnet)
    for p in model.parameters():
        p.requires_grad_(True)
    logged = []
    train(
        spec,
        batcher,
        (to_float(x_u8[:50], device), mnist_small["y_train"][:50].to(device)),
        model_path=tmp_path / "m.pt",
        resume_path=tmp_path / "r.pt",
        device=device,
        model=model,
        show_progress=False,
        compute=switches,
        log=lambda m, s: logged.append(m),
    )
    losses = [m["loss"] for m in logged if "loss" in m]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert all(m["eps_mean"] > 0 for m in logged if "eps_mean" in m)
    assert load_tensors(tmp_path / "m.pt")["compute"] == switches.record()
