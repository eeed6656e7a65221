"""Working the way DVC, Snakemake and MLflow users work (issue 13): stages and params by
model name, reruns that follow values (not a params file's name, not keys that cannot
change a result), readable metrics, messages that name the next command, runs that tell
the truth, an installable package.  Fast checks with the real tools; the full-DAG ones
are in tests/test_pipeline.py (slow)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mma.cli import app

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "presets"  # the params presets (not Snakemake profiles)
SMOKE = PRESETS / "smoke.yaml"


def _tools():
    from test_pipeline import _env, _tool, scratch_copy, snakemake_jobs

    return _env, _tool, scratch_copy, snakemake_jobs


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- reruns follow values
def test_snakemake_reruns_nothing_for_a_copied_params_file_and_one_spec_for_one_edit(tmp_path):
    """The spec jobs (cheap) run for real; then a copy of the params file under another name
    plans nothing, and one lr edit in the copy plans only that model's spec job."""
    _env, _tool, scratch_copy, snakemake_jobs = _tools()
    repo = scratch_copy(tmp_path / "repo")
    names = list(yaml.safe_load((repo / "params.yaml").read_text())["models"])
    specs = [f"results/specs/{n}/seed0.json" for n in names]
    subprocess.run([_tool("snakemake"), "--cores", "1", *specs], cwd=repo, env=_env(), check=True,
                   capture_output=True)
    copy = tmp_path / "my-params.yaml"
    doc = yaml.safe_load((repo / "params.yaml").read_text())
    copy.write_text(yaml.safe_dump(doc, sort_keys=False))  # same values, another name and layout
    assert snakemake_jobs(repo, *specs, "--configfile", str(copy)) == []
    for spec in doc["models"].values():  # keys that cannot change a model: nothing to rerun either
        spec.update(checkpoint_every=7, log_every=3)
    doc.update(threads=2, device="cpu")
    copy.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert snakemake_jobs(repo, *specs, "--configfile", str(copy)) == []
    doc["models"]["mnist-linf-pgd-0p3"]["optimizer"]["lr"] = 0.002
    copy.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert snakemake_jobs(repo, *specs, "--configfile", str(copy)) == ["spec:mnist-linf-pgd-0p3:0"]


def test_dvc_stages_by_model_name_and_one_edit_changes_one_spec_file(tmp_path):
    """`dvc stage list` names per-member stages by model and seed; after an lr edit the spec
    stages rerun (cheap) but only that model's file changes, so only its train stage is out of
    date; checkpoint_every changes no file."""
    _env, _tool, scratch_copy, _ = _tools()
    repo = scratch_copy(tmp_path / "repo")
    listed = subprocess.run([_tool("dvc"), "stage", "list", "--name-only"], cwd=repo, env=_env(), check=True,
                            capture_output=True, text=True).stdout.split()
    for stage in ("train@mnist-linf-pgd-0p3-0", "evaluate@cifar10-l2-mma-1p0-0", "spec@mnist-linf-std-0",
                  "inputs@mnist-l2-mma-2p0-0", "transfer@PGD-0", "source@PGD-0"):
        assert stage in listed, listed
    subprocess.run([_tool("dvc"), "repro", "--glob", "spec@*"], cwd=repo, env=_env(), check=True, capture_output=True)
    before = {p.parent.name: _md5(p) for p in (repo / "results" / "specs").glob("*/seed0.json")}
    assert set(before) == set(yaml.safe_load((repo / "params.yaml").read_text())["models"])
    doc = yaml.safe_load((repo / "params.yaml").read_text())
    doc["models"]["mnist-linf-std"]["checkpoint_every"] = 7
    (repo / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    subprocess.run([_tool("dvc"), "repro", "--glob", "spec@*"], cwd=repo, env=_env(), check=True, capture_output=True)
    assert {p.parent.name: _md5(p) for p in (repo / "results" / "specs").glob("*/seed0.json")} == before
    doc["models"]["mnist-linf-pgd-0p3"]["optimizer"]["lr"] = 0.002
    (repo / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    subprocess.run([_tool("dvc"), "repro", "--glob", "spec@*"], cwd=repo, env=_env(), check=True, capture_output=True)
    after = {p.parent.name: _md5(p) for p in (repo / "results" / "specs").glob("*/seed0.json")}
    assert {n for n in after if after[n] != before[n]} == {"mnist-linf-pgd-0p3"}


def test_two_seeds_plan_one_job_per_model_and_seed_in_both_tools(tmp_path):
    """seeds: [0, 1]: `dvc stage list` and `snakemake -n` list one train (spec, inputs, evaluate)
    job per (model, seed) and one transfer (source) job per (role, seed), one data and one report."""
    _env, _tool, scratch_copy, snakemake_jobs = _tools()
    repo = scratch_copy(tmp_path / "repo")
    doc = yaml.safe_load((repo / "params.yaml").read_text())
    doc["seeds"] = [0, 1]
    (repo / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    members = {f"{n}-{s}" for n in doc["models"] for s in (0, 1)}
    roles = {f"{r}-{s}" for r in doc["table1"]["sources"] for s in (0, 1)}
    assert len(members) == 2 * 6 and len(roles) == 2 * 3
    expected = {"data", "report"} | {f"{kind}@{m}" for kind in ("spec", "train", "inputs", "evaluate") for m in members} \
        | {f"{kind}@{r}" for kind in ("source", "transfer") for r in roles}
    listed = subprocess.run([_tool("dvc"), "stage", "list", "--name-only"], cwd=repo, env=_env(), check=True,
                            capture_output=True, text=True).stdout.split()
    assert sorted(listed) == sorted(expected)
    jobs = snakemake_jobs(repo)  # nothing built yet: every job, once
    as_dvc = {j if ":" not in j else "{}@{}-{}".format(*j.split(":")) for j in jobs}
    assert len(jobs) == len(as_dvc) and as_dvc == expected
    cmds = subprocess.run([_tool("snakemake"), "-n", "-p", "--cores", "1", "results/models/mnist-linf-std/seed1/model.pt"],
                          cwd=repo, env=_env(), check=True, capture_output=True, text=True).stdout
    assert "mma train mnist-linf-std --seed 1 --params params.yaml" in cmds


def test_evaluate_inputs_record_holds_only_its_threat_models_sets(tmp_path, monkeypatch):
    """What DVC's evaluate@NAME-S depends on (results/specs/NAME/seedS.evaluate.json): the seed-S
    sets of its own threat model's sources, by hash; another threat model's or seed's are not in it."""
    from mma.params import load_params
    from mma.stages.evaluate import inputs_record

    monkeypatch.chdir(tmp_path)
    doc = yaml.safe_load(SMOKE.read_text())
    (tmp_path / "two-seeds.yaml").write_text(yaml.safe_dump({**doc, "seeds": [0, 1]}))
    p = load_params(tmp_path / "two-seeds.yaml")
    assert {r: s.model for r, s in p.table1.sources.items()} == {"MMA": "mnist-linf-mma-0p45", "PGD": "mnist-linf-pgd-0p3",
                                                                 "STD": "mnist-linf-std"}  # MMA: its own, not read
    for role in ("STD", "PGD"):
        for seed in (0, 1):
            folder = tmp_path / "results" / "transfer" / role / f"seed{seed}"
            folder.mkdir(parents=True)
            (folder / "manifest.json").write_text(f"{role} {seed}")
    linf = inputs_record(p, "mnist-linf-mma-0p45", 0)
    assert set(linf["transfer_files"]) == {"results/transfer/STD/seed0/manifest.json",
                                           "results/transfer/PGD/seed0/manifest.json"}
    assert set(inputs_record(p, "mnist-linf-mma-0p45", 1)["transfer_files"]) == {
        "results/transfer/STD/seed1/manifest.json", "results/transfer/PGD/seed1/manifest.json"}
    assert inputs_record(p, "mnist-l2-mma-2p0", 0)["transfer_files"] == {}
    before = inputs_record(p, "mnist-l2-mma-2p0", 0)
    (tmp_path / "results" / "transfer" / "STD" / "seed1" / "manifest.json").write_text("changed")
    assert inputs_record(p, "mnist-l2-mma-2p0", 0) == before
    assert inputs_record(p, "mnist-linf-mma-0p45", 0) == linf  # another seed's set: not read by seed 0
    (tmp_path / "results" / "transfer" / "STD" / "seed0" / "manifest.json").write_text("changed")
    assert inputs_record(p, "mnist-linf-mma-0p45", 0) != linf


# --------------------------------------------------------------------------- metrics, plots, units
def test_training_curves_in_percent_appended_once_per_flush(tmp_path):
    """The training loop logs fractions; the stage's files use percent.  Points logged after the
    last flush (a crash) are not in the file; a resumed run appends after the flushed ones."""
    from mma.stages.train import Curves, percent

    assert percent({"val_clean_acc": 0.76, "train_acc": 0.5, "loss": 0.3, "eps": 0.2}) == \
        {"val_clean_acc": 76.0, "train_acc": 50.0, "loss": 0.3, "eps": 0.2}
    sent = []
    c = Curves(tmp_path, log=lambda v, s: sent.append((s, v)), flush=lambda: sent.append("flush"))
    c.log({"loss": 1.0, "train_acc": 0.25}, 10)
    c.log({"val_clean_acc": 0.5}, 10)
    c.flush()
    c.log({"loss": 0.5, "train_acc": 0.5}, 20)  # lost with the crash
    resumed = Curves(tmp_path)
    resumed.log({"loss": 0.4, "train_acc": 0.75}, 20)
    resumed.flush()
    assert (tmp_path / "train.tsv").read_text() == "step\tloss\ttrain_acc\n10\t1\t25\n20\t0.4\t75\n"
    assert (tmp_path / "val.tsv").read_text() == "step\tval_clean_acc\n10\t50\n"
    assert sent[0] == (10, {"loss": 1.0, "train_acc": 25.0})  # MLflow gets percent too


def test_cifar_linf_margin_legend_uses_the_axis_units():
    import torch

    from mma.report.figures import margin_label

    v = torch.tensor([0.1, 0.112, 0.2], dtype=torch.float64) * 255.0
    label = margin_label("cifar10-linf-mma-32", "margin", v, 255.0)
    assert "mean 35/255," in label and "median 28.6/255" in label
    assert "mean 0.137," in margin_label("m", "margin", v / 255.0, 1.0)


# --------------------------------------------------------------------------- messages
def test_evaluate_before_training_names_the_train_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    for args, name in ((["evaluate", "mnist-linf-std"], "mnist-linf-std"),
                       (["transfer", "mnist-linf-pgd-0p3"], "mnist-linf-pgd-0p3"),
                       (["transfer", "--role", "PGD", "--seed", "0"], "mnist-linf-pgd-0p3")):
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
    for args in (["train", "mnist-linf-std"], ["evaluate", "mnist-linf-std"], ["spec", "mnist-linf-std"],
                 ["transfer", "--role", "PGD"]):
        result = CliRunner().invoke(app, [*args, "--params", "two.yaml"])
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.strip() == ("mma: error: the grid has 2 seeds (0, 3); pass --seed S to pick one"), args
    result = CliRunner().invoke(app, ["train", "mnist-linf-std", "--seed", "1", "--params", "two.yaml"])
    assert result.exit_code == 2 and "--seed 1: not one of the grid's seeds (0, 3)" in result.stderr
    assert not (tmp_path / "results").exists()
    result = CliRunner().invoke(app, ["spec", "mnist-linf-std", "--seed", "3", "--params", "two.yaml"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "results/specs/mnist-linf-std/seed3.json").read_text())["model"]["seed"] == 3


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


# --------------------------------------------------------------------------- MLflow
_STAGE_RUN = textwrap.dedent("""
    import os, sys, time
    from mma.tracking import stage_run
    with stage_run("ux", "evaluate", name="m", tags={"mma.model": "m"}) as t:
        open(sys.argv[1], "w").write("started")
        time.sleep(600)
""")


def _store(tmp_path, monkeypatch):
    from mma import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    tracking.open_store.cache_clear()
    client, exp = tracking.open_store("ux")
    return client, exp


def test_a_stage_after_kill_9_marks_its_stale_running_run_killed(tmp_path, monkeypatch):
    from mma.tracking import stage_run

    client, exp = _store(tmp_path, monkeypatch)
    flag = tmp_path / "started"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", _STAGE_RUN, str(flag)], env=env, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert flag.exists(), "the stage never started"
    proc.kill()  # SIGKILL: no handler runs, the run stays RUNNING
    proc.wait()
    (stale,) = client.search_runs([exp])
    assert stale.info.status == "RUNNING"
    with stage_run("ux", "evaluate", name="other", tags={"mma.model": "other"}):
        pass  # another model's stage leaves it alone
    assert client.get_run(stale.info.run_id).info.status == "RUNNING"
    with stage_run("ux", "evaluate", name="m", tags={"mma.model": "m"}):
        assert client.get_run(stale.info.run_id).info.status == "KILLED"
    runs = client.search_runs([exp])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED", "KILLED"]


def test_runs_carry_the_pipeline_run_and_dvc_experiment(tmp_path, monkeypatch):
    from mma.tracking import stage_run

    client, exp = _store(tmp_path, monkeypatch)
    monkeypatch.setenv("MMA_PIPELINE_RUN", "snakemake:abc")
    with stage_run("ux", "report", tags={}) as t:
        run_a = t.run_id
    monkeypatch.delenv("MMA_PIPELINE_RUN")
    monkeypatch.setenv("DVC_EXP_NAME", "lr-edit")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0123abc")
    with stage_run("ux", "report", tags={}) as t:
        run_b = t.run_id
    a, b = client.get_run(run_a).data.tags, client.get_run(run_b).data.tags
    assert a["mma.pipeline_run"] == "snakemake:abc" and "mma.dvc_exp" not in a
    assert b["mma.pipeline_run"] == "dvc-exp:lr-edit"
    assert b["mma.dvc_exp"] == "lr-edit" and b["mma.dvc_exp_baseline"] == "0123abc"
    assert b["mma.git_commit"].endswith("-dirty") or b["mma.git_commit"] == "unknown"


def test_evaluation_run_tags_and_params_file_of_a_temporary_copy(tmp_path, monkeypatch):
    """A `dvc exp run --temp` workspace (<repo>/.dvc/tmp/exps/...) is deleted afterwards: the
    run names its params file relative to the repository and keeps the file as an artifact."""
    from mma.tracking import params_file_tag

    repo = tmp_path / "repo"
    work = repo / ".dvc" / "tmp" / "exps" / "tmpabc"
    work.mkdir(parents=True)
    (repo / ".git").mkdir()
    (work / "params.yaml").write_text("x")
    monkeypatch.chdir(work)
    assert params_file_tag(work / "params.yaml") == "params.yaml"
    assert params_file_tag("params.yaml") == "params.yaml"

    # the CLI's tags for a model stage (evaluate here: stopped at its first check, no run yet)
    import mma.cli as cli

    seen = {}

    def fake_stage_run(experiment, stage, *, name, seed, tags, params, run_id_file):
        seen.update(tags)
        raise SystemExit(0)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    model = tmp_path / "results" / "models" / "mnist-l2-mma-2p0" / "seed0" / "model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"")
    monkeypatch.setattr("mma.tracking.stage_run", fake_stage_run)
    monkeypatch.setattr(cli, "_device", lambda p, d: "cpu")
    with pytest.raises(SystemExit):
        cli._run_stage(cli.STAGES["evaluate"], SMOKE, "mnist-l2-mma-2p0")
    assert {"mma.method": "mma", "mma.norm": "l2", "mma.dataset": "mnist", "mma.seed": 0,
            "mma.group": "mnist-l2-mma-2p0", "mma.eval_seed": 0}.items() <= seen.items()


# --------------------------------------------------------------------------- environment
def test_conda_env_pins_the_lock_files_versions():
    sys.path.insert(0, str(ROOT / "scripts"))
    from lock_env import pins

    lock = pins((ROOT / "requirements.lock").read_text())
    env = yaml.safe_load((ROOT / "workflow" / "envs" / "mma.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert [p for p in pip if "==" in p] == lock
    assert len(lock) > 100 and any(p.startswith("snakemake==") for p in lock) and any(p.startswith("dvc==") for p in lock)
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
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True)
    (wheel,) = wheels.glob("mma-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "mma/report/reference/table1_mnist_linf.csv" in names and "mma/report/reference/final_paper_anchors.csv" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    code = ("import mma, sys; from mma.report.reference import table1_rows, anchors; "
            "assert str(mma.__file__).startswith(sys.argv[1]), mma.__file__; "
            "print(len(table1_rows()), len(anchors()))")
    out = subprocess.run([sys.executable, "-c", code, str(target)], env=env, cwd=tmp_path, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    rows, anchors = map(int, out.stdout.split())
    assert rows > 0 and anchors > 0


def test_curves_recover_points_a_kill_left_between_checkpoint_and_flush(tmp_path):
    """A kill after the checkpoint at step 20 but before its flush: the journal holds steps
    11..25; on resume at 20, steps 11..20 reach the TSV and MLflow once, 21..25 are dropped
    (they are computed again), and what MLflow already holds is not sent twice."""
    from mma.stages.train import Curves

    sent = []
    first = Curves(tmp_path, log=lambda values, step: sent.append(step), flush=lambda: None)
    for step in range(1, 11):
        first.log({"loss": 1.0 / step, "acc": 0.5}, step)
    first.flush()  # the checkpoint at step 10 and its flush
    for step in range(11, 26):
        first.log({"loss": 1.0 / step, "acc": 0.5}, step)  # killed before the flush of step 20
    assert (tmp_path / "journal.jsonl").exists()
    with (tmp_path / "journal.jsonl").open("a") as f:
        f.write('{"kind": "train", "st')  # the line the kill cut
    sent.clear()
    held = {"loss": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]}  # MLflow got 11, 12 from a flush cut mid-way
    resumed = Curves(tmp_path, log=lambda values, step: sent.append(step), flush=lambda: None)
    resumed.recover(20, lambda key: held.get(key, []))
    assert sent == list(range(13, 21))
    rows = (tmp_path / "train.tsv").read_text().splitlines()
    assert [int(r.split("\t")[0]) for r in rows[1:]] == list(range(1, 21))
    assert float(rows[1 + 19].split("\t")[rows[0].split("\t").index("acc")]) == 50.0  # percent
    assert not (tmp_path / "journal.jsonl").exists()
