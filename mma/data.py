"""Datasets: prepared once and verified, then kept whole on the device as uint8 tensors.

Preparation fills a temporary sibling folder, checks every file's checksum, writes a
completion marker (``prepared.json``: source, checksums, sizes) and renames the folder
into place: a dataset folder is complete and verified, or refused / rebuilt, never
partial.  Loading re-hashes the files against the marker (once per process: ~0.1 s for
MNIST), so a copy damaged after preparation is refused, never trained or evaluated on.
Under ``root``: ``MNIST/raw/`` and ``cifar-10-batches-py/`` (the layouts torchvision
reads) and ``cifar10-synthetic/`` (a learnable stand-in for CIFAR-10).
``TensorBatcher``'s batches are a pure function of (seed, step), so a run resumes
exactly at any step without saving sampler state.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mma.io import no_space_names, plain_mode, write_json

PathLike = str | os.PathLike
MNIST_SHA256: dict[str, str] = {  # of the decompressed IDX files
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
DATASETS = ("mnist", "cifar10", "cifar10-synthetic")
SPLITS = ("train", "val", "test")
FOLDERS = {"mnist": "MNIST", "cifar10": "cifar-10-batches-py", "cifar10-synthetic": "cifar10-synthetic"}
MARKER = "prepared.json"
SOURCE_HINT = "pass source=<local folder holding the files> (e.g. from MMA_DATA_SOURCE)"
SYNTHETIC_VERSION = 1  # bump when the generator's output changes: older copies are then rebuilt
SYNTHETIC_CHUNK = 2000  # synthetic images generated at once (bounds the working memory)
CROP_PAD = 4  # CIFAR-10 augmentation: reflect-pad 4, random crop back to size, random h-flip


class DataError(Exception):
    """A dataset that is missing, incomplete or corrupt; the message names the file and a fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # one line, whatever a cause said


class DataSizeError(DataError, ValueError):
    """A size setting (data.val_size) that does not fit the prepared data."""


# ---------------------------------------------------------------- preparation


def prepare_mnist(root: PathLike, source: PathLike | None = None, *, verify: bool = True) -> dict:
    """Make ``root/MNIST/raw/`` hold the four verified IDX files (torchvision.datasets.MNIST layout).

    source: a folder holding the four files, each as ``NAME.gz`` or plain ``NAME``; None
    downloads with torchvision (needs internet).  An existing complete copy is reused
    after re-hashing every file (``verify=False``: marker and sizes only, for speed).
    A bad existing copy is rebuilt from ``source``, or refused when there is none.
    Returns {"dataset": "mnist", "source": str, "files": {name: sha256}} (+ "rebuilt": why, where an
    earlier copy was replaced).
    """
    if source is None:
        fill = partial(_download, "MNIST", "MNIST/raw", into="raw")
    else:
        fill = partial(_copy_files, Path(source), MNIST_SHA256, into="raw")
    expected = {f"raw/{name}": digest for name, digest in MNIST_SHA256.items()}
    return _prepare(Path(root), "mnist", source, fill, "sha256", expected, verify=verify)


def prepare_cifar10(
    root: PathLike,
    source: PathLike | None = None,
    *,
    synthetic_train: int = 2000,
    synthetic_test: int = 500,
    seed: int = 0,
    verify: bool = True,
) -> dict:
    """Prepare CIFAR-10 under ``root``; reuse, verification and rebuilds as in ``prepare_mnist``.

    source=None: torchvision download (needs internet); a folder holding torchvision's
    ``cifar-10-batches-py`` (or that folder itself): copied, checked against
    torchvision's md5s; "synthetic": ``synthetic_cifar10`` data in ``cifar10-synthetic/``,
    regenerated when sizes or seed differ from the prepared ones.  Returns {"dataset",
    "source", "files": {name: md5 (real) or sha256 (synthetic)}} (+ "params" if synthetic).
    """
    if source == "synthetic":
        params = {"n_train": synthetic_train, "n_test": synthetic_test, "seed": seed, "version": SYNTHETIC_VERSION}
        fill = partial(_write_synthetic, params=params)
        return _prepare(Path(root), "cifar10-synthetic", source, fill, "sha256", params=params, verify=verify)
    from torchvision.datasets import CIFAR10

    meta = CIFAR10.meta
    expected = dict(CIFAR10.train_list + CIFAR10.test_list + [[meta["filename"], meta["md5"]]])
    if source is None:
        fill = partial(_download, "CIFAR10", FOLDERS["cifar10"])
    else:
        nested = Path(source) / FOLDERS["cifar10"]
        fill = partial(_copy_files, nested if nested.is_dir() else Path(source), expected)
    return _prepare(Path(root), "cifar10", source, fill, "md5", expected, verify=verify)


def _prepare(
    root: Path,
    dataset: str,
    source: PathLike | None,
    fill: Callable[[Path], list | None],
    algo: str,
    expected: dict | None = None,
    *,
    params: dict | None = None,
    verify: bool,
) -> dict:
    """Reuse ``root/FOLDERS[dataset]`` if complete and intact, else (re)build it; returns the summary.

    expected: known checksums {relative path: digest} (None: those recorded at generation).
    """
    folder, rebuilt = root / FOLDERS[dataset], {}
    if folder.exists() or folder.is_symlink():
        try:
            found = _check(folder, expected, verify)
            if found.get("params") != params:
                raise DataError(f"{folder}: prepared with {found.get('params')}, wanted {params}")
            return _summary(found)
        except DataError as e:
            if source is None:  # refused rather than silently re-downloaded
                raise DataError(f"{e}; {SOURCE_HINT} to rebuild it, or delete {folder} to download again") from None
            _refuse_foreign(folder, e)  # rebuilt below only if every file in it is one we made
            rebuilt = {"rebuilt": str(e)}  # why: the caller says so (a corrupt copy is news to the user)
    marker = {"dataset": dataset, "source": str(source or "download"), "hash": algo}
    return {**_summary(_build(folder, fill, {**marker, "params": params} if params else marker, expected)), **rebuilt}


def _ours(folder: Path) -> set[str] | None:
    """The relative paths a data-stage build put in ``folder`` (its marker's list plus the
    marker), or None if ``folder`` has no readable marker of ours."""
    try:
        marker = json.loads((folder / MARKER).read_text())
        files = set(marker["files"])
        if marker.get("dataset") not in DATASETS or not all(isinstance(f, str) for f in files):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return files | {MARKER}


def _refuse_foreign(folder: Path, why: DataError) -> None:
    """DataError unless ``folder`` is a real folder holding only files a build of ours made
    (then it may be replaced).  The data stage never deletes what it did not create."""
    if folder.is_symlink() or not folder.is_dir():
        raise DataError(
            f"{folder}: exists but is not a dataset folder the data stage made ({why}); "
            f"move it away (or point data.root elsewhere), then rerun `mma data`"
        )
    ours = _ours(folder)
    found = [p for p in sorted(folder.rglob("*")) if not p.is_dir() or p.is_symlink()]
    foreign = [p for p in found if ours is None or p.relative_to(folder).as_posix() not in ours]
    if foreign:
        shown = ", ".join(str(p.relative_to(folder)) for p in foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise DataError(
            f"{folder}: needs rebuilding ({why}) but holds {len(foreign)} file(s) the data stage "
            f"did not make ({shown}); nothing was deleted: move them out of {folder} (or point "
            f"data.root elsewhere), then rerun `mma data`"
        )


def _check(folder: Path, expected: dict | None, verify: bool) -> dict:
    """The marker of a complete, intact dataset folder, else DataError naming what is wrong.

    expected: checksums the marker must record (None: trust its list).  verify: re-hash
    every file; otherwise compare sizes only (catches truncation, not a flipped byte).
    """
    try:
        marker = json.loads((folder / MARKER).read_text())
        files, sizes, algo = marker["files"], marker["sizes"], marker["hash"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{folder}: no valid completion marker {MARKER} (interrupted?)") from None
    if expected is not None and files != expected:
        raise DataError(f"{folder / MARKER}: records other files or checksums than expected")
    for rel, digest in files.items():
        path = folder / rel
        if not path.is_file():
            raise DataError(f"{path}: missing from the prepared dataset")
        if path.stat().st_size != sizes.get(rel):
            raise DataError(f"{path}: size differs from the prepared {sizes.get(rel)} bytes (truncated?)")
        if verify and (got := _digest(path, algo)) != digest:
            raise DataError(f"{path}: {algo} {got[:16]}… differs from the prepared {digest[:16]}… (corrupted)")
    return marker


def _build(folder: Path, fill: Callable[[Path], list | None], marker: dict, expected: dict | None) -> dict:
    """Build ``folder`` atomically and return its marker.  fill(tmp) writes the files into
    the empty temporary folder and returns their relative paths when ``expected`` is None."""
    with no_space_names(folder):  # a full disk while writing the copy is data.root's, not the source's
        return _build_in(folder, fill, marker, expected)


def _build_in(folder: Path, fill: Callable[[Path], list | None], marker: dict, expected: dict | None) -> dict:
    created = not folder.parent.exists()
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.partial-*"):  # left by a killed earlier build
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        plain_mode(tmp, folder=True)
        written, files, algo = fill(tmp), {}, marker["hash"]
        for rel in expected if expected is not None else written:
            files[rel] = got = _digest(tmp / rel, algo)
            if expected is not None and got != expected[rel]:
                raise DataError(
                    f"{Path(rel).name} from {marker['source']}: {algo} of the content is "
                    f"{got[:16]}…, expected {expected[rel][:16]}…; corrupt or not the genuine "
                    "file: replace it"
                )
        marker = {**marker, "files": files, "sizes": {rel: (tmp / rel).stat().st_size for rel in files}}
        write_json(tmp / MARKER, marker)  # last: only a finished folder has one
        if folder.exists():  # an invalid earlier copy holding only our files (checked by the caller):
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
            os.replace(folder, old / folder.name)  # moved aside whole, then the new one swapped in
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)  # atomic: the dataset appears complete or not at all
        return marker
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left after a successful rename
        if created:
            with contextlib.suppress(OSError):  # only if empty: a failed first build leaves no data.root behind
                folder.parent.rmdir()


def _summary(marker: dict) -> dict:
    files = {Path(rel).name: digest for rel, digest in marker["files"].items()}
    extra = {"params": marker["params"]} if "params" in marker else {}
    return {"dataset": marker["dataset"], "source": marker["source"], "files": files, **extra}


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:  # chunked (hashlib.file_digest needs Python 3.11)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _copy_files(source: Path, names, tmp: Path, into: str = "") -> None:
    """Copy each of ``names`` from ``source`` (NAME.gz decompressed, or plain NAME) to ``tmp/into``."""
    if not source.is_dir():
        raise DataError(f"{source}: source folder not found; {SOURCE_HINT}")
    (tmp / into).mkdir(parents=True, exist_ok=True)
    for name in names:
        src = next((p for p in (source / f"{name}.gz", source / name) if p.is_file()), None)
        if src is None:
            raise DataError(f"{source}: {name} (or {name}.gz) is missing; put the genuine file there")
        with open(tmp / into / name, "wb") as fout:  # a write error (a full disk) is the copy's: raised as is
            for chunk in _read_chunks(src):
                fout.write(chunk)


def _read_chunks(src: Path):
    """``src``'s content (NAME.gz decompressed) in 1 MB chunks; DataError naming it if it cannot be read."""
    opener = gzip.open if src.suffix == ".gz" else open
    try:
        with opener(src, "rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{src}: cannot be read ({e}); replace it") from None


def _download(dataset: str, subdir: str, tmp: Path, into: str = "") -> None:
    """Download with torchvision into ``tmp/download``; move ``subdir``'s files to ``tmp/into``."""
    import torchvision.datasets

    try:
        getattr(torchvision.datasets, dataset)(tmp / "download", train=True, download=True)
    except Exception as e:  # offline, mirror down, bad archive: all mean "no dataset this way"
        raise DataError(
            f"could not download {dataset} ({type(e).__name__}: {e}); without internet, {SOURCE_HINT}"
        ) from None
    (tmp / into).mkdir(exist_ok=True)
    for path in (tmp / "download" / subdir).iterdir():
        if not path.name.endswith(".gz"):  # the archives are not needed once extracted
            os.replace(path, tmp / into / path.name)
    shutil.rmtree(tmp / "download")


# ---------------------------------------------------------------- synthetic CIFAR-10

# Spatial frequencies (cycles per 32 px) of the class templates: low, so templates are smooth.
_FREQS = np.array([(fx, fy) for fx in range(3) for fy in range(-2, 3) if (fx, fy) > (0, 0)], np.float32)


def synthetic_cifar10(n_train: int, n_test: int, seed: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """CIFAR-10-shaped data that is learnable but not trivially (a small CNN: ~60% test
    accuracy after one epoch on 2000 images, ~90% after ten; nearest class mean ~60%).

    Each class is a fixed random smooth colour template (a sum of low-frequency
    sinusoids per channel).  An image is its class template, randomly shifted (±8 px,
    circularly) and scaled, plus another class's template at up to 0.9x weight, a
    brightness offset and Gaussian pixel noise.  Classes are balanced.  Returns
    ((x_train, y_train), (x_test, y_test)): x uint8 (N, 3, 32, 32), y int64 (N,) in
    0..9, deterministic from ``seed``.  Memory (tracemalloc's peak): 3.2 kB per image (the
    result and its per-image draws) plus ~38 kB per image of one SYNTHETIC_CHUNK in flight;
    ``synthetic_bytes`` bounds it.
    """
    rng = np.random.default_rng(seed)
    k = len(_FREQS)
    amp = rng.normal(size=(10, 3, k)) / np.sqrt(k)
    phase = rng.uniform(0, 2 * np.pi, size=(10, 3, k))
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    theta = 2 * np.pi * (_FREQS[:, 0, None, None] * xx + _FREQS[:, 1, None, None] * yy) / 32
    cos, sin = np.cos(theta).reshape(k, -1), np.sin(theta).reshape(k, -1)  # (k, 1024)

    def templates(classes, weight, shift_phase):  # cos/sin coefficients (n, 3, k) of shifted templates
        ph = phase[classes] + shift_phase[:, None, :]
        w = weight[:, None, None] * amp[classes]
        return (w * np.cos(ph)).astype(np.float32), (-w * np.sin(ph)).astype(np.float32)

    splits = []
    for n in (n_train, n_test):
        y = rng.permutation(np.arange(n) % 10)
        other = (y + rng.integers(1, 10, size=n)) % 10
        # a circular shift by (dx, dy) is a phase change of each sinusoid
        shift_phase = 2 * np.pi * rng.integers(-8, 9, size=(n, 2)) @ _FREQS.T / 32
        w1, w2 = rng.uniform(0.7, 1.3, size=n), rng.uniform(0, 0.9, size=n)
        offset = rng.uniform(-0.25, 0.25, size=(n, 1, 1)).astype(np.float32)
        x = np.empty((n, 3, 32, 32), np.uint8)
        # the noise is drawn chunk by chunk: the same numbers as one draw of all, in bounded memory
        for i in range(0, n, SYNTHETIC_CHUNK):
            c = slice(i, i + SYNTHETIC_CHUNK)
            a1, b1 = templates(y[c], w1[c], shift_phase[c])
            a2, b2 = templates(other[c], w2[c], shift_phase[c])
            img = (a1 + a2) @ cos + (b1 + b2) @ sin  # (chunk, 3, 1024)
            img += offset[c]
            img += 0.4 * rng.standard_normal(img.shape, dtype=np.float32)
            x[c] = np.clip(np.round((0.5 + 0.25 * img) * 255), 0, 255).astype(np.uint8).reshape(-1, 3, 32, 32)
        splits.append((x, y.astype(np.int64)))
    return tuple(splits)


def synthetic_bytes(n_train: int, n_test: int) -> int:
    """Bytes of memory ``synthetic_cifar10`` needs (upper bound of its measured peak)."""
    return (n_train + n_test) * 3_400 + min(max(n_train, n_test), SYNTHETIC_CHUNK) * 40_000


def available_memory() -> Optional[int]:
    """Bytes this process can still allocate: Linux's MemAvailable, capped by a cgroup (container,
    batch job) limit; None where neither can be read."""
    found = []
    with contextlib.suppress(OSError, ValueError, StopIteration):
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        found.append(int(next(line for line in meminfo if line.startswith("MemAvailable:")).split()[1]) * 1024)
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    return min(found) if found else None


def _write_synthetic(tmp: Path, params: dict) -> list[str]:
    need, free = synthetic_bytes(params["n_train"], params["n_test"]), available_memory()
    if free is not None and need > free:  # refused before allocating, not a traceback or the OOM killer
        raise DataError(
            f"data.synthetic_train = {params['n_train']}, data.synthetic_test = {params['n_test']}: "
            f"generating them needs ~{need / 1e9:.1f} GB of memory, {free / 1e9:.1f} GB is available "
            "here; lower them"
        )
    splits = synthetic_cifar10(params["n_train"], params["n_test"], params["seed"])
    for part, (x, y) in zip(("train", "test"), splits, strict=True):
        np.save(tmp / f"{part}_x.npy", x, allow_pickle=False)  # .npy: loads without unpickling
        np.save(tmp / f"{part}_y.npy", y, allow_pickle=False)
    return [f"{part}_{v}.npy" for part in ("train", "test") for v in "xy"]


# ---------------------------------------------------------------- loading


def resolve_dataset(dataset: str, root: PathLike) -> str:
    """The dataset ``load_split`` reads: exactly the one named.  "cifar10" is the real set
    only: the synthetic stand-in is read only when asked for by name ("cifar10-synthetic",
    what ``mma.config.data.data_name`` gives when data.cifar10_source is "synthetic")."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if dataset == "cifar10" and not (Path(root) / FOLDERS["cifar10"] / MARKER).is_file():
        if (Path(root) / FOLDERS["cifar10-synthetic"] / MARKER).is_file():
            raise DataError(
                f"{Path(root) / FOLDERS['cifar10']}: the real CIFAR-10 is not prepared, only the synthetic "
                "stand-in (cifar10-synthetic/); set data.cifar10_source: synthetic to use the stand-in "
                "(its results are then labelled as synthetic), or prepare the real set with `mma data`"
            )
        raise DataError(f"{Path(root) / FOLDERS['cifar10']}: CIFAR-10 is not prepared; run `mma data` first")
    return dataset


def load_split(
    dataset: str, root: PathLike, split: str, *, val_size: int = 5000, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of a prepared dataset: x uint8 (N, C, H, W) in 0..255, y int64 (N,).

    dataset: "mnist" (C=1, 28x28), "cifar10" (C=3, 32x32; see ``resolve_dataset``) or
    "cifar10-synthetic".  As in the authors' code the first ``val_size`` training
    images are "val" and the rest "train"; "test" is the test set.  ``limit`` keeps
    the first ``limit`` examples of the split (smoke runs).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    x, y = _load(resolve_dataset(dataset, root), Path(root), train=split != "test")
    if split != "test":
        if not 0 <= val_size < len(x):
            raise DataSizeError(
                f"data.val_size = {val_size}: must be below the {len(x)} training images of "
                f"{dataset} (the rest are the training split); lower it"
            )
        part = slice(0, val_size) if split == "val" else slice(val_size, None)
        x, y = x[part], y[part]
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        x, y = x[:limit], y[:limit]
    return x, y


_VERIFIED: set[tuple] = set()  # dataset folders re-hashed in this process, by their files' (inode, size, mtime)


def _verified(folder: Path) -> None:
    """``_check`` of ``folder`` with every file re-hashed against the marker: once per process
    while no file of it changes (a second split of the same copy costs a few stat calls)."""
    marker = _check(folder, None, verify=False)  # refuses an unprepared, half-written or truncated copy
    key = (str(folder.resolve()),) + tuple((rel, *_stamp(folder / rel)) for rel in sorted(marker["files"]))
    if key not in _VERIFIED:
        _check(folder, None, verify=True)
        _VERIFIED.add(key)


def _stamp(path: Path) -> tuple[int, int, int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def _load(name: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    folder = root / FOLDERS[name]
    try:
        _verified(folder)
    except DataError as e:
        raise DataError(f"{e}; run `mma data` to prepare it (a damaged copy is rebuilt from its source)") from None
    if name == "cifar10-synthetic":
        part = "train" if train else "test"
        return tuple(torch.from_numpy(np.load(folder / f"{part}_{v}.npy", allow_pickle=False)) for v in "xy")
    import torchvision.datasets

    if name == "mnist":
        ds = torchvision.datasets.MNIST(root, train=train, download=False)
        return ds.data.unsqueeze(1), ds.targets
    ds = torchvision.datasets.CIFAR10(root, train=train, download=False)  # checks torchvision's md5s
    return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)


# ---------------------------------------------------------------- batching


def to_float(x: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] on ``device`` (moved as uint8: 4x less to copy)."""
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {x.dtype}")
    return x.to(device).float().div_(255)


def _generator(*key) -> torch.Generator:
    """A CPU generator seeded by a hash of ``key``: independent streams per (seed, purpose, index)."""
    seed = int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "little")
    return torch.Generator().manual_seed(seed)


class TensorBatcher:
    """A split resident on ``device`` (uint8), served as random-permutation batches.

    Epoch e uses a permutation drawn from (seed, e); the last N % batch_size examples of
    each permutation are dropped.  ``batch(step)`` is thus a pure function of (seed,
    step): resuming at any step reproduces the same batches.  augment=True applies the
    CIFAR-10 augmentation (reflect-pad 4, random crop, random horizontal flip), drawn
    from (seed, step) and vectorised over the batch.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        seed: int,
        device: str | torch.device = "cpu",
        augment: bool = False,
    ):
        if x.dtype != torch.uint8 or x.dim() != 4 or len(x) != len(y):
            raise ValueError(
                f"expected uint8 x (N, C, H, W) and y (N,), got {x.dtype} {tuple(x.shape)}, {tuple(y.shape)}"
            )
        if not 1 <= batch_size <= len(x):
            raise ValueError(f"batch_size must be in [1, {len(x)}], got {batch_size}")
        self.x, self.y, self.device = x.to(device), y.to(device), torch.device(device)
        self.batch_size, self.seed, self.augment = batch_size, int(seed), augment
        self._epoch, self._perm = -1, None

    @property
    def num_examples(self) -> int:
        """N, the size of the split (MMA's per-example ε store has one entry per example)."""
        return len(self.x)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.x) // self.batch_size

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x float32 (B, C, H, W) in [0, 1], y (B,), idx (B,) int64 positions within the split."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, i = divmod(int(step), self.steps_per_epoch)
        if epoch != self._epoch:  # cached: one permutation per epoch, not per step
            perm = torch.randperm(len(self.x), generator=_generator(self.seed, "epoch", epoch))
            self._epoch, self._perm = epoch, perm.to(self.device)
        idx = self._perm[i * self.batch_size : (i + 1) * self.batch_size]
        x = self._crop_flip(self.x[idx], int(step)) if self.augment else self.x[idx]
        return to_float(x, self.device), self.y[idx], idx

    def _crop_flip(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """Random crop of the reflect-padded images plus h-flip, as one gather (no padded copy)."""
        b, c, h, w = x.shape
        g = _generator(self.seed, "augment", step)
        offset = torch.randint(0, 2 * CROP_PAD + 1, (2, b, 1), generator=g)  # crop corner in the padded image
        flip = torch.randint(0, 2, (b, 1), generator=g, dtype=torch.bool)
        rows = _reflect(offset[0] + torch.arange(h) - CROP_PAD, h).to(self.device)  # (b, h) source rows
        cols = _reflect(offset[1] + torch.arange(w) - CROP_PAD, w)  # (b, w) source columns
        cols = torch.where(flip, cols.flip(1), cols).to(self.device)
        batch = torch.arange(b, device=self.device)[:, None, None, None]
        chan = torch.arange(c, device=self.device)[None, :, None, None]
        return x[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Map coordinates in [-pad, n + pad) into [0, n) as reflect padding does (edge not repeated)."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)
