"""The fault table: every expected failure a user can meet — bad params, damaged, copied or
mismatched files between stages, the user's own files among the outputs, links where lock
files belong, busy or stuck locks, an unusable or unreachable store, a full disk — through
the real CLI (typer's CliRunner, in-process) ends in ONE line naming the file or key and
what to do, exit code 2, no traceback, the user's files as they were and nothing written
outside the project; a hang or a slow failure ends within its bound.  Beside the table:
outputs byte-identical when their content is, and made with the umask's mode.

One small real project is built once per module through the CLI (MNIST subset, an STD
and a PGD LeNet trained for a few steps, their transfer sets, evaluations and the report,
with the costly checks switched off); each fault runs in a copy of it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import http.server
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from conftest import mnist_source
from typer.testing import CliRunner

from mma.cli import app

ROOT = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((ROOT / "presets" / "smoke.yaml").read_text())
STD, PGD = "mnist-linf-std", "mnist-linf-pgd-0p3"
ROLE = {STD: "STD", PGD: "PGD"}  # their Table-1 roles: transfer sets live under results/transfer/ROLE/seedS


def project_params(data_root: Path) -> dict:
    """The smoke profile cut to MNIST Linf STD + PGD, costly evaluation parts off."""
    p = copy.deepcopy(SMOKE)
    p["experiment"] = "faults"
    p["data"].update(root=str(data_root), datasets=["mnist"])
    p["models"] = {n: m for n, m in p["models"].items() if n in (STD, PGD)}
    for m in p["models"].values():
        m.update(train_steps=10, eval_every=10, checkpoint_every=5, train_limit=600, val_limit=50)
    p["table1"] = {
        "eps": [0.3],
        "sources": {
            "PGD": {"model": PGD, "attacks": ["fgsm", "pgd5x1"]},
            "STD": {"model": STD, "attacks": ["fgsm", "pgd5x1"]},
        },
        "columns": {PGD: "PGD", STD: "STD"},
    }
    ev = p["evaluate"]
    ev["threat_models"] = [t for t in ev["threat_models"] if (t["dataset"], t["norm"]) == ("mnist", "linf")]
    ev["threat_models"][0]["curve_eps"] = [0.1, 0.3]
    ev["autoattack"] = {"enabled": False}
    ev["margins"] = {"enabled": False}
    ev["checks"] = {"enabled": False}
    ev.update(test_limit=32, batch_size=32)
    return p


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def one_line_exit_2(result, *expected: str) -> str:
    """The result is exit 2 with one error line (no traceback) holding every ``expected``."""
    out = result.output + result.stderr
    assert "Traceback" not in out, out
    assert result.exit_code == 2, out
    errors = [line for line in result.stderr.splitlines() if line.startswith("mma: error:")]
    assert len(errors) == 1, result.stderr
    for text in expected:
        assert text in errors[0], f"{text!r} not in: {errors[0]}"
    if os.environ.get("SHOW_FAULTS"):
        print("\nFAULT:", errors[0])
    return errors[0]


def tree(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (lock files aside)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".locks" not in p.parts
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A project folder with params.yaml and every stage's outputs, made through the CLI."""
    src = mnist_source()
    if not (src / "t10k-images-idx3-ubyte.gz").is_file():
        if os.environ.get("CI"):  # CI always has shared/ beside the clone: missing data is a failure there
            pytest.fail(f"MNIST not found at {src}")
        pytest.skip(f"MNIST not found at {src}")
    base = tmp_path_factory.mktemp("project")
    (base / "data").mkdir()
    (base / "params.yaml").write_text(yaml.safe_dump(project_params(base / "data"), sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base}/mlflow.db")
        mp.setenv("MMA_DATA_SOURCE", str(src))
        for args in (
            ["data"],
            ["train", STD],
            ["train", PGD],
            ["transfer", STD],
            ["transfer", PGD],
            ["evaluate", STD],
            ["evaluate", PGD],
            ["report"],
        ):
            result = invoke(*args, "--params", "params.yaml")
            assert result.exit_code == 0, (args, result.output)
    return base


@pytest.fixture()
def project(built, tmp_path, monkeypatch) -> Path:
    """A private copy of the built project (results/ copied, data/ shared read-only), as cwd.
    Beside it ``outside``: $HOME and a file of the user's (``victim``), which no fault may touch."""
    folder = tmp_path / "project"
    shutil.copytree(built / "results", folder / "results", symlinks=True)
    shutil.copy(built / "params.yaml", folder / "params.yaml")
    (tmp_path / "outside" / "home").mkdir(parents=True)
    (tmp_path / "outside" / "victim").write_text("the user's file\n")
    monkeypatch.setenv("HOME", str(tmp_path / "outside" / "home"))
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{built}/mlflow.db")  # one store: created once
    return folder


def outside(project: Path) -> Path:
    return project.parent / "outside"


def write_params(folder: Path, change) -> str:
    doc = yaml.safe_load((folder / "params.yaml").read_text())
    change(doc)
    (folder / "bad.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return "bad.yaml"


def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def resave(path: Path, change) -> None:
    """Load a tensor file, change its dict, save it again (a well-formed file with other content)."""
    obj = torch.load(path, weights_only=True)
    change(obj)
    torch.save(obj, path)


# --------------------------------------------------------------------------- params faults
def _lr_steps(doc, steps):
    doc["models"]["mnist-linf-std"]["optimizer"]["lr_steps"] = steps


def _rename_attack(doc, name):
    """Attack setting fgsm renamed ``name`` (and so named in every Table-1 source)."""
    doc["attacks"][name] = doc["attacks"].pop("fgsm")
    for source in doc["table1"]["sources"].values():
        source["attacks"] = [name if a == "fgsm" else a for a in source["attacks"]]


PARAMS_FAULTS = [
    # (id, change to the doc, substrings of the one line)
    ("nan in table1.eps", lambda d: d["table1"].update(eps=[float("nan")]), ["table1.eps[0]", "finite"]),
    ("negative table1.eps", lambda d: d["table1"].update(eps=[-0.3]), ["table1.eps[0]", "-0.3", "greater than 0"]),
    ("eps out of order", lambda d: d["table1"].update(eps=[0.4, 0.3]), ["table1", "increase"]),
    (
        "inf in curve_eps",
        lambda d: d["evaluate"]["threat_models"][0].update(curve_eps=[0.1, float("inf")]),
        ["evaluate.threat_models[0].curve_eps[1]", "finite"],
    ),
    (
        "negative curve_eps",
        lambda d: d["evaluate"]["threat_models"][0].update(curve_eps=[-0.2, 0.1]),
        ["curve_eps[0]", "-0.2"],
    ),
    ("negative lr in lr_steps", lambda d: _lr_steps(d, [[10, -1.0]]), ["optimizer.lr_steps[0][1]", "-1.0"]),
    ("lr_steps not increasing", lambda d: _lr_steps(d, [[10, 0.1], [5, 0.01]]), ["lr_steps", "increase"]),
    (
        "inf pgd eps",
        lambda d: d["models"]["mnist-linf-pgd-0p3"]["pgd"].update(eps=float("inf")),
        ["models.mnist-linf-pgd-0p3.pgd.eps", "finite"],
    ),
    (
        "inf lr",
        lambda d: d["models"]["mnist-linf-std"]["optimizer"].update(lr=float("inf")),
        ["optimizer.lr", "finite"],
    ),
    ("true as eps", lambda d: d["models"]["mnist-linf-pgd-0p3"]["pgd"].update(eps=True), ["pgd.eps = True", "number"]),
    (
        "true as train_steps",
        lambda d: d["models"]["mnist-linf-std"].update(train_steps=True),
        ["train_steps = True", "integer"],
    ),
    ("float as steps", lambda d: d["models"]["mnist-linf-pgd-0p3"]["pgd"].update(steps=3.5), ["pgd.steps = 3.5"]),
    ("string as bool", lambda d: d["models"]["mnist-linf-std"].update(augment="yes"), ["augment", "'yes'"]),
    (
        "attack name holding a home path",
        lambda d: _rename_attack(d, "~/trav/evil"),
        ["attacks.~/trav/evil", "not a name"],
    ),
    ("attack name climbing out", lambda d: _rename_attack(d, "../x"), ["attacks.../x", "not a name"]),
    (
        "attack name that is an absolute path",
        lambda d: _rename_attack(d, "/tmp/evil"),
        ["attacks./tmp/evil", "not a name"],
    ),
    (
        "attack name 'p+x' beside 'p_x'",
        lambda d: (_rename_attack(d, "p+x"), d["attacks"].update(p_x={"steps": 2})),
        ["attacks.p+x", "letters, digits, '_' and '-' only"],
    ),
    (
        "seed beyond numpy's and torch's range",
        lambda d: d.update(seeds=[2**64]),
        ["seeds[0] = 18446744073709551616", "4294967295"],
    ),
    ("evaluation seed beyond numpy's range", lambda d: d.update(seed=2**32), ["seed = 4294967296", "4294967295"]),
    (
        "string as significance",
        lambda d: d["report"].update(significance="0.05"),
        ["report.significance = '0.05'", "valid number"],
    ),
]


@pytest.mark.parametrize("change, expected", [pytest.param(c, e, id=i) for i, c, e in PARAMS_FAULTS])
def test_params_value_faults(tmp_path, monkeypatch, change, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(project_params(tmp_path / "data"), sort_keys=False))
    bad = write_params(tmp_path, change)
    before = sorted(os.listdir(tmp_path))
    one_line_exit_2(invoke("train", STD, "--params", bad), *expected)
    assert sorted(os.listdir(tmp_path)) == before  # nothing created


BOMB = (
    "\n".join(
        [
            f"{k}: &{k} [" + ", ".join([f"*{prev}"] * 9 if prev else ['"lol"'] * 9) + "]"
            for prev, k in zip([None, "a", "b", "c", "d", "e", "f", "g", "h"], "abcdefghi")
        ]
    )
    + "\nexperiment: *i\n"
)

RAW_FAULTS = [
    ("duplicate key", None, ["duplicate key 'train_steps'", "line"]),
    ("alias bomb", BOMB.encode(), ["expands to more than"]),
    ("self-referencing alias", b"a: &a [*a]\n", ["alias"]),
    ("not UTF-8", "experiment: caf\u00e9\n".encode("latin-1"), ["not UTF-8", "0xe9"]),
    ("too large", b"# " + b"x" * (2 << 20) + b"\n", ["larger than"]),
]


@pytest.mark.parametrize("content, expected", [pytest.param(c, e, id=i) for i, c, e in RAW_FAULTS])
def test_params_file_faults(tmp_path, monkeypatch, content, expected):
    monkeypatch.chdir(tmp_path)
    if content is None:  # a duplicate key inside a model: last-wins would silently train 5 steps
        text = yaml.safe_dump(project_params(tmp_path / "data"), sort_keys=False)
        content = re.sub(r"( +)train_steps: 10\n", r"\1train_steps: 40\n\1train_steps: 5\n", text, count=1).encode()
    (tmp_path / "bad.yaml").write_bytes(content)
    one_line_exit_2(invoke("train", STD, "--params", "bad.yaml"), "bad.yaml", *expected)
    assert sorted(os.listdir(tmp_path)) == ["bad.yaml"]


def test_params_file_is_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").mkdir()
    one_line_exit_2(invoke("report", "--params", "params.yaml"), "params.yaml", "folder")


def test_bad_value_error_is_bounded(tmp_path, monkeypatch):
    """A huge value is shown shortened, not printed whole."""
    monkeypatch.chdir(tmp_path)
    doc = project_params(tmp_path / "data")
    doc["experiment"] = [list(range(1000))] * 100
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    line = one_line_exit_2(invoke("report", "--params", "bad.yaml"), "experiment")
    assert len(line) < 400


# --------------------------------------------------------------------------- files between stages
def _copy_model(p: Path):
    shutil.copy(p / "results/models" / PGD / "seed0" / "model.pt", p / "results/models" / STD / "seed0" / "model.pt")


def _other_architecture(p: Path):
    def swap(obj):
        obj["state_dict"] = {"0.weight": torch.zeros(8, 1, 4, 4), "0.bias": torch.zeros(8)}

    resave(p / "results/models" / STD / "seed0" / "model.pt", swap)


def _inf_weights(p: Path):
    def poison(obj):
        key = next(k for k, v in obj["state_dict"].items() if v.is_floating_point())
        obj["state_dict"][key][0] = float("inf")

    resave(p / "results/models" / STD / "seed0" / "model.pt", poison)


def _no_identity(p: Path):
    resave(p / "results/models" / STD / "seed0" / "model.pt", lambda obj: obj.pop("identity"))


def _other_settings(p: Path):
    def change(obj):
        obj["identity"]["spec_sha256"] = "0" * 64

    resave(p / "results/models" / STD / "seed0" / "model.pt", change)


def _set_file(p: Path, source: str = PGD) -> Path:
    return next((p / "results/transfer" / ROLE[source] / "seed0").glob("fgsm_*.pt"))


def _inverted_set(p: Path):
    def invert(obj):
        x = torch.frombuffer(bytearray(zlib.decompress(obj["data"].numpy().tobytes())), dtype=torch.uint8)
        obj["data"] = torch.frombuffer(bytearray(zlib.compress((255 - x).numpy().tobytes())), dtype=torch.uint8)

    resave(_set_file(p), invert)


def _set_of_other_record(p: Path):
    sets = sorted((p / "results/transfer" / "PGD" / "seed0").glob("*.pt"))
    shutil.copy(sets[1], sets[0])


def _set_of_other_source(p: Path):
    shutil.copy(_set_file(p, STD), _set_file(p, PGD))


def _truncate(path: Path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _user_file(folder: str):
    """The user's own notes in a stage's output folder (which the stage replaces whole)."""
    return lambda p: (p / folder / "my_notes.md").write_text("notes\n")


LOCK = f"results/.locks/evaluate-{STD}-seed0.lock"


def _lock_is(kind: str):
    """Something of the user's where evaluate's lock file belongs: a symbolic or a hard link to
    the user's file outside the project, or a plain file with other content."""

    def damage(p: Path):
        lock = p / LOCK
        lock.parent.mkdir(exist_ok=True)
        lock.unlink(missing_ok=True)
        if kind == "symlink":
            lock.symlink_to(outside(p) / "victim")
        elif kind == "hard link":
            os.link(outside(p) / "victim", lock)
        else:
            lock.write_text("my results\n")

    return damage


def _evaluated_under_other_settings(p: Path):
    """`mma evaluate PGD` run (exit 0) with another curve (a setting the evaluate stage reads,
    transfer does not): results of other settings."""

    def other_curve(d):
        d["evaluate"]["threat_models"][0]["curve_eps"] = [0.3]

    result = invoke("evaluate", PGD, "--params", write_params(p, other_curve))
    assert result.exit_code == 0, result.output


def _transferred_under_other_settings(p: Path):
    """`mma transfer --role PGD` run (exit 0) with every attack weakened: sets of other settings."""

    def weaken(d):
        for a in d["attacks"].values():
            a.update(step_size_factor=0.001, random_init=False)

    result = invoke("transfer", "--role", "PGD", "--params", write_params(p, weaken))
    assert result.exit_code == 0, result.output


def _private_data(p: Path) -> Path:
    """A private copy of the prepared data under the project (params.yaml's data.root: data)."""
    doc = yaml.safe_load((p / "params.yaml").read_text())
    shutil.copytree(doc["data"]["root"], p / "data")
    doc["data"]["root"] = "data"
    (p / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return p / "data"


def _corrupt_prepared_data(p: Path):
    flip_byte(_private_data(p) / "MNIST/raw/t10k-labels-idx1-ubyte", 8 + 3)  # the 4th test label; same size


FILE_FAULTS = [
    # (id, damage(project), command, substrings of the one line)
    (
        "empty model.pt",
        lambda p: (p / "results/models" / STD / "seed0" / "model.pt").write_bytes(b""),
        ["evaluate", STD],
        ["results/models/mnist-linf-std/seed0/model.pt", "empty", f"mma train {STD}"],
    ),
    (
        "flipped byte in model.pt",
        lambda p: flip_byte(p / "results/models" / STD / "seed0" / "model.pt", 3000),
        ["evaluate", STD],
        ["model.pt", f"mma train {STD}"],
    ),
    (
        "flipped byte late in model.pt",
        lambda p: flip_byte(
            p / "results/models" / STD / "seed0" / "model.pt",
            (p / "results/models" / STD / "seed0" / "model.pt").stat().st_size // 2,
        ),
        ["evaluate", STD],
        ["model.pt", "corrupt", f"mma train {STD}"],
    ),
    (
        "truncated model.pt",
        lambda p: _truncate(p / "results/models" / STD / "seed0" / "model.pt"),
        ["transfer", STD],
        ["model.pt", f"mma train {STD}"],
    ),
    (
        "model.pt copied from another model",
        _copy_model,
        ["evaluate", STD],
        ["model.pt", f"belongs to model '{PGD}'", f"mma train {STD}"],
    ),
    (
        "model.pt of another architecture",
        _other_architecture,
        ["evaluate", STD],
        ["model.pt", "not a model file", f"mma train {STD}"],
    ),
    ("model.pt with inf weights", _inf_weights, ["evaluate", STD], ["model.pt", "non-finite", f"mma train {STD}"]),
    ("model.pt without identity", _no_identity, ["transfer", STD], ["model.pt", "identity", f"mma train {STD}"]),
    ("model.pt of other settings", _other_settings, ["evaluate", STD], ["model.pt", "other settings"]),
    (
        "truncated transfer set",
        lambda p: _truncate(_set_file(p), 0.7),
        ["evaluate", STD],
        ["results/transfer/PGD/seed0/fgsm", "mma transfer --role PGD --seed 0"],
    ),
    (
        "flipped byte in transfer set",
        lambda p: flip_byte(_set_file(p), _set_file(p).stat().st_size // 2),
        ["evaluate", STD],
        ["fgsm", "mma transfer --role PGD --seed 0"],
    ),
    (
        "inverted images in transfer set",
        _inverted_set,
        ["evaluate", STD],
        ["fgsm", "outside its ε-ball", "mma transfer --role PGD --seed 0"],
    ),
    (
        "transfer set under another row's name",
        _set_of_other_record,
        ["evaluate", STD],
        ["manifest says", "mma transfer --role PGD --seed 0"],
    ),
    (
        "transfer set of another source",
        _set_of_other_source,
        ["evaluate", STD],
        [f"belongs to model '{STD}'", "mma transfer --role PGD --seed 0"],
    ),
    (
        "invalid manifest.json",
        lambda p: (p / "results/transfer" / "PGD" / "seed0" / "manifest.json").write_text('{"sets": [tru'),
        ["evaluate", STD],
        ["manifest.json", "not valid JSON", "mma transfer --role PGD --seed 0"],
    ),
    (
        "manifest.json missing",
        lambda p: (p / "results/transfer" / "PGD" / "seed0" / "manifest.json").unlink(),
        ["evaluate", STD],
        ["manifest.json", "missing", "mma transfer --role PGD --seed 0"],
    ),
    (
        "per_example.pt copied from another model",
        lambda p: shutil.copy(
            p / "results/eval" / PGD / "seed0" / "per_example.pt", p / "results/eval" / STD / "seed0" / "per_example.pt"
        ),
        ["report"],
        ["results/eval/mnist-linf-std/seed0/per_example.pt", f"belongs to model '{PGD}'", f"mma evaluate {STD}"],
    ),
    (
        "truncated per_example.pt",
        lambda p: _truncate(p / "results/eval" / STD / "seed0" / "per_example.pt"),
        ["report"],
        ["per_example.pt", f"mma evaluate {STD}"],
    ),
    (
        "per_example.pt missing",
        lambda p: (p / "results/eval" / STD / "seed0" / "per_example.pt").unlink(),
        ["report"],
        ["per_example.pt", "missing", f"mma evaluate {STD}"],
    ),
    (
        "output folder is a file",
        lambda p: (shutil.rmtree(p / "results/report"), (p / "results/report").write_text("x")),
        ["report"],
        ["results/report", "not a folder"],
    ),
    (
        "user's file in results/report",
        _user_file("results/report"),
        ["report"],
        ["results/report", "my_notes.md", "did not make", "nothing was deleted"],
    ),
    (
        "user's file in an evaluation folder",
        _user_file(f"results/eval/{STD}/seed0"),
        ["evaluate", STD],
        [f"results/eval/{STD}/seed0", "my_notes.md", "nothing was deleted"],
    ),
    (
        "user's file in a transfer folder",
        _user_file("results/transfer/PGD/seed0"),
        ["transfer", PGD],
        ["results/transfer/PGD/seed0", "my_notes.md", "nothing was deleted"],
    ),
    ("lock file is a symbolic link", _lock_is("symlink"), ["evaluate", STD], [LOCK, "symbolic link"]),
    ("lock file is a hard link", _lock_is("hard link"), ["evaluate", STD], [LOCK, "2 links"]),
    ("lock file holds other content", _lock_is("other"), ["evaluate", STD], [LOCK, "other than a lock record"]),
    (
        "results of other evaluation settings",
        _evaluated_under_other_settings,
        ["report"],
        [f"results/eval/{PGD}/seed0/per_example.pt", "other evaluate settings", f"mma evaluate {PGD} --seed 0"],
    ),
    (
        "transfer sets of other attack settings",
        _transferred_under_other_settings,
        ["evaluate", STD],
        [
            "results/transfer/PGD/seed0/manifest.json",
            "other transfer settings (attacks,",
            "mma transfer --role PGD --seed 0",
        ],
    ),
    (
        "prepared data corrupted after preparation",
        _corrupt_prepared_data,
        ["evaluate", STD],
        ["data/MNIST/raw/t10k-labels-idx1-ubyte", "corrupted", "mma data"],
    ),
]


@pytest.mark.parametrize("damage, command, expected", [pytest.param(d, c, e, id=i) for i, d, c, e in FILE_FAULTS])
def test_file_faults(project, damage, command, expected):
    damage(project)
    before, beside = tree(project), tree(outside(project))
    one_line_exit_2(invoke(*command, "--params", "params.yaml"), *expected)
    assert tree(project) == before  # nothing written, nothing deleted
    assert tree(outside(project)) == beside  # nothing outside the project


# --------------------------------------------------------------------------- data, store, locks
def test_batch_size_larger_than_the_data(project):
    bad = write_params(project, lambda d: d["models"]["mnist-linf-std"].update(batch_size=5000))
    one_line_exit_2(invoke("train", STD, "--params", bad), "models.mnist-linf-std.batch_size = 5000", "training images")


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into read-only folders (the file-in-the-way case covers root)"
)
def test_read_only_output_folder_is_refused_before_the_work(project):
    out = project / "results/eval" / STD / "seed0"
    out.chmod(0o555)
    try:
        one_line_exit_2(
            invoke("evaluate", STD, "--params", "params.yaml"), "results/eval/mnist-linf-std", "cannot be written"
        )
    finally:
        out.chmod(0o755)


def test_val_size_larger_than_the_data(project):
    bad = write_params(project, lambda d: d["data"].update(val_size=60000))
    one_line_exit_2(invoke("train", STD, "--params", bad), "data.val_size = 60000", "60000 training images")


def test_cifar10_is_not_silently_the_synthetic_stand_in(tmp_path, monkeypatch):
    from mma.data import prepare_cifar10

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    prepare_cifar10(tmp_path / "data", "synthetic", synthetic_train=1500, synthetic_test=200)
    doc = copy.deepcopy(SMOKE)
    doc["data"].update(root="data", cifar10_source=None)  # asks for the real CIFAR-10
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    one_line_exit_2(
        invoke("train", "cifar10-linf-pgd-8", "--params", "p.yaml"),
        "cifar-10-batches-py",
        "synthetic stand-in",
        "data.cifar10_source: synthetic",
    )


def test_tracking_uri_in_a_missing_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(project_params(tmp_path / "data")))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/nonexistent/dir/mlflow.db")
    one_line_exit_2(invoke("report", "--params", "params.yaml"), "nonexistent/dir", "does not exist")
    assert not (tmp_path / "nonexistent").exists()


def test_locked_mlflow_db(project, built, monkeypatch):
    """Another program holds an exclusive lock on the store: one line, exit 2."""
    db = project / "locked.db"
    shutil.copy(built / "mlflow.db", db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    holder = sqlite3.connect(db, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        one_line_exit_2(invoke("report", "--params", "params.yaml"), "locked.db")
    finally:
        holder.rollback()
        holder.close()


def test_copied_store_would_write_into_the_original(project, built, monkeypatch):
    """`cp -a` of a checkout with mlflow.db: its experiment's artifacts point at the original."""
    (project / "copy").mkdir()
    shutil.copy(built / "mlflow.db", project / "copy" / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project}/copy/mlflow.db")
    before = tree(built / "mlartifacts") if (built / "mlartifacts").exists() else {}
    one_line_exit_2(
        invoke("report", "--params", "params.yaml"), "copied from another checkout", str(built / "mlartifacts")
    )
    assert (tree(built / "mlartifacts") if (built / "mlartifacts").exists() else {}) == before


@pytest.mark.parametrize(
    "command, lock, shown",
    [
        (["train", STD], ("train", STD, 0), f"train {STD} --seed 0"),
        (["transfer", PGD], ("transfer", "PGD", 0), "transfer PGD --seed 0"),
        (["evaluate", STD], ("evaluate", STD, 0), f"evaluate {STD} --seed 0"),
        (["report"], ("report", "all"), "report"),
    ],
)
def test_second_invocation_is_refused_while_the_first_runs(project, command, lock, shown):
    from mma.stages.files import stage_lock

    before = tree(project)
    with stage_lock(*lock):  # what the first invocation holds while it works
        one_line_exit_2(
            invoke(*command, "--params", "params.yaml"), f"another `mma {shown}` is running", f"pid {os.getpid()}"
        )
    assert tree(project) == before


# --------------------------------------------------------------------------- resume checkpoints
def _resume(project: Path) -> Path:
    """A resume checkpoint of STD at step 5 of 10, as a run killed after its first checkpoint leaves."""
    from mma.config.params import load_params
    from mma.data import TensorBatcher, load_split, to_float
    from mma.stages import train as train_stage
    from mma.train import train

    params = load_params(project / "params.yaml")
    train_stage.prepare(params, STD, 0)  # the checkpoint folder of exactly these settings
    spec = params.member(STD, 0)
    x, y = load_split("mnist", params.data.root, "train", val_size=params.data.val_size, limit=spec.train_limit)
    xv, yv = load_split("mnist", params.data.root, "val", val_size=params.data.val_size, limit=spec.val_limit)
    resume = train_stage.checkpoint_dir(STD, 0) / "resume.pt"
    train(
        spec.model_copy(update={"train_steps": 5}),
        TensorBatcher(x, y, spec.batch_size, seed=spec.seed),
        (to_float(xv, "cpu"), yv),
        model_path=resume.parent / "best.pt",
        resume_path=resume,
        show_progress=False,
    )
    assert resume.is_file()
    return resume


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda r: flip_byte(r, r.stat().st_size // 2), ["resume.pt", "--restart"]),
        (lambda r: r.write_bytes(b""), ["resume.pt", "empty", "--restart"]),
        (
            lambda r: resave(r, lambda s: s["model"][next(iter(s["model"]))].fill_(float("nan"))),
            ["resume.pt", "non-finite weights", "--restart"],
        ),
    ],
    ids=["flipped byte", "empty", "nan weights"],
)
def test_corrupt_resume_checkpoint_says_what_to_do_and_restart_discards_it(project, damage, expected):
    resume = _resume(project)
    damage(resume)
    for _ in range(2):  # the same clear line on every rerun, nothing deleted
        one_line_exit_2(
            invoke("train", STD, "--params", "params.yaml"), f"mma train {STD} --seed 0 --restart", *expected
        )
        assert resume.is_file()
    result = invoke("train", STD, "--params", "params.yaml", "--restart")
    assert result.exit_code == 0, result.output
    assert not resume.parent.exists()  # finished: the working folder is gone
    from mma.config.params import load_params
    from mma.stages.files import load_checked_model

    load_checked_model(load_params("params.yaml"), STD, 0, "cpu")  # a model of this params entry


def test_divergence_before_the_first_checkpoint_names_no_checkpoint(project):
    bad = write_params(project, lambda d: d["models"]["mnist-linf-std"]["optimizer"].update(lr=1e30))
    result = invoke("train", STD, "--params", bad)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert "non-finite" in line and "no checkpoint was written yet" in line, line
    assert not (project / "results/checkpoints" / STD / "seed0" / "resume.pt").exists()


def test_report_and_transfer_outputs_are_swapped_in_whole(project, monkeypatch):
    """A report run that fails half-way (a kill) leaves the previous report as it was."""
    from mma.report import summary as summary_module

    before = tree(project / "results/report")

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(summary_module, "build_summary", killed)
    result = invoke("report", "--params", "params.yaml")
    assert result.exit_code != 0
    assert tree(project / "results/report") == before
    assert [p.name for p in (project / "results").iterdir() if p.name.startswith(".report")] == []


# --------------------------------------------------------------------------- kills
def test_kill_after_the_final_flush_logs_no_metric_twice(built, tmp_path, monkeypatch):
    """Killed right after train's final MLflow flush (before the checkpoint folder is
    removed): the rerun continues the same run and logs no step of any metric twice."""
    from mlflow.tracking import MlflowClient

    from mma.stages import train as train_stage

    shutil.copy(built / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    real_finish = train_stage.finish

    def killed(name, seed):
        raise KeyboardInterrupt  # as a kill between the final flush and the clean-up

    monkeypatch.setattr(train_stage, "finish", killed)
    result = invoke("train", STD, "--params", "params.yaml")
    assert result.exit_code == 130 and "Traceback" not in result.output, result.output
    assert (train_stage.checkpoint_dir(STD, 0) / "run.json").is_file()
    monkeypatch.setattr(train_stage, "finish", real_finish)
    result = invoke("train", STD, "--params", "params.yaml")
    assert result.exit_code == 0, result.output
    assert not train_stage.checkpoint_dir(STD, 0).exists()

    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("faults").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # one run, continued
    run_id = runs[0].info.run_id
    keys = set(runs[0].data.metrics)
    assert {"best_step", "loss", "val_clean_acc"} <= keys
    for key in keys:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)


def test_internal_bug_shows_its_traceback_and_a_hint(project, monkeypatch):
    from mma.stages import report

    def bug(params):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(report, "load_results", bug)
    result = invoke("report", "--params", "params.yaml")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "ZeroDivisionError" in result.stderr
    assert "this is a bug in mma: please report it" in result.stderr.strip().splitlines()[-1]


def test_store_locked_mid_stage_is_one_line(project, built, monkeypatch):
    """Another program locks mlflow.db while the stage works: one line, exit 2, files complete."""
    from mma.stages import report

    db = built / "mlflow.db"  # the project's store (opened by the stage before the lock is taken)
    real, holder = report.load_results, sqlite3.connect(db, timeout=0)

    def lock_then_load(params):
        holder.execute("BEGIN EXCLUSIVE")  # taken after the stage opened the store
        return real(params)

    monkeypatch.setattr(report, "load_results", lock_then_load)
    try:
        one_line_exit_2(invoke("report", "--params", "params.yaml"), str(db), "database is locked")
    finally:
        holder.rollback()
        holder.close()
    assert (project / "results/report/summary.md").is_file()


def test_killed_transfer_leaves_the_previous_sets_and_manifest(project, monkeypatch):
    """Killed after its first new set: the old sets and the old manifest stay together."""
    from mma.evaluation import transfer as transfer_module

    before = tree(project / "results/transfer" / "PGD" / "seed0")
    real, calls = transfer_module.build_sets, []

    def killed_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(transfer_module, "build_sets", killed_on_second)
    result = invoke("transfer", PGD, "--params", "params.yaml")
    assert result.exit_code == 130 and "Traceback" not in result.output, result.output
    assert tree(project / "results/transfer" / "PGD" / "seed0") == before
    assert sorted(p.name for p in (project / "results/transfer").iterdir()) == ["PGD", "STD"]
    assert [p.name for p in (project / "results/transfer" / "PGD").iterdir()] == ["seed0"]  # no temp left
    monkeypatch.setattr(transfer_module, "build_sets", real)
    assert invoke("evaluate", STD, "--params", "params.yaml").exit_code == 0  # the old sets still check out


def test_synthetic_cifar10_is_named_as_such(tmp_path):
    """Figure 3's CIFAR10 panels and the data label say "synthetic stand-in" when the params
    ask for it, and never compare it with the paper's CIFAR10 anchors."""
    from mma.config.data import data_name
    from mma.config.params import load_params
    from mma.report.figures import figure3
    from mma.stages.contract import identity

    smoke = load_params(ROOT / "presets" / "smoke.yaml")  # data.cifar10_source: synthetic
    assert data_name(smoke.data, "cifar10") == "cifar10-synthetic" and data_name(smoke.data, "mnist") == "mnist"
    assert identity(smoke, "cifar10-linf-pgd-8", 0, "train")["data"] == "cifar10-synthetic"
    panels = figure3({}, dict(smoke.models), smoke, tmp_path / "f.png", dpi=50)
    assert "(c) CIFAR10 (synthetic stand-in), Linf" in panels and "(d) CIFAR10 (synthetic stand-in), L2" in panels
    doc = copy.deepcopy(SMOKE)
    doc["data"]["cifar10_source"] = None
    (tmp_path / "real.yaml").write_text(yaml.safe_dump(doc))
    real = load_params(tmp_path / "real.yaml")
    assert "(c) CIFAR10, Linf" in figure3({}, dict(real.models), real, tmp_path / "g.png", dpi=50)


# --------------------------------------------------------------------------- the data stage after damage
def test_data_stage_says_it_rebuilt_a_corrupted_copy(project, monkeypatch):
    data = _private_data(project)
    flip_byte(data / "MNIST/raw/t10k-labels-idx1-ubyte", 8 + 3)
    monkeypatch.setenv("MMA_DATA_SOURCE", str(mnist_source()))
    result = invoke("data", "--params", "params.yaml")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stderr.splitlines() if "rebuilt" in line)
    assert "t10k-labels-idx1-ubyte" in line and "corrupted" in line, line
    assert invoke("evaluate", STD, "--params", "params.yaml").exit_code == 0  # the rebuilt copy is used


# --------------------------------------------------------------------------- stuck locks, unreachable stores
@contextlib.contextmanager
def held_by_another_process(path: Path, *, shared: bool = False, stop: bool = False):
    """Another process holding an flock on ``path`` (stopped by SIGSTOP, as Ctrl-Z does, if ``stop``)."""
    code = (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
        f"fcntl.flock(f, fcntl.{'LOCK_SH' if shared else 'LOCK_EX'}); print('held', flush=True); time.sleep(300)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        if stop:
            os.kill(proc.pid, signal.SIGSTOP)
        yield proc
    finally:
        proc.kill()  # also ends a stopped process
        proc.wait(timeout=30)


WAIT_S = 2.0  # a holder's idle time that ends a wait, in these rows (the default, locks.WAIT_S: test_tracking)


@pytest.mark.parametrize("stop", [False, True], ids=["running holder", "stopped holder"])
def test_store_lock_held_elsewhere_is_waited_on_for_a_bounded_time(project, built, monkeypatch, stop):
    from mma import locks

    monkeypatch.setattr(locks, "WAIT_S", WAIT_S)
    before, beside = tree(project), tree(outside(project))
    with held_by_another_process(built / "mlflow.db.lock", stop=stop) as holder:
        t0 = time.monotonic()
        one_line_exit_2(
            invoke("report", "--params", "params.yaml"),
            "mlflow.db.lock",
            f"pid {holder.pid}",
            "idle for 2 s",
            *(["stopped"] if stop else []),
        )
        elapsed = time.monotonic() - t0
    assert elapsed < WAIT_S + 10, elapsed  # bounded, not forever
    assert tree(project) == before and tree(outside(project)) == beside


def test_transfer_waits_a_bounded_time_for_a_stopped_reader_of_its_sets(project, monkeypatch):
    """An evaluate stopped (Ctrl-Z) while reading the transfer sets: transfer's swap gives up,
    naming it, and the previous sets stay."""
    from mma import locks

    monkeypatch.setattr(locks, "WAIT_S", WAIT_S)
    lock = project / "results/.locks/transfer-files-PGD-seed0.lock"
    before, beside = tree(project), tree(outside(project))
    with held_by_another_process(lock, shared=True, stop=True) as holder:
        t0 = time.monotonic()
        one_line_exit_2(
            invoke("transfer", PGD, "--params", "params.yaml"),
            "transfer-files-PGD-seed0.lock",
            f"pid {holder.pid}",
            "stopped",
            "idle for 2 s",
        )
        elapsed = time.monotonic() - t0
    assert elapsed < WAIT_S + 60, elapsed  # the sets' making (seconds), then the bounded wait; not forever
    assert tree(project) == before and tree(outside(project)) == beside


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@contextlib.contextmanager
def health_only_server():
    """An HTTP server on 127.0.0.1 answering /health and nothing else (a stuck MLflow server)."""
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server interface
            if self.path == "/health":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"OK")
            else:
                release.wait(120)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        release.set()
        server.shutdown()
        server.server_close()


STORE_FAULTS = [
    # (id, URI (PORT: a closed port, or the health-only server's), substrings of the one line)
    (
        "refused PostgreSQL",
        "postgresql://mma:s3cret@127.0.0.1:PORT/mlflow",
        ["postgresql://mma:***@127.0.0.1", "unreachable", "Connection refused"],
    ),
    (
        "refused server, credentials in the URI",
        "http://alice:s3cret@127.0.0.1:PORT",
        ["http://alice:***@127.0.0.1", "unreachable", "Connection refused"],
    ),
    (
        "server answering /health but not its API",
        "http://alice:s3cret@127.0.0.1:HEALTH_ONLY",
        ["http://alice:***@127.0.0.1", "unreachable", "timed out"],
    ),
]


@pytest.mark.parametrize("uri, expected", [pytest.param(u, e, id=i) for i, u, e in STORE_FAULTS])
def test_unusable_store_fails_within_seconds_without_its_password(project, monkeypatch, uri, expected):
    before, beside = tree(project), tree(outside(project))
    with health_only_server() as port:
        monkeypatch.setenv(
            "MLFLOW_TRACKING_URI", uri.replace("HEALTH_ONLY", str(port)).replace("PORT", str(closed_port()))
        )
        t0 = time.monotonic()
        result = invoke("report", "--params", "params.yaml")
        elapsed = time.monotonic() - t0
    one_line_exit_2(result, *expected)
    assert "s3cret" not in result.output + result.stderr
    assert elapsed < 15, elapsed  # seconds, not MLflow's minutes of retries
    assert tree(project) == before and tree(outside(project)) == beside


# --------------------------------------------------------------------------- a full disk
@contextlib.contextmanager
def small_disk(folder: Path, free_kb: int):
    """``folder`` on a tmpfs of its own: its content, then about ``free_kb`` kB free (the kernel's
    real ENOSPC).  Skips where mounting is not permitted (it needs root with CAP_SYS_ADMIN)."""
    content = folder.with_name(f".{folder.name}.content")
    folder.mkdir(parents=True, exist_ok=True)
    folder.rename(content)
    folder.mkdir()
    used_kb = sum(-(-p.stat().st_size // 4096) * 4 for p in content.rglob("*") if p.is_file())
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={used_kb + free_kb}k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if mounted.returncode != 0:
        folder.rmdir()
        content.rename(folder)
        pytest.skip(f"a small disk needs a tmpfs mount, not permitted here ({mounted.stderr.strip()})")
    try:
        shutil.copytree(content, folder, symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(content)
        yield folder
    finally:
        if not content.exists():
            shutil.copytree(folder, content, symlinks=True)
        subprocess.run(["umount", "-l", str(folder)], timeout=30)
        folder.rmdir()
        content.rename(folder)


def _data_root_in_the_project(p: Path):
    doc = yaml.safe_load((p / "params.yaml").read_text())
    doc["data"]["root"] = "data"
    (p / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


DISK_FAULTS = [
    # (id, the folder on a small disk, kB free there, command, substrings of the one line, the folder left as it was)
    ("evaluate", f"results/eval/{STD}", 8, ["evaluate", STD], [f"results/eval/{STD}/seed0", "no space left"], "."),
    ("transfer", "results/transfer/PGD", 8, ["transfer", PGD], ["results/transfer/PGD/seed0", "no space left"], "."),
    ("report", "results", 8, ["report"], ["results/report", "no space left"], "."),
    # room for the checkpoint folder's small files (spec.json, run.json, the curves' journal), not for resume.pt
    (
        "train's resume checkpoint",
        "results/checkpoints",
        512,
        ["train", STD],
        [f"results/checkpoints/{STD}/seed0/resume.pt", "no space left"],
        "results/models",
    ),
    ("data under data.root", "data", 512, ["data"], ["data/MNIST", "no space left"], "."),
]


@pytest.mark.parametrize(
    "folder, free_kb, command, expected, kept",
    [pytest.param(f, k, c, e, left, id=i) for i, f, k, c, e, left in DISK_FAULTS],
)
def test_full_disk_is_one_line_and_the_previous_outputs_stay(
    project, monkeypatch, folder, free_kb, command, expected, kept
):
    if command == ["data"]:
        _data_root_in_the_project(project)
        monkeypatch.setenv("MMA_DATA_SOURCE", str(mnist_source()))
    beside = tree(outside(project))
    with small_disk(project / folder, free_kb=free_kb):
        before = tree(project / kept)
        line = one_line_exit_2(invoke(*command, "--params", "params.yaml"), *expected)
        assert tree(project / kept) == before
    assert tree(outside(project)) == beside
    assert "replace it" not in line  # a full disk is never blamed on the source files


# --------------------------------------------------------------------------- outputs DVC can trust, shared with a group
def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_stage_run_twice_writes_the_same_bytes(project):
    """The same stage on the same inputs gives byte-identical files, so DVC reruns nothing
    downstream: the model, every transfer set and its manifest, the per-example results and
    the evaluation's metrics."""

    def files():
        folders = ["results/transfer/PGD/seed0", f"results/eval/{STD}/seed0"]
        return {
            str(p.relative_to(project)): md5(p)
            for p in [
                project / f"results/models/{STD}/seed0/model.pt",
                *(f for d in folders for f in (project / d).iterdir()),
            ]
        }

    first = files()
    assert len(first) == 1 + 3 + 2  # the model; 2 sets and their manifest; per-example results and metrics
    for command in (["train", STD], ["transfer", PGD], ["evaluate", STD]):  # the built project's second run
        result = invoke(*command, "--params", "params.yaml")
        assert result.exit_code == 0, result.output
    assert files() == first


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_outputs_get_the_umasks_mode(project, monkeypatch, mask):
    """Files 0666 and folders 0777 less the umask, as any program's (not a temporary file's 0600
    and 0700): a research group shares its results by its umask."""
    _data_root_in_the_project(project)
    monkeypatch.setenv("MMA_DATA_SOURCE", str(mnist_source()))
    old = os.umask(mask)
    try:
        for command in (["data"], ["report"]):
            result = invoke(*command, "--params", "params.yaml")
            assert result.exit_code == 0, result.output
    finally:
        os.umask(old)
    made = [project / "results/report", project / "data/MNIST"]
    made += [p for folder in made for p in folder.rglob("*")]
    assert {str(p): mode(p) for p in made} == {str(p): (0o777 if p.is_dir() else 0o666) & ~mask for p in made}


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_synthetic_data_larger_than_the_machine_holds_is_refused_before_allocating(project, monkeypatch):
    """data.synthetic_train: 1000000 on a machine with 2 GB available (the memory the check reads,
    set): one line before any allocation, not a traceback or the out-of-memory killer."""
    from mma import data

    monkeypatch.setattr(data, "available_memory", lambda: 2 * 10**9)
    bad = write_params(
        project,
        lambda d: d["data"].update(
            root="data", datasets=["cifar10", "mnist"], cifar10_source="synthetic", synthetic_train=1_000_000
        ),
    )
    before = tree(project)
    one_line_exit_2(invoke("data", "--params", bad), "data.synthetic_train = 1000000", "GB of memory", "lower them")
    assert tree(project) == before and not (project / "data").exists()
