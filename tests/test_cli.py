"""The `mma` CLI: instant help, every command and option described, one-line errors."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from mma.cli import app

COMMANDS = ["data", "spec", "train", "transfer", "evaluate", "report", "bench"]


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
