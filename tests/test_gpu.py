"""The device tests of `make gpu-check`: CUDA results against CPU ones, resume
equality and bf16 on the device, no host sync inside a training step.

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


@pytest.mark.xfail(strict=True, raises=RuntimeError,
                   reason="torch 2.11 on an H200: 'accessing tensor output of CUDAGraphs that has been overwritten' "
                          "(the MMA step keeps outputs while the same graph replays; copying the logits did not "
                          "help); compute.resolve turns cuda_graphs off for MMA. Passing: re-enable it there")
def test_mma_step_with_cuda_graphs_agrees_with_eager(trained_convnet, mnist_small, device):
    """compute.cuda_graphs (torch.compile, mode="reduce-overhead") on the MMA step: three
    steps agree with eager ones."""
    if device.type != "cuda":
        pytest.skip("cuda_graphs is CUDA's (resolve() turns it off elsewhere)")
    from mma.compute import Compute, prepare
    from mma.train import MMAStep, MMATrainSpec

    x, y = mnist_small["x_train"][:50].to(device), mnist_small["y_train"][:50].to(device)
    idx = torch.arange(50, device=device)
    out = {}
    for name, switches in (("eager", Compute("cuda")), ("graphs", Compute("cuda", cuda_graphs=True))):
        model = copy.deepcopy(trained_convnet).to(device).train()
        for p in model.parameters():
            p.requires_grad_(True)
        net = prepare(model, switches)
        step = MMAStep(MMATrainSpec(steps=10, random_init=False), "linf", 100, device=device)
        losses = []
        for k in range(3):
            model.zero_grad(set_to_none=True)
            loss, _ = step(net, x, y, idx, k)
            loss.backward()
            losses.append(float(loss.detach()))
        grad = torch.cat([p.grad.flatten() for p in model.parameters()])
        out[name] = (losses, step.eps.clone(), grad)
    (l_e, e_e, g_e), (l_g, e_g, g_g) = out["eager"], out["graphs"]
    assert l_g == pytest.approx(l_e, rel=2e-2)
    assert ((e_g - e_e).abs() <= 2 * 0.4725 / 2**10).float().mean() >= 0.9
    assert torch.nn.functional.cosine_similarity(g_g, g_e, dim=0) > 0.98


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
        idx = perm[(step % 8) * 32: (step % 8 + 1) * 32].to(self.x.device)
        return self.x[idx], self.y[idx], idx


def _toy(method, device, tmp, batcher):
    from mma.train import ModelSpec, train

    blocks = {"mma": {"mma": {"eps_min": 0.02, "d_max": 0.3, "steps": 5}}, "pgd": {"pgd": {"eps": 0.1, "steps": 5}}}
    spec = ModelSpec(name=f"gpu-{method}", dataset="mnist", arch="lenet5_madry", norm="linf", method=method,
                     train_steps=24, batch_size=32, eval_every=8, checkpoint_every=6, log_every=4,
                     optimizer={"lr": 2e-2}, **blocks[method])
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 10)).to(device)
    train(spec, batcher, (batcher.x[:64], batcher.y[:64]), model_path=tmp / "model.pt", resume_path=tmp / "resume.pt",
          model=model, show_progress=False, device=device)
    return model


@pytest.mark.parametrize("method", ["pgd", "mma"])
def test_resume_on_the_device_equals_training_in_one_go(method, device, tmp_path):
    from mma.io import load_tensors

    torch.use_deterministic_algorithms(True)
    try:
        whole = _toy(method, device, tmp_path / "a", _Batcher(device))
        crashing = _Batcher(device)
        crashing.crash_at = 15
        with pytest.raises(KeyboardInterrupt):
            _toy(method, device, tmp_path / "b", crashing)
        assert load_tensors(tmp_path / "b" / "resume.pt")["result"]["step"] == 12
        torch.manual_seed(999)
        resumed = _toy(method, device, tmp_path / "b", _Batcher(device))
    finally:
        torch.use_deterministic_algorithms(False)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    if method == "mma":
        a, b = load_tensors(tmp_path / "a" / "resume.pt"), load_tensors(tmp_path / "b" / "resume.pt")
        assert torch.equal(a["step_fn"]["eps"], b["step_fn"]["eps"])
        assert (a["step_fn"]["eps"] > 0).any()  # the store is in use


@pytest.mark.parametrize("method", ["std", "pgd"])
def test_training_step_makes_no_host_sync(trained_convnet, mnist_small, device, method):
    """CUDA's sync debug mode turns any synchronising call into an error: a training step
    (batch step, backward, finite check, Adam, metrics summed on the device) makes none."""
    if device.type != "cuda":
        pytest.skip("sync debug mode is CUDA's (tests/test_train.py counts host reads on the CPU)")
    from mma.config.model import PGDTrainSpec
    from mma.train.loop import FiniteCheck, MetricWindow
    from mma.train.steps import PGDStep, StdStep

    model = copy.deepcopy(trained_convnet).to(device).train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    step_fn = StdStep() if method == "std" else PGDStep(PGDTrainSpec(eps=0.3, steps=5), "linf", 10**9)
    x, y = mnist_small["x_train"][:50].to(device), mnist_small["y_train"][:50].to(device)
    idx = torch.arange(50, device=device)
    window, finite = MetricWindow(), FiniteCheck(device)

    def one(step):
        loss, metrics = step_fn(model, x, y, idx, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        finite.update(step, loss, model.parameters())
        opt.step()
        window.add(metrics)

    one(0)  # first step: lazy initialisation (Adam state, cuDNN plans) may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 4):
            one(step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert window.read()["loss"] > 0
