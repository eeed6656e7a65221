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
from test_pipeline import _env, _tool, scratch_copy


def _outputs(repo: Path) -> None:
    """Stand-in outputs at every path dvc.yaml declares (DVC only hashes them): a file where
    the path names one, else a folder holding one file."""
    from dvc.repo import Repo

    with Repo(str(repo)) as r:
        declared = [str(o.def_path) for stage in r.index.stages for o in stage.outs]
    for rel in declared:
        path = repo / rel
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}" if path.suffix == ".json" else "x")
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "stand-in").write_text("x")


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
