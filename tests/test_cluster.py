"""The cluster path against the real engines, started here and stopped at the end:

* a one-node SLURM cluster (munged, slurmctld, slurmd: tests/cluster/slurm.sh), every job of
  the smoke DAG submitted with sbatch by Snakemake's SLURM executor plugin through the
  project's profile (workflow/profiles/slurm), and the same Table 1 as a local `dvc repro`;
* an MLflow server on a PostgreSQL backend store (tests/cluster/tracking.sh) receiving every
  job's run;
* `scancel` of a training job mid-run: it checkpoints, its MLflow run ends KILLED, and the
  rerun resumes from the checkpoint in the same MLflow run — the user's rerun, and the
  resubmission by Snakemake itself (the profile's `retries: 1`);
* a DVC remote (a local path) round trip of the cluster run's outputs: `dvc commit` + push,
  pull into a fresh copy, and `mma report` regenerates the report there without retraining.

Marked ``cluster`` (and ``slow``): they need root and Debian's slurm-wlm, munge and
postgresql (`make cluster-deps`) and the `cluster` extra; skipped without them, except in CI
(CI=true), where a missing engine is a failure.  Every command runs under `timeout -k`; the
daemons are stopped by the fixtures whatever happens.

SIGTERM handling itself (no scheduler) is tested first, unmarked, on a local `mma train`.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from test_pipeline import ROOT, _close, _env, _tool, scratch_copy

from mma import paths

SCRIPTS = ROOT / "tests" / "cluster"
PROFILE = "workflow/profiles/slurm"
# the test cluster has no slurmdbd (no sacct): squeue answers the status checks (its
# MinJobAge=600 is over 3x this initial wait); 2 s instead of 40 s keeps the test short
SLURM_TEST_ARGS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2"]
PG_PORT, MLFLOW_PORT = "15433", "15001"  # not the scripts' defaults: a cluster tried by hand stays apart
TRACKING_DIR = "/tmp/mma-tracking-pytest"
DAG_TIMEOUT_S = 1500  # the smoke DAG on the cluster: ~6 min on 2 idle cores


def _bounded(seconds: int, *cmd: str) -> list[str]:
    """``cmd`` under `timeout -k`: SIGTERM after ``seconds``, SIGKILL 10 s later."""
    return ["timeout", "-k", "10", str(seconds), *cmd]


def _missing(what: str):
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI installs it: `make cluster-deps`, `make setup`)")
    pytest.skip(what)


def _require_engines() -> None:
    if os.geteuid() != 0:
        _missing("the cluster tests start slurmd/slurmctld and PostgreSQL: they need root")
    for b in ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scancel", "scontrol"):
        if not (shutil.which(b) or Path("/usr/sbin", b).exists()):
            _missing(f"{b} not found (Debian: slurm-wlm, munge)")
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        _missing("PostgreSQL not found (Debian: postgresql)")
    try:
        import psycopg2  # noqa: F401
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError as e:
        _missing(f"{e.name} not installed (pip install -e '.[cluster]')")


def _stop(proc: subprocess.Popen) -> None:
    """End a command started under `timeout` (which passes SIGTERM on), bounded."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def _script(name: str, action: str, env: dict, seconds: int = 120) -> str:
    result = subprocess.run(
        _bounded(seconds, "bash", str(SCRIPTS / name), action), env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{name} {action}: {result.stdout}\n{result.stderr}"
    return result.stdout


# --------------------------------------------------------------------------- SIGTERM, no scheduler
def _mlflow_runs(uri: str, experiment: str) -> tuple:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {uri}"
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def _long_training(repo: Path, experiment: str, steps: int, device: str = "cpu") -> str:
    """params.yaml: the smoke grid, mnist-linf-std trained for ``steps`` steps (metrics of every step), checkpointed
    only at the end (a checkpoint before that can only come from SIGTERM)."""
    doc = yaml.safe_load((repo / "params.yaml").read_text())
    doc["experiment"], doc["device"] = experiment, device
    name = "mnist-linf-std"
    model = doc["models"][name]
    model.update(train_steps=steps, eval_every=steps, checkpoint_every=10 * steps, log_every=1)  # every step logged
    (repo / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return name


def _progress(log: Path, total: int) -> int:
    """The last step the training log reports (a line every 10 % of the steps)."""
    found = re.findall(rf"(\d+)/{total}\b", log.read_text()) if log.exists() else []
    return int(found[-1]) if found else 0


def _loss_steps(client, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "loss"))


def test_sigterm_ends_any_stage_run_killed_and_exits_143(tmp_path, monkeypatch):
    """Any stage, not only train: SIGTERM inside its MLflow run ends the run KILLED (as Ctrl-C
    does) and the command exits 143; the previous SIGTERM handler is back afterwards."""
    from mma import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        with tracking.stage_run("mma-sigterm-stage", "evaluate", name="m", tags={"mma.model": "m"}):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the handler raises in here, at once
            pytest.fail("SIGTERM did not stop the stage")
    assert stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    _, found = _mlflow_runs(os.environ["MLFLOW_TRACKING_URI"], "mma-sigterm-stage")
    assert [(r.data.tags["mma.stage"], r.info.status) for r in found] == [("evaluate", "KILLED")]


def _stopped_at_a_checkpoint(train_log: Path, steps: int, repo: Path, name: str, tracking: str, experiment: str) -> str:
    """A SIGTERM stopped training at a step k in [steps/10, steps): the log says so, the seed-0
    member's resume checkpoint exists and its one MLflow run is KILLED with steps 1..k logged
    (flushed with the checkpoint).  Returns the run's id."""
    text = train_log.read_text()
    stopped = re.search(r"stopped by SIGTERM after step (\d+)", text)
    assert stopped and "ended KILLED" in text, text
    k = int(stopped.group(1))
    assert steps // 10 <= k < steps
    assert (repo / paths.resume_file(name, 0)).exists()
    client, found = _mlflow_runs(tracking, experiment)
    train = [r for r in found if r.data.tags["mma.stage"] == "train"]
    assert [r.info.status for r in train] == ["KILLED"]
    assert _loss_steps(client, train[0].info.run_id) == list(range(1, k + 1))
    return train[0].info.run_id


@pytest.mark.slow
def test_sigterm_checkpoints_training_and_the_rerun_resumes_the_same_mlflow_run(tmp_path):
    repo = scratch_copy(tmp_path / "repo")
    steps = 150
    name = _long_training(repo, "mma-sigterm", steps)
    env = _env()
    subprocess.run(_bounded(300, _tool("mma"), "data"), cwd=repo, env=env, check=True, capture_output=True)
    log = repo / "train.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            _bounded(600, _tool("mma"), "train", name), cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 300
        while _progress(log, steps) < steps // 10 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)  # to `timeout`, which passes it on to mma
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM, log.read_text()
    finally:
        _stop(proc)
    _stopped_at_a_checkpoint(log, steps, repo, name, f"sqlite:///{repo / 'mlflow.db'}", "mma-sigterm")

    rerun = subprocess.run(
        _bounded(600, _tool("mma"), "train", name), cwd=repo, env=env, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from" in rerun.stderr
    client, runs = _mlflow_runs(f"sqlite:///{repo / 'mlflow.db'}", "mma-sigterm")
    train = [r for r in runs if r.data.tags["mma.stage"] == "train"]
    assert len(train) == 1 and train[0].info.status == "FINISHED"
    assert train[0].data.tags["mma.resumed"] == "true"
    assert _loss_steps(client, train[0].info.run_id) == list(range(1, steps + 1))  # each step once
    assert not (repo / paths.resume_file(name, 0).parent).exists()


# --------------------------------------------------------------------------- the engines
@pytest.fixture(scope="module")
def slurm():
    """A one-node SLURM cluster for this module; stopped (jobs cancelled) at the end."""
    _require_engines()
    env = _env()
    try:
        _script("slurm.sh", "start", env)
        yield
    finally:
        _script("slurm.sh", "stop", env)


@pytest.fixture(scope="module")
def tracking():
    """An MLflow server on PostgreSQL, both on 127.0.0.1; its URI.  Stopped and removed at the end.
    It starts empty: `start` leaves a running server as it is, so one left by an interrupted
    test session (with the runs it holds) is stopped and its data removed first."""
    _require_engines()
    env = _env(MMA_TRACKING_DIR=TRACKING_DIR, MMA_PG_PORT=PG_PORT, MMA_MLFLOW_PORT=MLFLOW_PORT)
    _script("tracking.sh", "stop", env)
    try:
        out = _script("tracking.sh", "start", env, seconds=150)
        uri = out.strip().splitlines()[-1].split("=", 1)[1]
        assert uri == f"http://127.0.0.1:{MLFLOW_PORT}"
        yield uri
    finally:
        _script("tracking.sh", "stop", env)


def _psql(sql: str) -> str:
    """A query against the tracking server's PostgreSQL database (as the postgres user, on its socket)."""
    pg_bin = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))[-1]
    result = subprocess.run(
        _bounded(
            30,
            "runuser",
            "-u",
            "postgres",
            "--",
            str(pg_bin),
            "-h",
            TRACKING_DIR,
            "-p",
            PG_PORT,
            "-d",
            "mlflow",
            "-tAc",
            sql,
        ),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _jobs() -> dict[str, dict]:
    """Every job slurmctld still knows (MinJobAge=600 s): {job id: scontrol's fields}."""
    out = subprocess.run(
        _bounded(30, "scontrol", "-o", "show", "job"), capture_output=True, text=True, check=True
    ).stdout
    jobs = {}
    for line in out.splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if "JobId" in fields:
            jobs[fields["JobId"]] = fields
    return jobs


def _submitted(log_text: str) -> dict[str, str]:
    """{SLURM job id: 'rule' or 'rule:NAME:SEED' (transfer: 'rule:ROLE:SEED'), as test_pipeline's
    snakemake_jobs} from Snakemake's log of a SLURM run (the plugin joins the wildcards with '_':
    rule_train/NAME_SEED/; the seed is the last wildcard and holds no '_')."""
    found = re.findall(
        r"has been submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/?([^/\s]*)/", log_text
    )
    return {jid: ":".join([rule, *wildcards.rsplit("_", 1)]) if wildcards else rule for jid, rule, wildcards in found}


def _snakemake_on_slurm(
    repo: Path, env: dict, *extra: str, seconds: int = DAG_TIMEOUT_S, check: bool = True
) -> tuple[int, str]:
    log = repo / "snakemake-slurm.log"
    with log.open("a") as out:
        rc = subprocess.run(
            _bounded(seconds, _tool("snakemake"), "--workflow-profile", PROFILE, *SLURM_TEST_ARGS, *extra),
            cwd=repo,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        ).returncode
    text = log.read_text()
    if check and rc != 0:
        logs = "".join(
            f"\n--- {p}\n{p.read_text()[-2000:]}" for p in sorted((repo / "results" / "logs").rglob("*.log"))
        )
        pytest.fail(f"snakemake on SLURM exited {rc}:\n{text[-6000:]}{logs}")
    return rc, text


# --------------------------------------------------------------------------- the smoke DAG
@pytest.fixture(scope="module")
def runs(slurm, tracking, tmp_path_factory):
    """The smoke DAG twice: by Snakemake on the SLURM cluster (params.device=auto, so GPU rules
    ask for a GPU; there is none, so `mma` runs on CPU), tracked in the MLflow server; and by
    `dvc repro` locally (its own sqlite store), at the same time (the cluster run mostly waits)."""
    base = tmp_path_factory.mktemp("cluster")
    local, cluster = scratch_copy(base / "local"), scratch_copy(base / "cluster")
    text = (cluster / "params.yaml").read_text()
    assert "\ndevice: cpu\n" in text
    (cluster / "params.yaml").write_text(text.replace("\ndevice: cpu\n", "\ndevice: auto\n"))
    with (local / "dvc.log").open("w") as out:
        dvc = subprocess.Popen(
            _bounded(DAG_TIMEOUT_S, _tool("dvc"), "repro"), cwd=local, env=_env(), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        t0 = time.monotonic()
        _, log = _snakemake_on_slurm(cluster, _env(MLFLOW_TRACKING_URI=tracking))
        wall = time.monotonic() - t0
        assert dvc.wait(timeout=DAG_TIMEOUT_S + 30) == 0, (local / "dvc.log").read_text()[-5000:]
    finally:
        _stop(dvc)
    jobs = _submitted(log)
    print(
        f"\nsmoke DAG on SLURM: {wall:.0f} s wall, {len(jobs)} sbatch jobs: "
        + ", ".join(f"{j}={r}" for j, r in sorted(jobs.items(), key=lambda x: int(x[0])))
    )
    return {"local": local, "cluster": cluster, "log": log, "jobs": jobs, "wall": wall, "uri": tracking}


@pytest.mark.cluster
@pytest.mark.slow
def test_every_job_of_the_smoke_dag_ran_as_a_slurm_job(runs):
    from test_pipeline import snakemake_jobs

    expected = sorted(snakemake_jobs(runs["cluster"], "--forceall"))
    got = sorted(runs["jobs"].values())
    assert got == expected, (got, expected)
    known = _jobs()
    for jid, job in runs["jobs"].items():
        fields = known[jid]
        assert fields["JobState"] == "COMPLETED", (job, fields["JobState"])
        assert fields["Comment"].startswith(f"rule_{job.split(':')[0]}"), fields["Comment"]
        gpu = job.split(":")[0] in {"train", "transfer", "evaluate"}  # params.device=auto: GPU rules
        assert (fields.get("TresPerJob") == "gres:gpu:1") == gpu, (job, fields.get("TresPerJob"))
        if job.startswith("train:cifar10"):
            assert fields["MinMemoryNode"] == "6000M", fields  # a WideResNet asks for more than a LeNet
        elif job.startswith("train:mnist"):
            assert fields["MinMemoryNode"] == "4000M", fields


@pytest.mark.cluster
@pytest.mark.slow
def test_cluster_run_gives_the_local_report(runs):
    a, b = (runs[k] / "results" / "report" for k in ("local", "cluster"))
    rows_a = list(csv.reader((a / "table1.csv").open()))
    rows_b = list(csv.reader((b / "table1.csv").open()))
    assert len(rows_a) == len(rows_b) > 1 and rows_a[0] == rows_b[0]
    for ra, rb in zip(rows_a, rows_b):
        assert len(ra) == len(rb)
        for x, y in zip(ra, rb):
            try:
                assert _close(float(x), float(y)), (ra, rb)
            except ValueError:
                assert x == y, (ra, rb)


@pytest.mark.cluster
@pytest.mark.slow
def test_every_job_tracked_in_the_mlflow_server_on_postgresql(runs):
    from mma.config.params import load_params

    repo = runs["cluster"]
    p = load_params(repo / "params.yaml")
    client, found = _mlflow_runs(runs["uri"], p.experiment)
    got = sorted((r.data.tags["mma.stage"], r.data.tags.get("mma.model", "")) for r in found)
    expected = sorted(
        [("data", ""), ("report", "")]
        + [("train", n) for n in p.model_names]
        + [("evaluate", n) for n in p.model_names]
        + [("transfer", s.model) for s in p.table1.sources.values()]
    )
    assert got == expected
    assert {r.info.status for r in found} == {"FINISHED"}
    default = client.get_experiment_by_name("Default")
    assert default is None or not client.search_runs([default.experiment_id])  # created once, before the jobs
    for r in found:
        if r.data.tags["mma.stage"] == "train":
            assert client.get_metric_history(r.info.run_id, "loss")
            assert "model/model.pt" in [f.path for f in client.list_artifacts(r.info.run_id, "model")]
    # the runs are rows of the PostgreSQL database behind the server
    rows = _psql(
        "SELECT count(*) FROM runs JOIN experiments USING (experiment_id) "
        f"WHERE experiments.name = '{p.experiment}' AND runs.status = 'FINISHED'"
    )
    assert int(rows) == len(expected)


# --------------------------------------------------------------------------- scancel, resume
def _scancel_training(repo, tracking, experiment: str, steps: int, *snakemake_args: str, wait: int):
    """Start the long training through the SLURM profile, scancel its job once a tenth of the
    steps are done, and wait for Snakemake: (model name, cancelled job id, Snakemake's exit
    code, the training log, Snakemake's log)."""
    name = _long_training(repo, experiment, steps, device="auto")
    target = f"results/models/{name}/seed0/model.pt"
    train_log = repo / "results" / "logs" / "train" / name / "seed0.log"
    log = repo / "snakemake-slurm.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            _bounded(600, _tool("snakemake"), "--workflow-profile", PROFILE, *SLURM_TEST_ARGS, *snakemake_args, target),
            cwd=repo,
            env=_env(MLFLOW_TRACKING_URI=tracking),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 400
        while _progress(train_log, steps) < steps // 10 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()[-5000:]
        first = [j for j, r in _submitted(log.read_text()).items() if r == f"train:{name}:0"]
        assert len(first) == 1, log.read_text()[-3000:]
        subprocess.run(_bounded(30, "scancel", first[0]), check=True)
        rc = proc.wait(timeout=wait)
    finally:
        _stop(proc)
    return name, first[0], rc, train_log, log


@pytest.mark.cluster
@pytest.mark.slow
def test_scancel_of_training_then_the_rerun_resumes_the_same_mlflow_run(slurm, tracking, tmp_path):
    repo = scratch_copy(tmp_path / "repo")
    steps = 300
    experiment = "mma-cluster-resume"
    env = _env(MLFLOW_TRACKING_URI=tracking)
    # no retries: the rerun below is the user's
    name, first, rc, train_log, log = _scancel_training(repo, tracking, experiment, steps, "--retries", "0", wait=300)
    target = f"results/models/{name}/seed0/model.pt"
    assert rc != 0  # the job was cancelled: Snakemake reports it failed
    assert _jobs()[first]["JobState"] == "CANCELLED"
    run_id = _stopped_at_a_checkpoint(train_log, steps, repo, name, tracking, experiment)

    _, text = _snakemake_on_slurm(repo, env, target, seconds=600)  # the rerun
    second = [j for j, r in _submitted(text).items() if r == f"train:{name}:0" and j != first]
    assert len(second) == 1 and _jobs()[second[0]]["JobState"] == "COMPLETED"
    assert "resuming from" in train_log.read_text()
    client, found = _mlflow_runs(tracking, experiment)
    train = [r for r in found if r.data.tags["mma.stage"] == "train"]
    assert [(r.info.run_id, r.info.status) for r in train] == [(run_id, "FINISHED")]
    assert train[0].data.tags["mma.resumed"] == "true"
    assert _loss_steps(client, run_id) == list(range(1, steps + 1))  # each step logged once
    assert (repo / target).exists()


@pytest.mark.cluster
@pytest.mark.slow
def test_scancel_with_the_profiles_retries_resubmits_and_resumes(slurm, tracking, tmp_path):
    """The profile's `retries: 1`: Snakemake itself resubmits the cancelled training job, which
    resumes from its checkpoint; one Snakemake run, one MLflow run, every step once."""
    repo = scratch_copy(tmp_path / "repo")
    steps = 300
    experiment = "mma-cluster-retry"
    name, first, rc, train_log, log = _scancel_training(repo, tracking, experiment, steps, wait=600)
    assert rc == 0, log.read_text()[-5000:]
    text = log.read_text()
    assert "Trying to restart job" in text
    attempts = [j for j, r in _submitted(text).items() if r == f"train:{name}:0"]
    assert len(attempts) == 2 and attempts[0] == first
    jobs = _jobs()
    assert [jobs[j]["JobState"] for j in attempts] == ["CANCELLED", "COMPLETED"]
    assert "resuming from" in train_log.read_text()
    client, found = _mlflow_runs(tracking, experiment)
    train = [r for r in found if r.data.tags["mma.stage"] == "train"]
    assert [r.info.status for r in train] == ["FINISHED"] and train[0].data.tags["mma.resumed"] == "true"
    assert _loss_steps(client, train[0].info.run_id) == list(range(1, steps + 1))


# --------------------------------------------------------------------------- DVC remote
@pytest.mark.cluster
@pytest.mark.slow
def test_dvc_remote_round_trip_regenerates_the_report_without_retraining(runs, tmp_path):
    """On the cluster: `dvc commit` records what Snakemake made (dvc.lock), `dvc push` sends it to
    the remote.  On a laptop (a fresh copy with that dvc.lock and params.yaml, as git would bring
    them): `dvc pull`, nothing is out of date, and `mma report` regenerates the same Table 1."""
    cluster, laptop = runs["cluster"], scratch_copy(tmp_path / "laptop")
    env, dvc = _env(), _tool("dvc")

    def run(repo: Path, *cmd: str, seconds: int = 300) -> str:
        result = subprocess.run(_bounded(seconds, *cmd), cwd=repo, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{' '.join(cmd)}: {result.stdout}\n{result.stderr}"
        return result.stdout

    remote = tmp_path / "remote"
    run(cluster, dvc, "commit", "--force")  # the outputs as they are: nothing is rerun
    assert json.loads(run(cluster, dvc, "status", "--json")) == {}
    run(cluster, dvc, "remote", "add", "--default", "shared", str(remote))
    run(cluster, dvc, "push")
    assert any(p.is_file() for p in remote.rglob("*"))

    for f in ("dvc.lock", "params.yaml"):
        shutil.copy(cluster / f, laptop / f)
    run(laptop, dvc, "remote", "add", "--default", "shared", str(remote))
    run(laptop, dvc, "pull")
    for model in runs["jobs"].values():
        if model.startswith("train:"):
            _, name, seed = model.split(":")
            path = Path("results/models", name, f"seed{seed}", "model.pt")
            assert (laptop / path).read_bytes() == (cluster / path).read_bytes()
    assert json.loads(run(laptop, dvc, "status", "--json")) == {}  # no stage to rerun

    shutil.rmtree(laptop / "results" / "report")
    run(laptop, _tool("mma"), "report")
    table = "results/report/table1.csv"
    assert (laptop / table).read_text() == (cluster / table).read_text()
    _, found = _mlflow_runs(f"sqlite:///{laptop / 'mlflow.db'}", "mma-smoke")
    assert [r.data.tags["mma.stage"] for r in found] == ["report"]  # no training on the laptop
