"""params.yaml validation: every bad input gives one line naming the key and the value,
exit code 2, and nothing is created (checked through the real CLI, in-process)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mma.cli import app
from mma.config.data import DATA_SOURCE_ENV, mnist_source
from mma.config.params import ParamsError, load_params

ROOT = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((ROOT / "presets" / "smoke.yaml").read_text())


def _set(doc: dict, path: str, value) -> dict:
    """A copy of ``doc`` with ``path`` ("models/mnist-linf-pgd-0p3/pgd/eps") set to ``value``."""
    doc = copy.deepcopy(doc)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
    node = doc
    for p in parents:
        node = node[p]
    node[last] = value
    return doc


def _without(doc: dict, path: str) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
    node = doc
    for p in parents:
        node = node[p]
    del node[last]
    return doc


# (id, params document or raw text, substrings the one-line error must contain)
BAD = [
    ("unknown top-level key", _set(SMOKE, "experimnt", "x"), ["experimnt", "unknown key"]),
    ("unknown model key", _set(SMOKE, "models/mnist-linf-std/lrr", 0.1), ["models.mnist-linf-std.lrr", "0.1"]),
    ("wrong type", _set(SMOKE, "seed", "abc"), ["seed", "'abc'"]),
    (
        "wrong type nested",
        _set(SMOKE, "models/mnist-linf-std/train_steps", "many"),
        ["models.mnist-linf-std.train_steps", "many"],
    ),
    (
        "negative eps",
        _set(SMOKE, "models/mnist-linf-pgd-0p3/pgd/eps", -0.3),
        ["models.mnist-linf-pgd-0p3.pgd.eps", "-0.3"],
    ),
    ("steps 0", _set(SMOKE, "models/mnist-linf-pgd-0p3/pgd/steps", 0), ["models.mnist-linf-pgd-0p3.pgd.steps", "0"]),
    ("train_steps 0", _set(SMOKE, "models/mnist-linf-std/train_steps", 0), ["train_steps", "0"]),
    ("unknown norm", _set(SMOKE, "models/mnist-linf-std/norm", "l3"), ["models.mnist-linf-std.norm", "'l3'"]),
    ("unknown arch", _set(SMOKE, "models/mnist-linf-std/arch", "resnet"), ["models.mnist-linf-std.arch", "'resnet'"]),
    (
        "unknown dataset",
        _set(SMOKE, "models/mnist-linf-std/dataset", "svhn"),
        ["models.mnist-linf-std.dataset", "'svhn'"],
    ),
    (
        "unknown method",
        _set(SMOKE, "models/mnist-linf-std/method", "trades"),
        ["models.mnist-linf-std.method", "'trades'"],
    ),
    (
        "eps_min > d_max",
        _set(_set(SMOKE, "models/mnist-linf-mma-0p45/mma/eps_min", 0.5), "models/mnist-linf-mma-0p45/mma/eps_max", 1.0),
        ["models.mnist-linf-mma-0p45.mma.eps_min", "0.5", "d_max"],
    ),
    (
        "name differs from its key",
        _set(SMOKE, "models/mnist-linf-pgd-0p3/name", "mnist-linf-std"),
        ["models.mnist-linf-pgd-0p3.name", "'mnist-linf-std'", "differs from its key"],
    ),
    ("the grid as a list", _set(SMOKE, "models", [{"name": "mnist-linf-std"}]), ["models", "mapping", "not a list"]),
    (
        "table1 names a model not in the grid",
        _set(SMOKE, "table1/columns", {"mnist-linf-nope": "MMA"}),
        ["table1.columns.mnist-linf-nope", "'mnist-linf-nope'"],
    ),
    (
        "transfer source not in the grid",
        _set(SMOKE, "table1/sources/MMA/model", "mnist-linf-nope"),
        ["table1.sources.MMA.model", "'mnist-linf-nope'"],
    ),
    (
        "unknown attack name",
        _set(SMOKE, "table1/sources/PGD/attacks", ["fgsm", "pgd7x7"]),
        ["table1.sources.PGD.attacks", "'pgd7x7'", "attacks"],
    ),
    ("curve attack not defined", _set(SMOKE, "evaluate/curve_attack", "pgd9x9"), ["evaluate.curve_attack", "'pgd9x9'"]),
    (
        "table1 over two threat models",
        _set(SMOKE, "table1/columns", {"mnist-l2-mma-2p0": "MMA"}),
        ["table1", "one dataset × norm"],
    ),
    (
        "column role without a source",
        _set(SMOKE, "table1/columns", {"mnist-linf-std": "TRADES"}),
        ["table1", "'TRADES'", "not a role"],
    ),
    (
        "cw as AN-PGD's attack loss",
        _set(SMOKE, "models/mnist-linf-mma-0p45/mma/attack_loss", "cw"),
        ["models.mnist-linf-mma-0p45.mma.attack_loss", "'cw'"],
    ),
    ("unknown device", _set(SMOKE, "device", "tpu"), ["device", "'tpu'"]),
    ("negative threads", _set(SMOKE, "threads", -1), ["threads", "-1"]),
    ("pgd without its block", _without(SMOKE, "models/mnist-linf-pgd-0p3/pgd"), ["models.mnist-linf-pgd-0p3", "pgd"]),
    ("dataset not prepared", _set(SMOKE, "data/datasets", ["mnist"]), ["dataset", "'cifar10'", "data.datasets"]),
    ("empty grid", _set(SMOKE, "models", {}), ["models"]),
    ("missing grid", _without(SMOKE, "models"), ["models", "missing"]),
    ("bad model name", {**SMOKE, "models": {"a/b": SMOKE["models"]["mnist-linf-std"]}}, ["models.a/b.name", "'a/b'"]),
    (
        "a model entry sets a seed",
        _set(SMOKE, "models/mnist-linf-std/seed", 3),
        ["models.mnist-linf-std.seed = 3", "top-level `seeds:`"],
    ),
    ("empty seeds", _set(SMOKE, "seeds", []), ["seeds = []"]),
    ("seeds not a list", _set(SMOKE, "seeds", 3), ["seeds = 3"]),
    ("negative seed", _set(SMOKE, "seeds", [0, -1]), ["seeds[1] = -1", "greater than or equal to 0"]),
    ("seed listed twice", _set(SMOKE, "seeds", [0, 1, 0]), ["seeds = [0, 1, 0]", "seed 0 is listed twice"]),
    ("not an int seed", _set(SMOKE, "seeds", [0, 1.5]), ["seeds[1] = 1.5", "integer"]),
    (
        "role not usable as a folder",
        _set(
            _set(
                SMOKE,
                "table1/sources",
                {("P/GD" if r == "PGD" else r): v for r, v in SMOKE["table1"]["sources"].items()},
            ),
            "table1/columns",
            {m: ("P/GD" if r == "PGD" else r) for m, r in SMOKE["table1"]["columns"].items()},
        ),
        ["table1.sources.P/GD", "folder name"],
    ),
    (
        "model name with a dot (dvc exp run -S splits there)",
        _set(
            SMOKE,
            "models",
            {("mnist-linf-std-0.5" if k == "mnist-linf-std" else k): v for k, v in SMOKE["models"].items()},
        ),
        ["models.mnist-linf-std-0.5", "cannot hold a '.'", "'mnist-linf-std-0p5'"],
    ),
    ("not YAML", "models: [\n  - {name: x\n", ["not valid YAML", "line"]),
    ("not a mapping", "- 1\n- 2\n", ["expected a mapping"]),
]


@pytest.mark.parametrize("doc, expected", [pytest.param(d, e, id=i) for i, d, e in BAD])
def test_bad_params_exit_2_one_line_nothing_created(tmp_path, monkeypatch, doc, expected):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    bad = tmp_path / "bad.yaml"
    bad.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, ["train", "mnist-linf-std", "--params", str(bad)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], f"{text!r} not in: {lines[0]}"
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no results/, data/, mlflow.db


def test_missing_params_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["data", "--params", "nope.yaml"])
    assert result.exit_code == 2
    assert "nope.yaml: no such params file" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_name_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    result = CliRunner().invoke(app, ["train", "nope", "--params", str(ROOT / "presets" / "smoke.yaml")])
    assert result.exit_code == 2
    assert "no model named 'nope'" in result.stderr
    assert list(tmp_path.iterdir()) == []  # not even the MLflow store


@pytest.mark.parametrize("name", ["params.yaml", "presets/smoke.yaml", "presets/quick.yaml"])
def test_shipped_params_files_are_valid(name):
    p = load_params(ROOT / name)
    # dvc.yaml iterates over these keys of the raw file: they must be written out, not defaulted
    raw = yaml.safe_load((ROOT / name).read_text())
    assert raw["data"]["root"] and raw["table1"]["sources"] and raw["models"]
    assert len(set(p.model_names)) == len(p.models)


def test_params_yaml_with_every_switch_on_is_valid(tmp_path):
    """The commented MNIST-L2 / CIFAR10 blocks of params.yaml stay valid when switched on."""
    from test_faithfulness import params_with_every_switch_on

    p = params_with_every_switch_on(tmp_path)
    names = p.model_names
    assert any(n.startswith("mnist-l2-") for n in names) and any(n.startswith("cifar10-") for n in names)
    assert {(m.dataset, m.norm) for m in p.models.values()} == {
        ("mnist", "linf"),
        ("mnist", "l2"),
        ("cifar10", "linf"),
        ("cifar10", "l2"),
    }


def test_data_source_env_wins(monkeypatch, tmp_path):
    doc = _set(SMOKE, "data/mnist_source", "/from/params")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    p = load_params(tmp_path / "p.yaml")
    monkeypatch.delenv(DATA_SOURCE_ENV, raising=False)
    assert mnist_source(p.data) == ("/from/params", "data.mnist_source")
    monkeypatch.setenv(DATA_SOURCE_ENV, "/from/env")
    assert mnist_source(p.data) == ("/from/env", f"${DATA_SOURCE_ENV}")


def test_error_is_a_params_error_not_a_traceback(tmp_path):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(_set(SMOKE, "models/mnist-linf-pgd-0p3/pgd/eps", -1)))
    with pytest.raises(ParamsError, match=r"pgd\.eps = -1: Input should be greater than 0"):
        load_params(tmp_path / "p.yaml")


def test_every_model_is_trained_once_per_seed(tmp_path):
    """seeds: [0, 2] → each model twice, the member's spec carries its seed, and the resolved
    record (hence the identity every file between stages carries) differs between members."""
    from mma.stages.contract import identity
    from mma.stages.train import CONTRACT as TRAIN

    (tmp_path / "p.yaml").write_text(yaml.safe_dump(_set(SMOKE, "seeds", [0, 2]), sort_keys=False))
    p = load_params(tmp_path / "p.yaml")
    names = list(SMOKE["models"])
    assert p.members() == [(n, s) for n in names for s in (0, 2)]
    assert p.member("mnist-linf-std", 2).seed == 2 and p.member("mnist-linf-std", 0).seed == 0
    assert p.member("mnist-linf-std", 2).model_dump(exclude={"seed"}) == p.model("mnist-linf-std").model_dump(
        exclude={"seed"}
    )
    a, b = TRAIN.record(p, "mnist-linf-std", 0), TRAIN.record(p, "mnist-linf-std", 2)
    assert a["model"]["seed"] == 0 and b["model"]["seed"] == 2 and {**a["model"], "seed": 2} == b["model"]
    ia, ib = identity(p, "mnist-linf-std", 0, "train"), identity(p, "mnist-linf-std", 2, "train")
    assert (ia["seed"], ib["seed"]) == (0, 2) and ia["spec_sha256"] != ib["spec_sha256"]
    with pytest.raises(ParamsError, match=r"seed 1 is not in the grid's seeds \[0, 2\]"):
        p.member("mnist-linf-std", 1)
    # which seed a command works on
    assert p.pick_seed(2) == 2
    with pytest.raises(ParamsError, match=r"^the grid has 2 seeds \(0, 2\); pass --seed S to pick one$"):
        p.pick_seed(None)
    with pytest.raises(ParamsError, match=r"^--seed 1: not one of the grid's seeds \(0, 2\)$"):
        p.pick_seed(1)
    one = load_params(ROOT / "presets" / "smoke.yaml")
    assert one.seeds == [0] and one.pick_seed(None) == 0  # one seed: --seed may be left out


def test_member_paths_are_built_from_name_and_seed():
    """One layout, built only in mma.paths (a test of the pipeline files checks dvc.yaml and the
    Snakefile against these)."""
    from mma import paths

    assert str(paths.model_file("m-1.0", 3)) == "results/models/m-1.0/seed3/model.pt"
    assert str(paths.spec_file("m-1.0", 3)) == "results/specs/m-1.0/seed3.json"
    assert str(paths.eval_spec_file("m-1.0", 3)) == "results/specs/m-1.0/seed3.evaluate.json"
    assert str(paths.metrics_file("m-1.0", 3)) == "results/metrics/m-1.0/seed3.json"
    assert str(paths.plot_file("val", "m-1.0", 3)) == "results/plots/val/m-1.0/seed3.tsv"
    assert str(paths.resume_file("m-1.0", 3)) == "results/checkpoints/m-1.0/seed3/resume.pt"
    assert str(paths.eval_dir("m-1.0", 3)) == "results/eval/m-1.0/seed3"
    assert str(paths.transfer_dir("PGD", 3)) == "results/transfer/PGD/seed3"
    assert str(paths.source_file("PGD", 3)) == "results/sources/PGD/seed3.json"
    assert str(paths.model_file("{name}", "{seed}")) == "results/models/{name}/seed{seed}/model.pt"  # Snakemake


@pytest.mark.parametrize("shipped", ["params.yaml", "presets/smoke.yaml", "presets/quick.yaml"])
def test_every_model_can_be_set_by_name_with_dvc_exp_run_s(shipped, tmp_path):
    """`dvc exp run -S models.NAME.KEY=VALUE` reaches each model of every shipped params file
    by name: DVC's own override code (what -S runs) edits that model alone."""
    from dvc.utils.hydra import apply_overrides

    source = ROOT / shipped
    names = list(yaml.safe_load(source.read_text())["models"])
    for name in names:
        copy = tmp_path / "params.yaml"
        shutil.copy(source, copy)
        apply_overrides(copy, [f"models.{name}.optimizer.lr=0.0123"])
        models = yaml.safe_load(copy.read_text())["models"]
        assert [n for n in names if (models[n].get("optimizer") or {}).get("lr") == 0.0123] == [name]


def test_the_schema_package_imports_no_torch_and_nothing_above_it():
    """mma.config sits at the bottom of the import order: every module may import it, and it
    imports no torch and no other part of mma (statically, function-level imports included,
    and at run time)."""
    import ast
    import json
    import os
    import subprocess
    import sys

    for path in sorted((ROOT / "mma" / "config").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                top = (node.module or "").split(".")[0]
                assert node.level == 1 or node.level == 0 and top not in ("mma", "torch"), (
                    f"{path.name} imports {'.' * node.level}{node.module or ''}"
                )
            elif isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & {"mma", "torch"}, path.name
    code = (
        "import json, sys, mma.config.params, mma.config.reader, mma.config.data, mma.config.compute; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('mma', 'torch'))))"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        ).stdout
    )
    assert "mma.config.params" in loaded and all(m == "mma" or m.startswith("mma.config") for m in loaded), loaded
