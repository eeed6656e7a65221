"""The pipeline: dvc.yaml and the Snakefile declare the same stages, commands and outputs,
and the smoke DAG runs end to end under both (in temporary copies of the repository) with
the same report and one finished MLflow run per stage invocation."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment running the tests holds mma, dvc, snakemake
REPORT_FILES = {"table1.md", "table1.csv", "figure3.png", "margins.png", "summary.json"}


def _tool(name: str) -> str:
    local = BIN / name
    return str(local) if local.exists() else name


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # each copy: its own store
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if not env.get("MMA_DATA_SOURCE"):
        from conftest import mnist_source

        env["MMA_DATA_SOURCE"] = str(mnist_source())
    return {**env, **extra}


def scratch_copy(dest: Path, profile: str | None = "smoke") -> Path:
    """The repository's files (tracked and not ignored) in ``dest``, with the profile as
    params.yaml, DVC set to run without git — what `make smoke` does."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        listed = (
            subprocess.run(
                ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                cwd=ROOT,
                capture_output=True,
                check=True,
            )
            .stdout.decode()
            .split("\0")
        )
        files = [f for f in listed if f and (ROOT / f).is_file() and not f.startswith("runs/")]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but outputs
        skip = {".git", ".venv", "results", "data", "runs", ".snakemake", "mlartifacts"}
        files = [
            str(p.relative_to(ROOT))
            for p in ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(ROOT).parts) and "mlflow.db" not in p.name
        ]
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)
    if profile:
        shutil.copy(ROOT / "presets" / f"{profile}.yaml", dest / "params.yaml")
    if not (dest / ".dvc").is_dir():
        subprocess.run([_tool("dvc"), "init", "--no-scm", "-q"], cwd=dest, check=True)
    subprocess.run([_tool("dvc"), "config", "--local", "core.no_scm", "true"], cwd=dest, check=True)
    return dest


# --------------------------------------------------------------------------- declarations
def _normalise(cmd: str) -> str:
    cmd = re.sub(r"\s*>\s*\S+\s+2>&1\s*$", "", cmd.strip())  # Snakemake's log redirection
    return re.sub(r"--params \S+", "--params FILE", cmd)


def dvc_declared(repo: Path) -> set[tuple[str, str, frozenset]]:
    """(stage kind, command, outputs) of every stage DVC would run."""
    from dvc.repo import Repo

    out = set()
    with Repo(str(repo)) as r:
        for stage in r.index.stages:
            if not getattr(stage, "cmd", None):
                continue
            outs = frozenset(str(o.def_path).rstrip("/") for o in stage.outs)
            out.add((stage.name.split("@")[0], _normalise(stage.cmd), outs))
    return out


def snakemake_declared(repo: Path, *extra: str) -> set[tuple[str, str, frozenset]]:
    """(rule, command, outputs) of every job of a forced dry run."""
    text = subprocess.run(
        [_tool("snakemake"), "--dry-run", "--forceall", "--printshellcmds", "--cores", "1", *extra],
        cwd=repo,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out, rule, outputs = set(), None, frozenset()
    for line in text.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            rule, outputs = m.group(1), frozenset()
        elif rule and line.strip().startswith("output:"):
            outputs = frozenset(p.strip() for p in line.split(":", 1)[1].split(","))
        elif rule and line.startswith("Shell command: ") and rule != "all":
            out.add((rule, _normalise(line.removeprefix("Shell command: ")), outputs))
            rule = None
    return out


def snakemake_jobs(repo: Path, *extra: str) -> list[str]:
    """The jobs a (non-forced) dry run would run, as 'rule' or 'rule:NAME:SEED' (transfer:
    'rule:ROLE:SEED'): the wildcards' values in order."""
    text = subprocess.run(
        [_tool("snakemake"), "--dry-run", "--cores", "1", *extra],
        cwd=repo,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    jobs, rule = [], None
    for line in text.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            rule = m.group(1)
            jobs.append(rule)
        elif rule and line.strip().startswith("wildcards: "):
            values = [kv.split("=", 1)[1] for kv in line.strip().removeprefix("wildcards: ").split(", ")]
            jobs[-1] = ":".join([rule, *values])
    return [j for j in jobs if j != "all"]


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["smoke", None])  # None: params.yaml, the paper's grid
def test_dvc_and_snakemake_declare_the_same_stages_and_outputs(tmp_path, profile):
    repo = scratch_copy(tmp_path / "repo", profile)
    dvc, smk = dvc_declared(repo), snakemake_declared(repo)
    assert dvc == smk, f"only in dvc.yaml: {sorted(dvc - smk)}\nonly in Snakefile: {sorted(smk - dvc)}"
    kinds = {k for k, _, _ in dvc}
    assert kinds == {"data", "spec", "train", "source", "transfer", "inputs", "evaluate", "report"}


def test_snakemake_lint_passes():
    result = subprocess.run([_tool("snakemake"), "--lint"], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_invalid_params_stop_snakemake_at_parse_time(tmp_path):
    repo = scratch_copy(tmp_path / "repo")
    text = (repo / "params.yaml").read_text().replace("norm: l2", "norm: l3", 1)
    (repo / "params.yaml").write_text(text)
    result = subprocess.run(
        [_tool("snakemake"), "-n", "--cores", "1"], cwd=repo, env=_env(), capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "norm = 'l3'" in result.stdout + result.stderr


# --------------------------------------------------------------------------- the smoke DAG
def _run(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Run ``cmd``; (wall seconds, CPU seconds of it and its children)."""
    import resource

    t0, cpu0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=1800)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        logs = (
            "".join(f"\n--- {p}\n{p.read_text()[-3000:]}" for p in sorted((cwd / "results" / "logs").rglob("*.log")))
            if (cwd / "results" / "logs").exists()
            else ""
        )
        pytest.fail(f"{' '.join(cmd)} failed:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}{logs}")
    return time.monotonic() - t0, (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """The smoke DAG by `dvc repro` and by `snakemake --cores 2`, each in a fresh copy."""
    base = tmp_path_factory.mktemp("smoke")
    dvc_repo = scratch_copy(base / "dvc")
    smk_repo = scratch_copy(base / "snakemake")
    walls = {
        "dvc": _run([_tool("dvc"), "repro"], dvc_repo),
        "snakemake": _run([_tool("snakemake"), "--cores", "2"], smk_repo),
    }
    print(
        "\nsmoke DAG: "
        + ", ".join(f"{tool}: {wall:.0f} s wall, {cpu:.0f} s CPU" for tool, (wall, cpu) in walls.items())
    )
    return {"dvc": dvc_repo, "snakemake": smk_repo, "walls": walls}


@pytest.mark.slow
def test_smoke_dag_writes_the_report(smoke_runs):
    for tool in ("dvc", "snakemake"):
        report = smoke_runs[tool] / "results" / "report"
        assert REPORT_FILES <= {p.name for p in report.iterdir()}, tool
        assert (report / "figure3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _numbers(obj, prefix=""):
    """Every number in a JSON document, by key path."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{prefix}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{prefix}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield prefix, float(obj)


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-3)


@pytest.mark.slow
def test_dvc_and_snakemake_give_the_same_report(smoke_runs):
    a, b = (smoke_runs[t] / "results" / "report" for t in ("dvc", "snakemake"))
    assert sorted(p.name for p in a.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in b.iterdir() if not p.name.startswith(".")
    )
    timing = re.compile(r"(wall|seconds|time)", re.I)
    na = {k: v for k, v in _numbers(json.loads((a / "summary.json").read_text())) if not timing.search(k)}
    nb = {k: v for k, v in _numbers(json.loads((b / "summary.json").read_text())) if not timing.search(k)}
    assert na.keys() == nb.keys()
    differ = {k: (na[k], nb[k]) for k in na if not _close(na[k], nb[k])}
    assert not differ, differ
    rows_a = list(csv.reader((a / "table1.csv").open()))
    rows_b = list(csv.reader((b / "table1.csv").open()))
    assert len(rows_a) == len(rows_b) and rows_a[0] == rows_b[0]
    for ra, rb in zip(rows_a, rows_b):
        for x, y in zip(ra, rb):
            try:
                assert _close(float(x), float(y)), (ra, rb)
            except ValueError:
                assert x == y, (ra, rb)


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["dvc", "snakemake"])
def test_one_finished_mlflow_run_per_stage_invocation(smoke_runs, tool):
    from mlflow.tracking import MlflowClient

    from mma.config.params import load_params

    repo = smoke_runs[tool]
    p = load_params(repo / "params.yaml")
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(p.experiment).experiment_id], max_results=1000)
    got = sorted(
        (r.data.tags["mma.stage"], r.data.tags.get("mma.model", ""), r.data.tags.get("mma.seed", "")) for r in runs
    )
    expected = sorted(
        [("data", "", ""), ("report", "", "")]
        + [("train", n, str(s)) for n, s in p.members()]
        + [("evaluate", n, str(s)) for n, s in p.members()]
        + [("transfer", src.model, str(s)) for src in p.table1.sources.values() for s in p.seeds]
    )
    assert got == expected
    assert {r.info.status for r in runs} == {"FINISHED"}
    train = [r for r in runs if r.data.tags["mma.stage"] == "train"]
    for r in train:
        assert client.get_metric_history(r.info.run_id, "loss"), r.data.tags["mma.model"]
        assert {"mma.dataset", "mma.norm", "mma.git_commit"} <= r.data.tags.keys()
        names = [f.path for f in client.list_artifacts(r.info.run_id, "model")]
        assert "model/model.pt" in names
    # every run's params are its stage's record, flattened: attack settings, test_limit, seed, compute
    from mma.stages import CONTRACTS
    from mma.tracking import _param_value, flatten

    for r in runs:
        contract = CONTRACTS[r.data.tags["mma.stage"]]
        target = r.data.tags.get("mma.role") or r.data.tags.get("mma.model")
        seed = int(r.data.tags["mma.seed"]) if "mma.seed" in r.data.tags else None
        want = {k: _param_value(v) for k, v in flatten(contract.record(p, target, seed)).items()}
        assert want.items() <= r.data.params.items(), r.info.run_name
        if contract.stage in ("transfer", "evaluate"):
            assert {f"attacks.{a}.steps" for a in p.attacks} | {
                "evaluate.test_limit",
                "seed",
                "compute.precision",
            } <= r.data.params.keys()


def _ran_dvc_stages(output: str) -> set[str]:
    """The stages a `dvc repro` ran (not those it found unchanged)."""
    return set(re.findall(r"^Running stage '([^']+)'", output, re.M))


@pytest.mark.slow
def test_editing_one_model_reruns_only_that_model(smoke_runs, tmp_path):
    """One lr edit.  DVC: every (cheap) spec, source and inputs stage runs, then only that model's
    train and evaluate stages and the report; no other evaluate (its inputs file is unchanged).
    Snakemake, given the edit in a COPIED params file (another name, same other values):
    only that model's spec, train, evaluate jobs and the report would run."""
    name = "mnist-l2-mma-2p0"  # not a Table-1 source: no transfer set changes
    for tool in ("dvc", "snakemake"):
        repo = smoke_runs[tool]
        original = (repo / "params.yaml").read_text()
        doc = yaml.safe_load(original)
        doc["models"][name]["optimizer"]["lr"] = 0.002
        if tool == "dvc":
            (repo / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
            try:
                out = subprocess.run(
                    [_tool("dvc"), "repro"], cwd=repo, env=_env(), check=True, capture_output=True, text=True
                ).stdout
            finally:
                (repo / "params.yaml").write_text(original)
                subprocess.run([_tool("dvc"), "repro"], cwd=repo, env=_env(), check=True, capture_output=True)
            ran = _ran_dvc_stages(out)
            print(f"\ndvc repro after one lr edit ran: {sorted(ran)}")
            cheap = {f"{stage}@{n}-0" for n in doc["models"] for stage in ("spec", "inputs")} | {
                f"source@{role}-0" for role in doc["table1"]["sources"]
            }
            assert ran - cheap == {f"train@{name}-0", f"evaluate@{name}-0", "report"}, ran
        else:
            copy = tmp_path / "my-params.yaml"
            (repo / "params.yaml").write_text(original)
            copy.write_text(original)  # same values, another file: nothing to do
            assert snakemake_jobs(repo, "--configfile", str(copy)) == []
            copy.write_text(yaml.safe_dump(doc, sort_keys=False))
            jobs = set(snakemake_jobs(repo, "--configfile", str(copy)))
            print(f"snakemake -n --configfile {copy.name} after one lr edit plans: {sorted(jobs)}")
            assert jobs == {f"spec:{name}:0", f"train:{name}:0", f"evaluate:{name}:0", "report"}, jobs


@pytest.mark.slow
def test_keys_that_cannot_change_a_model_rerun_nothing(smoke_runs, tmp_path):
    """checkpoint_every, log_every, threads, device: no stage of either tool is out of date."""
    for tool in ("dvc", "snakemake"):
        repo = smoke_runs[tool]
        original = (repo / "params.yaml").read_text()
        doc = yaml.safe_load(original)
        for spec in doc["models"].values():
            spec.update(checkpoint_every=3, log_every=2)
        doc.update(threads=1, device="cpu")
        try:
            (repo / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
            if tool == "dvc":
                out = subprocess.run(
                    [_tool("dvc"), "repro"], cwd=repo, env=_env(), check=True, capture_output=True, text=True
                ).stdout
                ran = _ran_dvc_stages(out)
                assert all(s.startswith(("spec@", "inputs@")) for s in ran), ran  # the cheap bookkeeping stages only
            else:
                assert snakemake_jobs(repo) == []
        finally:
            (repo / "params.yaml").write_text(original)


def test_resume_state_of_other_settings_is_discarded(tmp_path, monkeypatch):
    """A checkpoint is resumed only by the settings that made it (edit lr → start afresh);
    keys that cannot change the model (checkpoint_every, log_every, threads, device) keep it."""
    from mma.config.params import load_params
    from mma.stages import train as stage

    monkeypatch.chdir(tmp_path)
    p = load_params(ROOT / "presets" / "smoke.yaml")
    name = p.model_names[0]
    assert stage.prepare(p, name, 0) is False  # nothing to resume
    folder = stage.checkpoint_dir(name, 0)
    assert folder == tmp_path.joinpath("results", "checkpoints", name, "seed0").relative_to(tmp_path)
    (folder / "resume.pt").write_bytes(b"checkpoint")
    (folder / "run.json").write_text('{"run_id": "abc"}')
    assert stage.prepare(p, name, 0) is True  # same settings: resume, same MLflow run
    assert (folder / "run.json").exists()

    doc = yaml.safe_load((ROOT / "presets" / "smoke.yaml").read_text())
    for key, value in [("checkpoint_every", 7), ("log_every", 3)]:  # cannot change the model: resumed
        edited = {**doc, "models": {**doc["models"], name: {**doc["models"][name], key: value}}}
        (tmp_path / "edited.yaml").write_text(yaml.safe_dump({**edited, "threads": 1, "device": "cpu"}))
        assert stage.prepare(load_params(tmp_path / "edited.yaml"), name, 0) is True, key
    doc["models"][name]["optimizer"]["lr"] = 0.5
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(doc))
    assert stage.prepare(load_params(tmp_path / "edited.yaml"), name, 0) is False
    assert not (folder / "resume.pt").exists() and not (folder / "run.json").exists()
    stage.finish(name, 0)
    assert not folder.exists()


def _git_copy(src: Path, dest: Path) -> Path:
    """A copy of a finished no-scm run (its DVC cache included) as a git repository."""
    shutil.copytree(src, dest, symlinks=True)
    subprocess.run([_tool("dvc"), "config", "--local", "--unset", "core.no_scm"], cwd=dest, check=True)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke run"],
    ):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


@pytest.mark.slow
def test_dvc_metrics_and_plots_are_readable(smoke_runs, tmp_path):
    """`dvc metrics show` fits 200 columns at its natural width (one row per file, a few percent
    numbers with shared names); `dvc plots show` draws the robust-accuracy and training curves
    from the TSVs.  (`dvc exp show` with default columns does not fit: every metric of every
    member, every declared param and every dependency is a column; README: `dvc exp diff`.)"""
    repo = _git_copy(smoke_runs["dvc"], tmp_path / "git")
    env = _env(COLUMNS="1000")
    table = subprocess.run(
        [_tool("dvc"), "metrics", "show"], cwd=repo, env=env, check=True, capture_output=True, text=True
    ).stdout
    print(table)
    assert max(len(line) for line in table.splitlines()) <= 200
    metrics = json.loads(
        subprocess.run(
            [_tool("dvc"), "metrics", "show", "--json"], cwd=repo, env=env, check=True, capture_output=True, text=True
        ).stdout
    )
    files = next(iter(metrics.values()))["data"]
    p = yaml.safe_load((repo / "params.yaml").read_text())
    assert set(files) == {f"results/metrics/{n}/seed0.json" for n in p["models"]} | {
        f"results/models/{n}/seed0/metrics.json" for n in p["models"]
    }
    for name, entry in files.items():
        data = entry["data"]
        assert len(data) <= 9 and not {"git_commit", "params", "wall_seconds_this_attempt"} & set(data), name
        for key, value in data.items():
            if key in ("clean", "whitebox", "worst", "val_clean", "val_pgd") or "@" in key:
                assert 0 <= value <= 100, (name, key, value)  # percent
    plots = json.loads(
        subprocess.run(
            [_tool("dvc"), "plots", "show", "--json"], cwd=repo, env=env, check=True, capture_output=True, text=True
        ).stdout
    )["data"]
    for name in p["models"]:
        for kind in ("train", "val", "robust_vs_eps"):
            assert f"results/plots/{kind}/{name}/seed0.tsv" in plots, (kind, name)
