"""The environment and the package: the conda env pins the lock file's versions, the extras
hold what they name, and a built wheel carries its data files and runs the report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_conda_env_pins_the_lock_files_versions():
    sys.path.insert(0, str(ROOT / "scripts"))
    from lock_env import pins

    lock = pins((ROOT / "requirements.lock").read_text())
    env = yaml.safe_load((ROOT / "workflow" / "envs" / "mma.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert [p for p in pip if "==" in p] == lock
    assert len(lock) > 100
    assert any(p.startswith("snakemake==") for p in lock) and any(p.startswith("dvc==") for p in lock)
    assert re.search(r"^    --hash=sha256:[0-9a-f]{64}", (ROOT / "requirements.lock").read_text(), re.M)


def test_pipeline_extra_holds_dvc_and_snakemake_not_dev():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {re.split(r"[<>=]", d)[0] for d in extras["pipeline"]} == {"dvc", "snakemake"}
    assert not any(d.startswith(("dvc", "snakemake")) for d in extras["dev"])
    assert "cluster" in extras


@pytest.mark.slow
def test_wheel_carries_the_reference_csvs_and_runs_the_report(tmp_path):
    """`pip wheel .` then install it (no deps: this environment's) into a target folder; the
    installed `mma report` (not the checkout) writes Table 1 from fake evaluation results."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("mma-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert {"mma/report/reference/table1_mnist_linf.csv", "mma/report/reference/final_paper_anchors.csv"} <= set(names)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    code = (
        "import mma, sys; from mma.report.reference import table1_rows, anchors; "
        "assert str(mma.__file__).startswith(sys.argv[1]), mma.__file__; "
        "print(len(table1_rows()), len(anchors()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(target)], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    rows, anchors = map(int, out.stdout.split())
    assert rows > 0 and anchors > 0
