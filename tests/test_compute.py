"""The speed switches (``mma.compute``): the params section, per-device resolution,
and that each switch leaves the results as they were (bf16: within binomial noise
on a trained model; channels_last: the same model file)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from mma import compute
from mma.attacks import an_pgd, boundary_search, pgd
from mma.attacks.core import attack_precision
from mma.compute import Compute
from mma.config.compute import ComputeParams

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the params section
def test_compute_section_refuses_unknown_keys_and_values(tmp_path):
    from pathlib import Path

    from mma.config.params import ParamsError, load_params

    base = (Path(__file__).parents[1] / "presets" / "smoke.yaml").read_text()
    base = "\n".join(line for line in base.splitlines() if not line.startswith("compute:")) + "\n"
    ok = tmp_path / "ok.yaml"
    ok.write_text(base + "compute: {precision: bf16, channels_last: false}\n")
    assert load_params(ok).compute == ComputeParams(precision="bf16", channels_last=False)
    for text, key in (
        ("compute: {precision: fp16}\n", "compute.precision = 'fp16'"),
        ("compute: {cuda_graph: true}\n", "compute.cuda_graph: unknown key"),
        ("compute: {channels_last: maybe}\n", "compute.channels_last"),
        ("compute: {search: newton}\n", "compute.search"),
        ("compute: {cuda_graphs: true, search: secant}\n", "compute.search = 'secant' cannot run"),
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(base + text)
        with pytest.raises(ParamsError, match=key.replace(".", r"\.").replace("(", r"\(")) as e:
            load_params(bad)
        assert "\n" not in str(e.value)


def test_defaults_resolve_per_device():
    cpu = compute.resolve(None, "cpu")
    assert cpu.precision == ("bf16" if compute.cpu_has_bf16() else "fp32")  # measured: docs/performance.md
    assert cpu.channels_last is True and cpu.compile is False and cpu.cuda_graphs is False
    assert (cpu.search, cpu.fixed_shape) == ("secant", False)  # rows cost arithmetic on a CPU
    cuda = compute.resolve(ComputeParams(), "cuda:1")
    assert (cuda.device, cuda.precision, cuda.channels_last) == ("cuda", "fp32", False)
    assert (cuda.cuda_graphs, cuda.search, cuda.fixed_shape) == (False, "bisection", False)  # graphs: unmeasured
    explicit = compute.resolve(ComputeParams(precision="fp32", channels_last=False, cuda_graphs=True), "cpu")
    assert explicit == Compute("cpu", "fp32", False, False, False)  # CUDA graphs need CUDA
    assert explicit.search == "secant"
    graphs = compute.resolve(ComputeParams(cuda_graphs=True), "cuda")
    assert (graphs.cuda_graphs, graphs.fixed_shape, graphs.search) == (True, True, "bisection")
    assert compute.resolve(ComputeParams(search="secant"), "cuda").search == "secant"
    assert compute.resolve(ComputeParams(search="bisection"), "cpu").search == "bisection"


# the flags lines of /proc/cpuinfo on the kinds of CPU the CPU rule was measured on (docs/performance.md)
AVX2_ONLY = (
    "fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2 sha_ni xsaveopt vaes vpclmulqdq"
    " rdpid fsrm"
)  # an AMD EPYC without AVX-512 (this CPU's flags, abridged)
AVX512_NO_BF16 = AVX2_ONLY + " avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni"  # AVX-512 before BF16
AMX_BF16 = AVX512_NO_BF16 + " avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8"  # Sapphire Rapids class


@pytest.mark.parametrize(
    "flags, bf16",
    [
        (AVX2_ONLY, False),
        (AVX512_NO_BF16, False),
        (AMX_BF16, True),
        (AVX2_ONLY + " avx512_bf16", True),
        (AVX2_ONLY + " amx_bf16", True),
    ],
)
def test_the_cpu_rule_picks_bf16_only_with_bf16_hardware_and_channels_last_always(tmp_path, monkeypatch, flags, bf16):
    """auto on a CPU: bf16 only where the flags say bf16 is computed in hardware (emulated
    bf16 measured many times slower than fp32 on an AVX2-only CPU), channels_last on both
    kinds; on CUDA neither, whatever the host CPU; explicit values are kept."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    monkeypatch.setattr(compute, "CPUINFO", cpuinfo)
    assert compute.cpu_has_bf16() is bf16
    for params in (None, ComputeParams(), ComputeParams(precision="auto", channels_last="auto")):
        c = compute.resolve(params, "cpu")
        assert (c.precision, c.channels_last) == ("bf16" if bf16 else "fp32", True)
        assert compute.resolve(params, "cuda").precision == "fp32" and not compute.resolve(params, "cuda").channels_last
    kept = compute.resolve(ComputeParams(precision="bf16", channels_last=False), "cpu")
    assert (kept.precision, kept.channels_last) == ("bf16", False)


def test_the_cpu_rule_without_readable_flags_is_fp32(tmp_path, monkeypatch):
    """No /proc/cpuinfo (another OS) or no flags line: bf16 is not assumed."""
    monkeypatch.setattr(compute, "CPUINFO", tmp_path / "missing")
    assert compute.resolve(None, "cpu").precision == "fp32"
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    monkeypatch.setattr(compute, "CPUINFO", tmp_path / "noflags")
    assert compute.resolve(None, "cpu").precision == "fp32"


def test_the_graph_path_is_recorded_and_runs_the_bisection_search(tmp_path):
    """The record says which path and search ran; the fixed-shape path (implied by
    cuda_graphs) refuses the secant search, whose loop ends on a host read, in the
    params (the key named) and in the resolved switches."""
    from mma.config.params import ParamsError, load_params

    assert compute.FP32.record() == {
        "device": "cpu",
        "precision": "fp32",
        "channels_last": False,
        "compile": False,
        "cuda_graphs": False,
        "search": "secant",
        "fixed_shape": False,
    }
    assert Compute("cuda", cuda_graphs=True).record()["fixed_shape"] is True
    assert Compute("cpu", fixed_shape=True).search == "bisection"
    with pytest.raises(ValueError, match="bisection"):
        Compute("cpu", fixed_shape=True, search="secant")
    for bad in ({"cuda_graphs": True, "search": "secant"}, {"cuda_graphs": True, "compile": True}):
        with pytest.raises(ValueError, match="cuda_graphs"):
            ComputeParams(**bad)
        doc = yaml.safe_load((ROOT / "params.yaml").read_text())
        doc["compute"] = bad
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc))
        with pytest.raises(ParamsError, match="compute"):
            load_params(tmp_path / "params.yaml")
    assert compute.eager(Compute("cuda", cuda_graphs=True)) == Compute("cuda", search="bisection")


# --------------------------------------------------------------------------- results unchanged
def test_channels_last_changes_layout_not_values(trained_convnet, eval_batch):
    x = eval_batch[0][:64]
    model = copy.deepcopy(trained_convnet)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    net = compute.prepare(model, Compute(channels_last=True))
    assert net is model and model[0].weight.is_contiguous(memory_format=torch.channels_last)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        torch.testing.assert_close(net(x), trained_convnet(x), rtol=1e-4, atol=1e-5)


def binomial_2sd(p: float, n: int) -> float:
    return 2 * math.sqrt(p * (1 - p) / n)


def test_bf16_pgd_robust_accuracy_is_within_binomial_noise(trained_convnet, eval_batch):
    """PGD-20 at ε = 0.1 on the trained fixture's correctly classified test images, the
    attack's gradient steps in bf16 against fp32 (same seed, judged in fp32): the robust
    accuracies differ by at most two binomial standard deviations of the fp32 row."""
    x, y = eval_batch
    acc = {}
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(0)
        with attack_precision(dtype):
            x_adv = pgd(trained_convnet, x, y, 0.1, steps=20, loss="ce")
        with torch.no_grad():
            acc[dtype] = (trained_convnet(x_adv).argmax(1) == y).float().mean().item()
    p = acc[None]
    print(f"\nPGD-20 robust accuracy at 0.1 on {len(y)} images: fp32 {p:.3f}, bf16 {acc[torch.bfloat16]:.3f}")
    assert 0.2 < p < 0.95  # a row where noise is not trivially zero
    assert abs(acc[torch.bfloat16] - p) <= binomial_2sd(p, len(y))


def _pgd_autocast_casting_every_step(model, x, y, eps, steps, outer_autocast):
    """Linf PGD (CE, random start, 2.5·ε/steps, last iterate) written out, each gradient
    step under its own autocast, which casts the weights again at every call (what
    ``StepForward`` replaces); ``outer_autocast``: under one autocast instead, as a bf16
    training step runs its attack."""
    import contextlib

    import torch.nn.functional as F

    from mma.attacks.core import attack_mode

    alpha = 2.5 * eps / steps
    outer = torch.autocast("cpu", dtype=torch.bfloat16) if outer_autocast else contextlib.nullcontext()
    with outer, attack_mode(model):
        xa = (x + (torch.rand(x.shape) * 2 - 1) * eps).clamp_(0.0, 1.0)
        for _ in range(steps):
            xg = xa.detach().requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(xg).float()
            (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="none").sum(), xg)
            xa = (x + torch.clamp(xa + alpha * g.sign() - x, -eps, eps)).clamp_(0.0, 1.0)
    return xa


@pytest.mark.parametrize("arch", ["lenet5_madry", "wrn10_1"])
@pytest.mark.parametrize("where", ["attack_precision", "training_autocast"])
def test_weights_cast_once_per_attack_give_bitwise_the_same_attack(arch, where):
    """A bf16 attack casts the conv / linear weights once (``StepForward``), not at every
    step: the iterates are bitwise those of autocast casting them at every step, with
    channels_last, for LeNet5-Madry and a batch-norm WideResNet, under the evaluation's
    ``attack_precision`` and under a training step's autocast."""
    from mma.attacks.core import StepForward
    from mma.models import build_model

    torch.manual_seed(0)
    model = compute.prepare(build_model(arch), Compute(channels_last=True)).eval()
    shape = (12, 1, 28, 28) if arch == "lenet5_madry" else (12, 3, 32, 32)  # MNIST, CIFAR10
    x, y = torch.rand(shape), torch.randint(0, 10, (12,))
    torch.manual_seed(1)
    ours_ctx = (
        attack_precision(torch.bfloat16) if where == "attack_precision" else torch.autocast("cpu", dtype=torch.bfloat16)
    )
    with ours_ctx:
        ours = pgd(model, x, y, 0.1, steps=5, loss="ce", select="loss")
        weights = StepForward(model, x.device).weights
    torch.manual_seed(1)
    reference = _pgd_autocast_casting_every_step(model, x, y, 0.1, 5, where == "training_autocast")
    assert weights and all(w.dtype == torch.bfloat16 for w in weights.values())
    assert not any(".bn" in k or k.startswith("bn") for k in weights), sorted(weights)  # batch norm keeps fp32
    assert torch.equal(ours, reference)
    assert StepForward(model, x.device).weights is None  # fp32 steps: nothing cast


def test_bf16_an_pgd_mean_length_within_noise(trained_convnet, eval_batch):
    """AN-PGD-10 (the MMA attack) with bf16 gradient steps: the direction PGD finds
    changes, the fp32 search along it does not; the mean found length differs from
    fp32's by at most the search resolution plus two standard errors of the per-example
    differences."""
    x, y = eval_batch
    found = {}
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(0)
        with attack_precision(dtype):
            _, found[dtype] = an_pgd(trained_convnet, x, y, 0.1, eps_max=0.5, steps=10)
    diff = found[torch.bfloat16] - found[None]
    resolution = 0.5 / 2**10
    se = diff.std().item() / math.sqrt(len(diff))
    print(
        f"\nAN-PGD mean length fp32 {found[None].mean():.4f}, bf16 {found[torch.bfloat16].mean():.4f}, "
        f"median |diff| {diff.abs().median():.4f}"
    )
    assert abs(diff.mean().item()) <= resolution + 2 * se


class _RecordsAutocast(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        self.seen.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
        return self.model(x)


def test_autoattack_takes_its_gradient_steps_in_the_step_precision_and_judges_in_fp32(trained_convnet, eval_batch):
    """Under attack_precision(bf16) every forward AutoAttack takes a gradient through runs
    under autocast and returns fp32 logits; every no-grad forward (its checks, our
    judgement) runs without autocast; with no step precision nothing is autocast."""
    from mma.config.evaluation import AutoAttackParams
    from mma.evaluation.autoattack import GradientStepsInStepPrecision, autoattack_robust

    x, y = eval_batch[0][:40], eval_batch[1][:40]
    params = AutoAttackParams(version="custom", attacks=["apgd-ce"], n_iter=5, batch_size=40)
    for dtype in (torch.bfloat16, None):
        spy = _RecordsAutocast(trained_convnet)
        with attack_precision(dtype):
            autoattack_robust(
                spy, x, y, torch.ones(40, dtype=torch.bool), params, eps=0.1, norm="linf", seed=0, device="cpu"
            )
        grad_steps = [autocast for grad, autocast in spy.seen if grad]
        checks = [autocast for grad, autocast in spy.seen if not grad]
        assert len(grad_steps) >= 5 and len(checks) >= 2
        assert all(grad_steps) if dtype else not any(grad_steps)
        assert not any(checks)
    with attack_precision(torch.bfloat16):
        assert GradientStepsInStepPrecision(trained_convnet)(x[:2].requires_grad_()).dtype == torch.float32


def test_bf16_autoattack_robust_accuracy_is_within_binomial_noise(trained_convnet, eval_batch):
    """APGD-CE (20 iterations) at ε = 0.1 with its gradient steps in bf16 against fp32,
    judged in fp32: robust accuracies within two binomial standard deviations."""
    from mma.config.evaluation import AutoAttackParams
    from mma.evaluation.autoattack import autoattack_robust

    x, y = eval_batch
    params = AutoAttackParams(version="custom", attacks=["apgd-ce"], n_iter=20, batch_size=500)
    acc = {}
    for dtype in (None, torch.bfloat16):
        with attack_precision(dtype):
            s, _ = autoattack_robust(
                trained_convnet,
                x,
                y,
                torch.ones(len(y), dtype=torch.bool),
                params,
                eps=0.1,
                norm="linf",
                seed=0,
                device="cpu",
            )
        acc[dtype] = (s == 1).float().mean().item()
    p = acc[None]
    print(f"\nAPGD-CE-20 robust accuracy at 0.1 on {len(y)} images: fp32 {p:.3f}, bf16 {acc[torch.bfloat16]:.3f}")
    assert 0.2 < p < 0.95
    assert abs(acc[torch.bfloat16] - p) <= binomial_2sd(p, len(y))


def test_the_boundary_search_ignores_autocast(trained_convnet, eval_batch):
    """The search's sign decisions are fp32 under a caller's bf16 autocast."""
    x, y = eval_batch[0][:100], eval_batch[1][:100]
    u = torch.randn_like(x).sign()
    args = (trained_convnet, x, y, u, torch.full((100,), 0.1), torch.full((100,), 0.5))
    plain = boundary_search(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = boundary_search(*args)
    assert torch.equal(plain, under)


def test_training_with_switches_records_them_and_saves_plain_weights(mnist_small, tmp_path):
    """bf16 + channels_last training on a conv net: finite losses, the switches in the
    model file, weights saved contiguous (they load into a plain model)."""
    from conftest import small_convnet

    from mma.io import load_tensors
    from mma.train import ModelSpec, train

    class Batcher:
        num_examples = 500

        def batch(self, step):
            idx = torch.arange(step * 50, step * 50 + 50) % 500
            return mnist_small["x_train"][idx], mnist_small["y_train"][idx], idx

    spec = ModelSpec(
        name="switches",
        dataset="mnist",
        arch="lenet5_madry",
        norm="linf",
        method="pgd",
        pgd={"eps": 0.1, "steps": 3},
        train_steps=6,
        eval_every=6,
        checkpoint_every=6,
        log_every=3,
    )
    logged = []
    torch.manual_seed(0)
    switches = Compute("cpu", precision="bf16", channels_last=True)
    train(
        spec,
        Batcher(),
        (mnist_small["x_eval"][:50], mnist_small["y_eval"][:50]),
        model_path=tmp_path / "m.pt",
        resume_path=tmp_path / "r.pt",
        model=small_convnet(),
        show_progress=False,
        compute=switches,
        log=lambda m, s: logged.append(m),
    )
    assert all(math.isfinite(m["loss"]) for m in logged if "loss" in m)
    record = load_tensors(tmp_path / "m.pt")
    assert record["compute"] == switches.record()
    assert all(v.is_contiguous() for v in record["state_dict"].values())
    plain = small_convnet()
    plain.load_state_dict(record["state_dict"])
    assert isinstance(plain, nn.Module)
