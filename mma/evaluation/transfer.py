"""Transfer sets: adversarial test sets made on a source model, stored as 8-bit images.

The attacker has only the source, so PGD's restarts are chosen on the source
(``pgd(..., select="loss")``: per example the restart with the highest source loss).
Each set is stored as valid 8-bit images: every pixel is rounded *toward the clean
pixel* (``quantize_toward``), so |q − c| ≤ |x_adv·255 − c| per pixel and the
perturbation stays inside the ε-ball for Linf and L2 alike.  The uint8 images are
zlib-compressed into a uint8 tensor, so the file loads with ``weights_only=True``.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import torch
from torch import Tensor, nn

from mma.attacks import attack_kind
from mma.attacks.core import keep_higher, seeded
from mma.io import BadFileError, load_tensors, save_tensors
from mma.progress import progress

from ..config.evaluation import AttackSetting
from .finite import finite_logits
from .records import parse_key
from .results import eps_key
from .whitebox import restart_loss, seed_for

FORMAT = "mma-transfer-set/1"


def set_name(setting: str, eps: float) -> str:
    """File stem of one set, e.g. 'pgd100x50_eps0.3'."""
    return f"{setting}_eps{eps_key(eps)}"


def quantize_toward(x_adv: Tensor, clean: Tensor, eps: float, norm: str) -> Tensor:
    """8-bit images (uint8, same shape) from x_adv in [0, 1], each pixel rounded toward
    the clean uint8 pixel: the perturbation only shrinks, so it stays in the ε-ball.

    Computed in float64; a 1e-6 tolerance keeps a pixel that float noise put just
    below an integer level (d = 2.9999999 → 3) and is then clipped back to the ball."""
    c = clean.to(torch.float64)
    d = x_adv.detach().to(torch.float64) * 255.0 - c
    q = torch.sign(d) * torch.floor(d.abs() + 1e-6)
    if norm == "linf":
        bound = float(torch.floor(torch.tensor(255.0 * eps, dtype=torch.float64) + 1e-6))
        q = q.clamp(-bound, bound)
    else:  # per example: fall back to plain truncation if the tolerance pushed it out
        over = q.flatten(1).norm(dim=1) > 255.0 * eps
        if over.any():
            q[over] = torch.trunc(d[over])
    return (c + q).clamp(0, 255).round().to(torch.uint8)


def family(setting: AttackSetting) -> tuple:
    """What a setting is apart from its restarts: settings of one family are made together,
    the ×R set from the first R restarts of one run (``build_sets``)."""
    return (setting.attack, setting.steps, setting.loss, setting.step_size_factor, setting.random_init, setting.l2_pgd)


def make_adversarial(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    setting: AttackSetting,
    *,
    norm: str,
    loss: str,
    seed: int,
    keep: tuple[int, ...],
) -> list[Tensor]:
    """x_adv (float, in [0,1]) of one batch, restarts chosen on ``model`` by loss: one tensor
    per restart count in ``keep``, the best of the first that many
    restarts of one run — restart r draws its start from ``seed_for(seed, r)`` whatever the
    count, so the ×1 set of a family is the ×R set's first restart.  With loss "mixed" each
    restart's loss follows ``restart_loss`` and the restart with the highest cross-entropy wins."""
    loss = setting.loss or loss
    kind = attack_kind(setting.attack)
    if kind.deterministic:  # one run is every restart count's set
        x_adv = kind.run(model, x, y, eps, setting, norm=norm, loss=restart_loss(loss, 0), select="loss")
        return [x_adv for _ in keep]
    best, best_value, kept = None, None, {}
    for r in range(max(keep)):
        with seeded(seed_for(seed, r), x.device):
            x_adv = kind.run(model, x, y, eps, setting, norm=norm, loss=restart_loss(loss, r), select="loss")
        with torch.no_grad():
            value = torch.nn.functional.cross_entropy(model(x_adv), y, reduction="none")
        best, best_value = keep_higher(best, best_value, x_adv, value)
        if r + 1 in keep:
            kept[r + 1] = best.clone()  # its own copy: best may be this restart's x_adv
    return [kept[k] for k in keep]


def build_sets(
    model: nn.Module,
    x_u8: Tensor,
    y: Tensor,
    eps: float,
    settings: list[AttackSetting],
    *,
    norm: str,
    loss: str,
    seed: int,
    batch_size: int,
    device,
    description: str = "",
    source: str = "",
) -> list[Tensor]:
    """One set per setting, the settings of one ``family`` made in one run (the most restarts
    any of them has): each set as uint8 images (N, C, H, W), on the CPU.  ``source``: the
    model's name (for the error if its logits are not finite)."""
    if len({family(s) for s in settings}) != 1:
        raise ValueError(f"build_sets: settings of different families: {[s.label() for s in settings]}")
    model = finite_logits(
        model, source or "(transfer source)", None if source else "check the source model's file and retrain it"
    )
    keep = tuple(s.restarts for s in settings)
    outs = [torch.empty_like(x_u8) for _ in settings]
    n = x_u8.shape[0]
    with progress((n + batch_size - 1) // batch_size, description or f"{settings[-1].label()} ε={eps:.4g}") as advance:
        for b, i in enumerate(range(0, n, batch_size)):
            clean = x_u8[i : i + batch_size]
            xb = clean.to(device).float().div_(255)
            yb = y[i : i + batch_size].to(device)
            advs = make_adversarial(
                model, xb, yb, eps, settings[0], norm=norm, loss=loss, seed=seed_for(seed, b), keep=keep
            )
            for out, x_adv in zip(outs, advs):
                out[i : i + batch_size] = quantize_toward(x_adv.cpu(), clean, eps, norm)
            advance(1)
    model.check()
    return outs


def build_set(model: nn.Module, x_u8: Tensor, y: Tensor, eps: float, setting: AttackSetting, **kwargs) -> Tensor:
    """The set of one setting (``build_sets`` of one)."""
    return build_sets(model, x_u8, y, eps, [setting], **kwargs)[0]


def save_set(path: str | Path, x_u8: Tensor, y: Tensor, meta: dict) -> None:
    """zlib-compressed uint8 images in a weights-only tensor file."""
    raw = x_u8.contiguous().numpy().tobytes()
    packed = torch.frombuffer(bytearray(zlib.compress(raw, 6)), dtype=torch.uint8)
    save_tensors(path, {"format": FORMAT, "shape": list(x_u8.shape), "data": packed, "y": y.cpu(), **meta})


def test_hash(x_u8: Tensor, y: Tensor) -> str:
    """sha256 of the clean test images and labels a set was made on (its test-set identity)."""
    import hashlib

    h = hashlib.sha256()
    h.update(str((tuple(x_u8.shape), tuple(y.shape))).encode())
    h.update(x_u8.contiguous().numpy().tobytes())
    h.update(y.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def load_set(path: str | Path, *, remedy: str = "rerun `mma transfer SOURCE`") -> tuple[Tensor, dict]:
    """(uint8 images (N, C, H, W), metadata) of a set written by ``save_set``; BadFileError
    naming the file and ``remedy`` if it is damaged or not a set."""
    obj = load_tensors(path, remedy=remedy)
    try:
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
            raise BadFileError(f"{path}: not a transfer set ({found!r}); {remedy}")
        shape = [int(v) for v in obj["shape"]]
        raw = zlib.decompress(obj["data"].numpy().tobytes())
        if len(shape) != 4 or len(raw) != math.prod(shape):
            raise BadFileError(
                f"{path}: holds {len(raw)} bytes of images, its shape {shape} needs {math.prod(shape)}; {remedy}"
            )
        x = torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(shape)
    except BadFileError:
        raise
    except Exception as e:  # noqa: BLE001 - zlib.error, KeyError, ...: a damaged set either way
        raise BadFileError(f"{path}: damaged transfer set ({type(e).__name__}: {str(e)[:120]}); {remedy}") from None
    meta = {k: v for k, v in obj.items() if k not in ("data", "format")}
    return x, meta


def check_set(
    path, x: Tensor, meta: dict, clean_u8: Tensor, y: Tensor, *, record: str, norm: str, test_sha256: str, remedy: str
) -> None:
    """BadFileError unless set ``x`` is what its manifest entry says: the record, the test
    images it was made on (hash, labels, shape, dtype) and every image inside the ε-ball of
    its clean image (ε from the record, ``norm`` from the source model)."""
    if meta.get("record") != record:
        raise BadFileError(f"{path}: holds set {meta.get('record')!r}, its manifest says {record!r}; {remedy}")
    if meta.get("test_sha256") != test_sha256:
        raise BadFileError(f"{path}: made on other test images than its manifest says; {remedy}")
    if x.dtype != torch.uint8 or tuple(x.shape) != tuple(clean_u8.shape):
        raise BadFileError(
            f"{path}: images {x.dtype} {tuple(x.shape)}, the test images are {clean_u8.dtype} "
            f"{tuple(clean_u8.shape)}; {remedy}"
        )
    labels = meta.get("y")
    if not isinstance(labels, Tensor) or not torch.equal(labels.to(torch.int64).cpu(), y.to(torch.int64).cpu()):
        raise BadFileError(f"{path}: its labels are not the test labels; {remedy}")
    eps = parse_key(record).eps
    d = x.to(torch.float64) - clean_u8.to(torch.float64)
    if norm == "linf":
        size, bound = d.abs().flatten(1).amax(1), math.floor(255.0 * eps + 1e-6)
    else:
        size, bound = d.flatten(1).norm(dim=1), 255.0 * eps * (1 + 1e-9) + 1e-6
    if (size > bound).any():
        i = int((size > bound).nonzero()[0])
        raise BadFileError(
            f"{path}: image {i} lies outside its ε-ball ({norm} distance {float(size[i]) / 255:.4g} "
            f"> ε = {eps:g}; {int((size > bound).sum())} of {len(x)} images); {remedy}"
        )
