"""mma.data: verified preparation of the real MNIST, synthetic CIFAR-10, splits and batching."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.datasets

from mma.data import (
    MARKER,
    MNIST_SHA256,
    DataError,
    TensorBatcher,
    load_split,
    prepare_cifar10,
    prepare_mnist,
    to_float,
)

# The real MNIST files (gzipped); CI clones the repository with shared/ beside it.
MNIST_SOURCE = Path(
    os.environ.get("MMA_DATA_SOURCE") or Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
)
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def source() -> Path:
    if not MNIST_SOURCE.is_dir():
        if os.environ.get("CI"):  # CI always has shared/ beside the clone: missing data is a failure there
            pytest.fail(f"real MNIST files not found at {MNIST_SOURCE}")
        pytest.skip(f"real MNIST files not found at {MNIST_SOURCE} (set MMA_DATA_SOURCE)")
    return MNIST_SOURCE


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, source) -> tuple[Path, dict]:
    """A dataset root with MNIST prepared once from the real source (read-only for tests)."""
    root = tmp_path_factory.mktemp("mnist-root")
    return root, prepare_mnist(root, source)


@pytest.fixture(scope="module")
def mnist_train(prepared) -> tuple[torch.Tensor, torch.Tensor]:
    return load_split("mnist", prepared[0], "train", val_size=0)


@pytest.fixture
def copy_root(tmp_path, prepared) -> Path:
    """A private copy of the prepared root, for tests that damage it."""
    shutil.copytree(prepared[0] / "MNIST", tmp_path / "MNIST")
    return tmp_path


def make_source(tmp_path: Path, source: Path, name: str, change) -> Path:
    """A copy of ``source`` (symlinks) with ``name`` stored decompressed as change(content); None: omitted."""
    dest = tmp_path / "source"
    dest.mkdir()
    for other in MNIST_SHA256:
        if other != name:
            (dest / f"{other}.gz").symlink_to(source / f"{other}.gz")
    content = change(gzip.decompress((source / f"{name}.gz").read_bytes()))
    if content is not None:
        (dest / name).write_bytes(content)
    return dest


def flip_byte(data: bytes, at: int = 1000) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def flip_file_byte(path: Path, at: int = 5000) -> None:
    path.write_bytes(flip_byte(path.read_bytes(), at))


def assert_nothing_left(root: Path) -> None:
    """No dataset and no temporary folder after a refused preparation."""
    assert not root.exists() or list(root.iterdir()) == []


# ---------------------------------------------------------------- real MNIST


def test_prepared_mnist_is_verified_and_reused(prepared, source):
    root, info = prepared
    assert info == {"dataset": "mnist", "source": str(source), "files": MNIST_SHA256}
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == sorted(MNIST_SHA256)
    assert sorted(p.name for p in root.iterdir()) == ["MNIST"]  # no temporary folder left
    assert (root / "MNIST" / MARKER).is_file()
    # reused without a source: verified again, provenance kept
    assert prepare_mnist(root) == info
    assert prepare_mnist(root, verify=False) == info


def test_mnist_is_the_genuine_set(prepared, mnist_train):
    x, y = mnist_train
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == TRAIN_COUNTS
    assert x.double().mean().item() / 255 == pytest.approx(0.1307, abs=1e-4)
    x_test, y_test = load_split("mnist", prepared[0], "test")
    assert x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(y_test).tolist() == TEST_COUNTS


def test_validation_is_the_first_training_images(prepared, mnist_train):
    x, y = mnist_train
    root = prepared[0]
    x_val, y_val = load_split("mnist", root, "val")
    x_tr, y_tr = load_split("mnist", root, "train")
    assert len(x_val) == 5000 and len(x_tr) == 55000
    assert torch.equal(x_val, x[:5000]) and torch.equal(y_val, y[:5000])
    assert torch.equal(x_tr, x[5000:]) and torch.equal(y_tr, y[5000:])
    x_lim, _ = load_split("mnist", root, "train", val_size=1000, limit=100)
    assert torch.equal(x_lim, x[1000:1100])
    assert load_split("mnist", root, "val", val_size=0)[0].shape == (0, 1, 28, 28)


def test_flipped_byte_in_source_is_refused(tmp_path, source):
    bad = make_source(tmp_path, source, "train-labels-idx1-ubyte", flip_byte)
    root = tmp_path / "root"
    with pytest.raises(DataError, match="train-labels-idx1-ubyte") as err:
        prepare_mnist(root, bad)
    assert "\n" not in str(err.value)
    assert_nothing_left(root)  # train-images was already copied: it must be gone too


def test_missing_or_unreadable_source_file_is_refused(tmp_path, source):
    missing = make_source(tmp_path, source, "t10k-images-idx3-ubyte", lambda data: None)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        prepare_mnist(tmp_path / "root", missing)
    truncated_gz = tmp_path / "truncated"
    shutil.copytree(missing, truncated_gz, symlinks=True)
    gz = "t10k-images-idx3-ubyte.gz"
    (truncated_gz / gz).write_bytes((source / gz).read_bytes()[:5000])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        prepare_mnist(tmp_path / "root", truncated_gz)
    with pytest.raises(DataError, match="no-such-folder"):
        prepare_mnist(tmp_path / "root", tmp_path / "no-such-folder")
    assert_nothing_left(tmp_path / "root")


def test_half_written_copy_is_refused_then_rebuilt(copy_root, source):
    raw = copy_root / "MNIST" / "raw"
    (copy_root / "MNIST" / MARKER).unlink()  # as if killed before completion
    (raw / "train-images-idx3-ubyte").write_bytes(b"\0" * 1000)
    with pytest.raises(DataError, match=MARKER):
        prepare_mnist(copy_root)  # no source: refused, not silently re-downloaded
    with pytest.raises(DataError, match=MARKER):
        load_split("mnist", copy_root, "train")
    # without a marker nothing proves the files are ours: refused with a source too, nothing deleted
    with pytest.raises(DataError, match="nothing was deleted"):
        prepare_mnist(copy_root, source)
    assert (raw / "train-images-idx3-ubyte").read_bytes() == b"\0" * 1000
    shutil.rmtree(copy_root / "MNIST")  # the user's decision
    assert prepare_mnist(copy_root, source)["files"] == MNIST_SHA256
    assert load_split("mnist", copy_root, "train", val_size=0)[0].shape == (60000, 1, 28, 28)


def test_truncated_file_is_detected_without_hashing(copy_root):
    path = copy_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        prepare_mnist(copy_root, verify=False)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_split("mnist", copy_root, "test")


def test_corruption_after_preparation_is_detected(copy_root, source):
    flip_file_byte(copy_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        prepare_mnist(copy_root)
    rebuilt = prepare_mnist(copy_root, source)  # rebuilt from the source, saying why
    assert rebuilt["files"] == MNIST_SHA256 and "t10k-images-idx3-ubyte" in rebuilt["rebuilt"]
    assert "corrupted" in rebuilt["rebuilt"]
    assert prepare_mnist(copy_root) == {k: v for k, v in rebuilt.items() if k != "rebuilt"}


def test_a_flipped_byte_of_the_same_size_is_refused_when_loading(copy_root):
    """Loading re-hashes the files (sizes alone miss this), once per process while they do not change."""
    assert load_split("mnist", copy_root, "test")[1].shape == (10000,)
    flip_file_byte(copy_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", at=8 + 3)  # one label
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*corrupted.*mma data"):
        load_split("mnist", copy_root, "test")


@pytest.mark.parametrize("dataset, prepare", [("MNIST", prepare_mnist), ("CIFAR10", prepare_cifar10)])
def test_failed_download_says_how_to_use_a_local_source(tmp_path, monkeypatch, dataset, prepare):
    def offline(self):
        raise RuntimeError("Error downloading archive:\nTried all mirrors")

    monkeypatch.setattr(getattr(torchvision.datasets, dataset), "download", offline)  # as if offline
    with pytest.raises(DataError, match="MMA_DATA_SOURCE") as err:
        prepare(tmp_path / "root")
    assert "\n" not in str(err.value)
    assert_nothing_left(tmp_path / "root")


# ---------------------------------------------------------------- CIFAR-10


def test_synthetic_cifar10_shapes_classes_and_determinism(tmp_path):
    info = prepare_cifar10(tmp_path / "a", "synthetic", synthetic_train=200, synthetic_test=50, seed=3)
    x, y = load_split("cifar10-synthetic", tmp_path / "a", "train", val_size=20)
    assert x.shape == (180, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    full = load_split("cifar10-synthetic", tmp_path / "a", "train", val_size=0)[1]
    assert torch.bincount(full).tolist() == [20] * 10  # balanced, all classes present
    x_test, y_test = load_split("cifar10-synthetic", tmp_path / "a", "test")
    assert x_test.shape == (50, 3, 32, 32) and set(y_test.tolist()) == set(range(10))
    assert x.float().std() > 20  # not blank images
    same = prepare_cifar10(tmp_path / "b", "synthetic", synthetic_train=200, synthetic_test=50, seed=3)
    other = prepare_cifar10(tmp_path / "c", "synthetic", synthetic_train=200, synthetic_test=50, seed=4)
    assert same == info and other["files"] != info["files"]
    assert torch.equal(load_split("cifar10-synthetic", tmp_path / "b", "train", val_size=20)[0], x)


def test_synthetic_cifar10_is_learnable_but_not_trivial(tmp_path):
    prepare_cifar10(tmp_path, "synthetic")
    x, y = load_split("cifar10-synthetic", tmp_path, "train", val_size=0)
    x_test, y_test = load_split("cifar10-synthetic", tmp_path, "test")
    means = torch.stack([x[y == c].float().mean(0) for c in range(10)]).flatten(1)
    accuracy = (torch.cdist(x_test.float().flatten(1), means).argmin(1) == y_test).float().mean()
    assert 0.3 < accuracy < 0.9  # nearest class mean: far above chance (0.1), far from perfect


def test_synthetic_cifar10_reused_or_rebuilt(tmp_path):
    info = prepare_cifar10(tmp_path, "synthetic", synthetic_train=100, synthetic_test=20)
    path = tmp_path / "cifar10-synthetic" / "train_x.npy"
    stamp = path.stat().st_mtime_ns
    assert prepare_cifar10(tmp_path, "synthetic", synthetic_train=100, synthetic_test=20) == info
    assert path.stat().st_mtime_ns == stamp  # reused, not regenerated
    flip_file_byte(path, at=path.stat().st_size - 10)
    regenerated = prepare_cifar10(tmp_path, "synthetic", synthetic_train=100, synthetic_test=20)
    assert regenerated.pop("rebuilt").endswith("(corrupted)") and regenerated == info  # the same data again
    prepare_cifar10(tmp_path, "synthetic", synthetic_train=50, synthetic_test=20)  # other size: rebuilt
    assert load_split("cifar10-synthetic", tmp_path, "train", val_size=0)[0].shape == (50, 3, 32, 32)


def test_synthetic_cifar10_is_the_same_whatever_its_chunks(monkeypatch):
    """Generated chunk by chunk (bounded memory), the data equal one draw of all images at once."""
    from mma import data

    whole = data.synthetic_cifar10(50, 13, seed=3)
    monkeypatch.setattr(data, "SYNTHETIC_CHUNK", 7)
    chunked = data.synthetic_cifar10(50, 13, seed=3)
    for a, b in zip(whole, chunked):
        assert all((u == v).all() for u, v in zip(a, b))


def test_synthetic_cifar10_memory_is_bounded_as_documented():
    """tracemalloc's peak stays under ``synthetic_bytes``, and per image beyond one chunk it is a
    few kB (a million images: ~3.5 GB, not the ~38 GB of generating them all at once)."""
    import tracemalloc

    from mma.data import SYNTHETIC_CHUNK, synthetic_bytes, synthetic_cifar10

    peaks = {}
    for n in (SYNTHETIC_CHUNK, 4 * SYNTHETIC_CHUNK):
        tracemalloc.start()
        synthetic_cifar10(n, 10, seed=0)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peaks[n] <= synthetic_bytes(n, 10), (n, peaks[n])
    per_image = (peaks[4 * SYNTHETIC_CHUNK] - peaks[SYNTHETIC_CHUNK]) / (3 * SYNTHETIC_CHUNK)
    assert 3072 < per_image < 3400, per_image  # the uint8 image itself is 3072 bytes


def test_synthetic_cifar10_too_large_for_this_machine_is_refused_before_allocating(tmp_path, monkeypatch):
    from mma import data

    monkeypatch.setattr(data, "available_memory", lambda: 2 * 10**9)
    with pytest.raises(DataError, match=r"data.synthetic_train = 1000000.*~3.5 GB of memory, 2.0 GB is available"):
        prepare_cifar10(tmp_path, "synthetic", synthetic_train=1_000_000, synthetic_test=500)
    assert_nothing_left(tmp_path)
    assert data.available_memory() is None or data.available_memory() > 0


def test_real_cifar10_source_is_checked(tmp_path):
    fake = tmp_path / "source" / "cifar-10-batches-py"
    fake.mkdir(parents=True)
    for name in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
        "batches.meta",
    ]:
        (fake / name).write_bytes(b"not cifar")
    with pytest.raises(DataError, match="data_batch_1"):
        prepare_cifar10(tmp_path / "root", tmp_path / "source")
    (fake / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch"):
        prepare_cifar10(tmp_path / "root", tmp_path / "source")
    assert_nothing_left(tmp_path / "root")
    with pytest.raises(DataError, match="CIFAR-10 is not prepared"):
        load_split("cifar10", tmp_path / "root", "train")


def test_unknown_names_and_bad_sizes_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="mnist, cifar10, cifar10-synthetic"):
        load_split("svhn", tmp_path, "train")
    with pytest.raises(ValueError, match="train, val, test"):
        load_split("mnist", tmp_path, "dev")
    prepare_cifar10(tmp_path, "synthetic", synthetic_train=100, synthetic_test=20)
    with pytest.raises(ValueError, match="val_size"):
        load_split("cifar10-synthetic", tmp_path, "val", val_size=100)


# ---------------------------------------------------------------- batching


def images(n: int = 103) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n)


def test_to_float_range_and_type():
    x, _ = images(4)
    out = to_float(x, "cpu")
    assert out.dtype == torch.float32 and torch.equal(out * 255, x.float())
    with pytest.raises(TypeError):
        to_float(out, "cpu")


def test_batches_are_a_pure_function_of_seed_and_step():
    x, y = images()
    first, second = TensorBatcher(x, y, 10, seed=1), TensorBatcher(x, y, 10, seed=1)
    second.batch(57)  # a different history must not matter
    for step in (0, 5, 12, 37):
        for a, b in zip(first.batch(step), second.batch(step), strict=True):
            assert torch.equal(a, b)
    assert not torch.equal(first.batch(0)[2], TensorBatcher(x, y, 10, seed=2).batch(0)[2])
    assert not torch.equal(first.batch(0)[2], first.batch(10)[2])  # a new permutation each epoch


def test_one_epoch_covers_each_index_once():
    x, y = images()
    batcher = TensorBatcher(x, y, 10, seed=0)
    assert batcher.steps_per_epoch == 10  # 103 // 10: the last 3 of each permutation are dropped
    seen = []
    for step in range(batcher.steps_per_epoch):
        xb, yb, idx = batcher.batch(step)
        assert xb.shape == (10, 3, 32, 32) and idx.dtype == torch.int64
        assert torch.equal(yb, y[idx]) and torch.equal(xb, to_float(x[idx], "cpu"))
        seen += idx.tolist()
    assert len(set(seen)) == 100 and set(seen) <= set(range(103))


def find_crop(original: torch.Tensor, augmented: torch.Tensor) -> tuple[int, int, bool]:
    """The (row, col, flip) with which ``augmented`` is a crop of the reflect-padded ``original``."""
    padded = F.pad(original[None].float(), (4, 4, 4, 4), mode="reflect")[0]
    for r in range(9):
        for c in range(9):
            crop = padded[:, r : r + 32, c : c + 32]
            for flip in (False, True):
                if torch.equal(crop.flip(-1) if flip else crop, augmented):
                    return r, c, flip
    raise AssertionError("augmented image is not a flipped/unflipped crop of the padded original")


def test_augmentation_is_reflect_pad_crop_and_flip_deterministic_per_step():
    x, y = images()
    batcher = TensorBatcher(x, y, 50, seed=0, augment=True)
    xb, yb, idx = batcher.batch(3)
    assert xb.shape == (50, 3, 32, 32) and xb.dtype == torch.float32
    assert 0 <= xb.min() and xb.max() <= 1
    assert not torch.equal(xb, to_float(x[idx], "cpu"))
    params = [find_crop(x[i], xb[k] * 255) for k, i in enumerate(idx.tolist())]
    assert {flip for *_, flip in params} == {False, True}
    assert len({(r, c) for r, c, _ in params}) > 10  # crops vary within a batch
    again = TensorBatcher(x, y, 50, seed=0, augment=True).batch(3)[0]
    assert torch.equal(xb, again)
    plain = TensorBatcher(x, y, 50, seed=0).batch(3)
    assert torch.equal(plain[2], idx)  # augmentation does not change which examples are drawn


def test_cifar10_is_never_silently_the_synthetic_stand_in(tmp_path):
    """Asking for "cifar10" where only the synthetic stand-in is prepared is an error naming
    the switch; the stand-in is read only by its own name."""
    prepare_cifar10(tmp_path, "synthetic", synthetic_train=50, synthetic_test=20)
    with pytest.raises(DataError, match="data.cifar10_source: synthetic"):
        load_split("cifar10", tmp_path, "test")
    assert load_split("cifar10-synthetic", tmp_path, "test")[0].shape == (20, 3, 32, 32)


def test_data_stage_never_deletes_foreign_files(tmp_path, monkeypatch, source):
    """A user's MNIST/ folder (notes, torchvision's old processed/) under data.root is
    refused, byte for byte untouched, through the real CLI; after moving the notes out the
    stage builds the dataset."""
    import yaml
    from typer.testing import CliRunner

    from mma.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MMA_DATA_SOURCE", str(source))
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "presets" / "smoke.yaml").read_text())
    params["data"].update(root="D", datasets=["mnist"])
    params["models"] = {k: m for k, m in params["models"].items() if m["dataset"] == "mnist"}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    user = tmp_path / "D" / "MNIST"
    (user / "processed").mkdir(parents=True)
    (user / "my_notes.txt").write_text("notes")
    (user / "processed" / "training.pt").write_bytes(b"old torchvision cache")
    result = CliRunner().invoke(app, ["data", "--params", "p.yaml"])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert "my_notes.txt" in line and "nothing was deleted" in line and "Traceback" not in result.output
    assert (user / "my_notes.txt").read_text() == "notes"
    assert (user / "processed" / "training.pt").read_bytes() == b"old torchvision cache"
    assert sorted(p.name for p in (tmp_path / "D").iterdir()) == ["MNIST"]  # no partial build left beside
    shutil.rmtree(user)  # the user moves their files away
    result = CliRunner().invoke(app, ["data", "--params", "p.yaml"])
    assert result.exit_code == 0, result.output
    assert (user / MARKER).is_file()


def test_rebuild_replaces_only_our_own_copy(copy_root, source):
    """A damaged copy the stage made (marker lists every file) is rebuilt; one file more in
    it (the user's) turns the rebuild into a refusal that deletes nothing."""
    flip_file_byte(copy_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte")
    (copy_root / "MNIST" / "raw" / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="mine.txt"):
        prepare_mnist(copy_root, source)
    assert (copy_root / "MNIST" / "raw" / "mine.txt").read_text() == "keep me"
    (copy_root / "MNIST" / "raw" / "mine.txt").unlink()
    assert prepare_mnist(copy_root, source)["files"] == MNIST_SHA256
    assert sorted(p.name for p in copy_root.iterdir()) == ["MNIST"]  # the old copy moved aside, then removed
