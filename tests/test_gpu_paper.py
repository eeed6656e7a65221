"""`make gpu-paper`'s script on the CPU (the dry run CI runs: presets/smoke.yaml's model), with the modules
the GPU machine lacks made unimportable: a run cut by its budget ends where an uninterrupted one does, and
the model it trains is one `mma evaluate` accepts and agrees with."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import mnist_source

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_paper.py"
ABSENT = ("mlflow", "dvc", "snakemake", "foolbox", "autoattack", "pyautoattack", "torchattacks")  # not on the GPU
RUN = (
    "import runpy, sys\n"
    f"for m in {ABSENT!r}: sys.modules[m] = None\n"
    "sys.argv = ['gpu_paper.py'] + sys.argv[1:]\n"
    f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
)
NAME = "mnist-linf-mma-0p45"
# the smoke preset's model; ε 0.1 besides Table 1's 0.3 and 0.4: the smoke model is robust to some images
# there, so comparisons of robust accuracy are not all between zeros
DRY = (
    "--device",
    "cpu",
    "--params",
    str(ROOT / "presets" / "smoke.yaml"),
    "--eps",
    "0.1,0.3,0.4",
    "--max-restarts",
    "10",
)


def gpu_paper(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMA_DATA_SOURCE": str(mnist_source())}
    return subprocess.run(
        [sys.executable, "-c", RUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def result(state: Path) -> dict:
    return json.loads((state / "results" / "gpu_paper" / NAME / "seed0.json").read_text())


def model(state: Path) -> dict:
    return torch.load(state / "results" / "models" / NAME / "seed0" / "model.pt", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """One dry run in one call (its working folder: data/ and the STATE folder `state/`)."""
    cwd = tmp_path_factory.mktemp("gpu-paper")
    p = gpu_paper(cwd, *DRY, "--state", "state")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert json.loads(p.stdout) == {k: v for k, v in result(cwd / "state").items() if k != "calls"}  # printed too
    return cwd


def test_restart_one_is_the_evaluate_stages_run_and_each_later_one_attacks_the_survivors(monkeypatch, tmp_path):
    """Restart 1 at ε has the evaluate stage's seed for that setting at ε (so it is its PGD-100×1
    record); restart r > 1 has a seed of its own and attacks only the images every earlier one left
    robust; ``survived`` counts the restarts withstood.  (On the smoke model a start's seed changes
    0-1 of 64 outcomes, so an end-to-end run could not tell the seeds apart.)"""
    import argparse
    import runpy

    from mma.config.params import load_params
    from mma.evaluation.whitebox import whitebox_seed

    script = runpy.run_path(str(SCRIPT))
    calls = []

    def survival(model, x, y, eps, setting, *, seed, active, **_):  # breaks every other image it attacks
        calls.append((seed, active.clone()))
        out = torch.where(active, 1, -1).to(torch.int16)
        out[active.nonzero().squeeze(1)[::2]] = 0
        return out

    monkeypatch.setattr("mma.evaluation.whitebox.survival", survival)
    params = load_params(ROOT / "presets" / "smoke.yaml")
    args = argparse.Namespace(eps=(0.3,), device="cpu")
    call = script["Call"](args, params, NAME, 0, tmp_path)
    name, setting = script["paper_attack"](params)
    y = torch.arange(10) % 10
    pred = torch.where(torch.arange(10) < 8, y, (y + 1) % 10)  # the last 2 misclassified: never attacked
    d = {"clean_pred": pred, "y": y, "survived": {"0.3": torch.where(pred == y, 0, -1).to(torch.int16)}, "restarts": {}}
    work = script["Work"](
        call, None, torch.zeros(10, 1, 28, 28), y, params.evaluate.threat_model("mnist", "linf"), setting
    )
    for r in (1, 2, 3):
        work.pgd(script["Unit"]("pgd", 0.3, r), d)
    assert name == "pgd5x1" and calls[0][0] == whitebox_seed(params.seed, NAME, setting, params.evaluate.loss, 0.3)
    assert len({seed for seed, _ in calls}) == 3
    assert [a.nonzero().squeeze(1).tolist() for _, a in calls] == [list(range(8)), [1, 3, 5, 7], [3, 7]]
    assert d["survived"]["0.3"].tolist() == [0, 1, 0, 2, 0, 1, 0, 3, -1, -1] and d["restarts"] == {"0.3": 3}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is there: the refusal cannot happen")
def test_cuda_without_a_gpu_is_one_line_and_exit_2(tmp_path):
    p = gpu_paper(tmp_path, "--device", "cuda", "--state", "s", "--params", str(ROOT / "params.yaml"), timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().count("\n") == 0 and "DEVICE=cpu" in p.stderr
    assert not (tmp_path / "s").exists()


def test_a_model_outside_table1s_threat_model_is_one_line_and_exit_2(tmp_path):
    p = gpu_paper(tmp_path, *DRY, "--model", "mnist-l2-mma-2p0", "--state", "s", timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().count("\n") == 0 and "mnist-l2-mma-2p0" in p.stderr and "Table 1" in p.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_the_dry_run_trains_evaluates_and_sets_ours_beside_the_papers(uninterrupted):
    res = result(uninterrupted / "state")
    smoke = yaml.safe_load((ROOT / "presets" / "smoke.yaml").read_text())["models"][NAME]
    assert res["status"] == "complete" and res["training"]["finished"]
    assert res["training"]["steps_done"] == smoke["train_steps"] and model(uninterrupted / "state")["step"] > 0
    assert res["training"]["step_ms_median"] > 0 and res["training"]["compute"]["cuda_graphs"] is False
    ev = res["evaluation"]
    assert ev["images"] == 64 and ev["attack"]["setting"] == "pgd5x1"  # the preset's stand-in for PGD-100×1
    for eps in ("0.1", "0.3", "0.4"):
        r = ev["pgd"][eps]
        assert r["restarts"] == 10 and len(r["accuracy_by_restarts"]) == 10
        by = r["accuracy_by_restarts"]
        assert by[0] == r["accuracy_x1"] and by[-1] == r["accuracy"]
        assert all(a >= b for a, b in zip(by, by[1:])) and by[0] <= ev["clean_accuracy"]  # restarts only break more
    assert ev["pgd"]["0.1"]["accuracy"] > 0  # the comparisons below are not all between zeros
    m = ev["margins"]
    assert 0 < m["anpgd/mean"] <= ev["margin_eps_max"] and m["anpgd/mean_all"] <= m["anpgd/mean"]
    paper = res["paper"]  # Table 1's MMA column and the final paper's MMA-0.45 anchors, from the package's CSVs
    assert paper["column"] == "MMA" and paper["clean_accuracy"] == 98.74
    assert paper["pgd"]["0.3"] == {"x1": 96.64, "x50": 93.64} and paper["pgd"]["0.4"] == {"x1": 95.33, "x50": 89.99}
    assert paper["pgd"]["0.1"] == {"x1": None, "x50": None}  # not a Table-1 row
    assert {(a["metric"], a["eps"], a["value_percent"]) for a in paper["final_paper_anchors"]} == {
        ("clean", 0.0, 98.9),
        ("robust_all_attacks", 0.1, 97.9),
        ("robust_all_attacks", 0.3, 92.6),
        ("robust_all_attacks", 0.4, 85.2),
    }
    rows = {r["what"]: r for r in res["comparison"]}
    assert rows["white-box PGD at ε 0.3, 10 restarts"]["ours"] == ev["pgd"]["0.3"]["accuracy"]
    assert rows["white-box PGD at ε 0.3, 10 restarts"]["paper"] == 93.64


@pytest.mark.slow
def test_a_state_of_other_settings_is_refused_not_discarded(uninterrupted):
    """Under the paper's params the smoke model in STATE is another model: one line, exit 2, nothing touched."""
    before = {f: f.stat().st_mtime_ns for f in (uninterrupted / "state").rglob("*") if f.is_file()}
    p = gpu_paper(
        uninterrupted, "--device", "cpu", "--params", str(ROOT / "params.yaml"), "--state", "state", timeout=120
    )
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().count("\n") == 0 and "model.pt: trained with other settings" in p.stderr
    assert {f: f.stat().st_mtime_ns for f in (uninterrupted / "state").rglob("*") if f.is_file()} == before


@pytest.mark.slow
def test_a_run_cut_by_its_budget_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path):
    """Budget 0: each call does one unit of work (a training step, an evaluation unit), then saves and stops."""
    shutil.copytree(uninterrupted / "data", tmp_path / "data")  # prepared and verified: not the point here
    seen = []
    for args in (("--budget-s", "0"), ("--parts", "train"), ("--budget-s", "0"), ("--budget-s", "0"), ()):
        p = gpu_paper(tmp_path, *DRY, "--state", "state", *args)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
        res = result(tmp_path / "state")
        units = len((res["evaluation"] or {}).get("unit_seconds", {}))
        seen.append((res["status"], res["training"]["steps_done"], units))
        if len(seen) == 1:  # a checkpoint in STATE: under other settings it is refused, not discarded
            p = gpu_paper(tmp_path, "--device", "cpu", "--params", str(ROOT / "params.yaml"), "--state", "state")
            assert p.returncode == 2 and "a checkpoint of mnist-linf-mma-0p45 made with other settings" in p.stderr
    steps = result(uninterrupted / "state")["training"]["train_steps"]
    assert seen[0][:1] == ("training",) and 0 < seen[0][1] < steps  # cut mid-training
    assert seen[1] == ("evaluating", steps, 0)  # trained, nothing evaluated
    assert seen[2] == ("evaluating", steps, 1) and seen[3] == ("evaluating", steps, 2)  # cut mid-evaluation
    assert seen[4][0] == "complete"
    cut, whole = result(tmp_path / "state"), result(uninterrupted / "state")
    assert cut["wall_s"]["calls"] == 5
    for key in ("clean_accuracy", "pgd", "margins"):
        assert cut["evaluation"][key] == whole["evaluation"][key], key
    a, b = model(tmp_path / "state"), model(uninterrupted / "state")
    assert a["step"] == b["step"] and a["identity"] == b["identity"]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


@pytest.mark.slow
def test_the_model_comes_back_into_the_dag_and_mma_evaluate_agrees(uninterrupted, tmp_path, monkeypatch):
    """Copied into results/models/NAME/seed0/, the model is evaluated by `mma evaluate` under the same
    model settings (presets/smoke.yaml, its Table 1 cut to this model: no other model's transfer sets),
    which finds its first restart's numbers image by image; under the paper's settings it is refused."""
    from mma.config.params import load_params
    from mma.io import BadFileError, load_tensors
    from mma.stages.files import load_checked_model

    state = uninterrupted / "state"
    shutil.copytree(state / "results" / "models", tmp_path / "results" / "models")
    shutil.copytree(uninterrupted / "data", tmp_path / "data")
    smoke = yaml.safe_load((ROOT / "presets" / "smoke.yaml").read_text())
    smoke["table1"]["sources"] = {"MMA": smoke["table1"]["sources"]["MMA"]}
    smoke["table1"]["columns"] = {NAME: "MMA"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(smoke))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    cmd = [sys.executable, "-m", "mma.cli", "evaluate", NAME, "--params", "params.yaml", "--device", "cpu"]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]

    ours, mine = result(state)["evaluation"], load_tensors(state / "results" / "gpu_paper" / NAME / "seed0.eval.pt")
    theirs = json.loads((tmp_path / "results" / "eval" / NAME / "seed0" / "metrics.json").read_text())
    per_example = load_tensors(tmp_path / "results" / "eval" / NAME / "seed0" / "per_example.pt")
    assert theirs["clean_accuracy"] == ours["clean_accuracy"]
    assert torch.equal(per_example["clean_correct"], mine["clean_pred"] == mine["y"])
    for eps, r in ours["pgd"].items():
        if r["record_x1"] in theirs["records"]:  # the Table-1 ε (0.3, 0.4); 0.1 is not a white-box row there
            assert theirs["records"][r["record_x1"]]["accuracy"] == r["accuracy_x1"], eps
            survived = per_example["survived"][r["record_x1"]]
            assert torch.equal(survived >= 1, mine["survived"][eps] >= 1), eps
    assert {"0.3", "0.4"} <= {e for e, r in ours["pgd"].items() if r["record_x1"] in theirs["records"]}

    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadFileError, match="other settings"):
        load_checked_model(load_params(ROOT / "params.yaml"), NAME, 0, "cpu")
