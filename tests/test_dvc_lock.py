"""A kill while DVC writes dvc.lock truncates it (DVC's own write, not ours); DVC then
either refuses to read it or plans to rerun everything.  The recovery, as documented in
the README ("If dvc.lock is damaged"), re-hashes the outputs instead of recomputing them:

    git checkout dvc.lock          # if it is committed; else:
    rm dvc.lock && dvc commit -f   # records the outputs on disk as the stages' results
    dvc status                     # "Data and pipelines are up to date."

It is right because every output is written whole (a temporary name or folder renamed
into place) and carries who it is, so the outputs on disk are complete results of some
run, and a reader refuses one that does not fit the params (``tests/test_faults.py``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from test_pipeline import _env, _tool, scratch_copy


def _outputs(repo: Path) -> None:
    """Stand-in outputs at every declared path (DVC only hashes them)."""
    p = yaml.safe_load((repo / "params.yaml").read_text())

    def put(rel: str, text: str = "x") -> None:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)

    put(f"{p['data']['root']}/MNIST/raw/train-images-idx3-ubyte")
    for m in p["models"]:
        n = m["name"]
        put(f"results/specs/{n}.json", "{}")
        put(f"results/models/{n}/model.pt")
        put(f"results/models/{n}/metrics.json", '{"best_value": 1}')
        put(f"results/eval/{n}/metrics.json", "{}")
    for s in p["table1"]["sources"].values():
        put(f"results/transfer/{s['model']}/manifest.json", "{}")
    for f in ("table1.md", "table1.csv", "summary.md", "figure3.png", "margins.png"):
        put(f"results/report/{f}")
    put("results/report/summary.json", '{"checks_flagged": 0}')


def _dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("dvc"), *args], cwd=repo, env=_env(), capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = scratch_copy(tmp_path_factory.mktemp("dvclock") / "repo")
    _outputs(repo)
    _dvc(repo, "commit", "-f", "-q")  # as after a complete `dvc repro`
    assert "up to date" in _dvc(repo, "status").stdout
    return repo


@pytest.mark.parametrize("keep", [0, 1001, 3000])  # empty, invalid YAML, valid but partial
def test_truncated_dvc_lock_is_recovered_without_rerunning(repo, keep):
    good = (repo / "dvc.lock").read_bytes()
    (repo / "dvc.lock").write_bytes(good[:keep])  # killed mid-write
    status = _dvc(repo, "status", check=False)
    assert "up to date" not in status.stdout  # DVC is lost: refuses, or would rerun stages
    (repo / "dvc.lock").unlink()  # the documented recovery
    _dvc(repo, "commit", "-f", "-q")
    assert "Data and pipelines are up to date." in _dvc(repo, "status").stdout
    assert (repo / "dvc.lock").read_bytes() == good  # the same record as before the kill
    dry = _dvc(repo, "repro", "--dry").stdout
    assert "Running stage" not in dry, dry  # nothing would be recomputed
