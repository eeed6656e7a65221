"""The `mma` CLI: instant help, every command and option described, one-line errors that name
the next command, the version."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mma.cli import app

COMMANDS = ["data", "spec", "train", "transfer", "evaluate", "report", "bench"]
SMOKE = Path(__file__).resolve().parents[1] / "presets" / "smoke.yaml"


def test_importing_the_cli_imports_no_torch_or_mlflow():
    code = "import sys, mma.cli; heavy = [m for m in ('torch', 'mlflow', 'numpy') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_is_fast_and_lists_every_command():
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "mma.cli", "--help"], capture_output=True, text=True, check=True).stdout
    assert time.monotonic() - t0 < 5  # typically ~0.2 s; torch alone would take seconds
    for command in COMMANDS:
        assert f"  {command} " in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0
    options = [line.strip() for line in result.output.splitlines() if line.strip().startswith("--")]
    assert options, result.output
    for line in options:
        if line.startswith("--help"):
            continue
        assert len(line.split(None, 2)) == 3, f"{command}: option without help text: {line!r}"
    if command in ("data", "spec", "train", "transfer", "evaluate", "report"):
        assert "--params" in result.output
    if command in ("train", "transfer", "evaluate", "bench"):
        assert "--device" in result.output


def test_bad_device_is_one_line_exit_2(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    smoke = Path(__file__).resolve().parents[1] / "presets" / "smoke.yaml"
    result = CliRunner().invoke(app, ["train", "mnist-linf-std", "--params", str(smoke), "--device", "tpu"])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "tpu" in result.stderr
    assert not (tmp_path / "results").exists()


def test_evaluate_before_training_names_the_train_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    for args, name in (
        (["evaluate", "mnist-linf-std"], "mnist-linf-std"),
        (["transfer", "mnist-linf-pgd-0p3"], "mnist-linf-pgd-0p3"),
        (["transfer", "--role", "PGD", "--seed", "0"], "mnist-linf-pgd-0p3"),
    ):
        result = CliRunner().invoke(app, [*args, "--params", str(SMOKE)])
        assert result.exit_code == 2, result.output
        assert f"run `mma train {name} --seed 0` first" in result.stderr
        assert "Errno" not in result.stderr


def test_a_member_stage_without_seed_on_a_two_seed_grid_lists_the_seeds(tmp_path, monkeypatch):
    """One seed: --seed may be left out; several: one line naming them, exit 2, nothing written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    doc = yaml.safe_load(SMOKE.read_text())
    (tmp_path / "two.yaml").write_text(yaml.safe_dump({**doc, "seeds": [0, 3]}))
    for args in (
        ["train", "mnist-linf-std"],
        ["evaluate", "mnist-linf-std"],
        ["spec", "train", "mnist-linf-std"],
        ["spec", "transfer", "PGD"],
        ["transfer", "--role", "PGD"],
    ):
        result = CliRunner().invoke(app, [*args, "--params", "two.yaml"])
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.strip() == ("mma: error: the grid has 2 seeds (0, 3); pass --seed S to pick one"), args
    result = CliRunner().invoke(app, ["train", "mnist-linf-std", "--seed", "1", "--params", "two.yaml"])
    assert result.exit_code == 2 and "--seed 1: not one of the grid's seeds (0, 3)" in result.stderr
    assert not (tmp_path / "results").exists()
    result = CliRunner().invoke(app, ["spec", "train", "mnist-linf-std", "--seed", "3", "--params", "two.yaml"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "results/specs/mnist-linf-std/seed3.json").read_text())["reads"]["model"]["seed"] == 3


def test_offline_data_error_names_the_env_var_and_the_param(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MMA_DATA_SOURCE", str(tmp_path / "no-such-folder"))
    result = CliRunner().invoke(app, ["data", "--params", str(SMOKE)])
    assert result.exit_code == 2, result.output
    assert "$MMA_DATA_SOURCE" in result.stderr and "data.mnist_source" in result.stderr
    assert "source=" not in result.stderr


def test_version():
    from mma import __version__

    result = subprocess.run([sys.executable, "-m", "mma.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"mma {__version__}"
