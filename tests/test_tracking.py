"""MLflow tracking: where the store is, parallel processes on a fresh store, an
unreachable server, resumed runs that continue the same MLflow run, stale runs of a killed
stage, the tags that tie a run to its pipeline run, DVC experiment and params file, a store
lock held elsewhere (a bounded wait), and credentials (sent as MLflow sends them, never printed)."""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from mma.tracking import repo_root, stage_run, tracking_uri

ROOT = Path(__file__).resolve().parents[1]
MMA = [sys.executable, "-m", "mma.cli"]


def _runs(db: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    return client, ([] if exp is None else client.search_runs([exp.experiment_id], max_results=1000))


def test_repo_root_maps_dvc_experiment_workspaces_back(tmp_path):
    (tmp_path / ".git").mkdir()
    workspace = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12cd" / "sub"
    workspace.mkdir(parents=True)
    (workspace.parent / ".git").mkdir()  # a temp workspace is a git clone of its own
    assert repo_root(workspace) == tmp_path
    assert repo_root(tmp_path / ".dvc") == tmp_path
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert repo_root(tmp_path / "a" / "b") == tmp_path


def test_default_store_is_absolute_sqlite_at_the_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / ".git").mkdir()
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert tracking_uri() == "http://example:5000"


WORKER = """
import sys
from mma.tracking import stage_run
with stage_run("parallel", "train", name=f"m{sys.argv[1]}", tags={"mma.model": f"m{sys.argv[1]}"},
               params={"worker": int(sys.argv[1])}) as t:
    for step in range(1, 6):
        t.log_metrics({"loss": 1.0 / step}, step=step)
    t.flush()
"""


@pytest.mark.slow
def test_eight_processes_on_a_fresh_sqlite_store_lose_no_run(tmp_path):
    """Unlocked, 7 of 8 processes die in MLflow's schema migration (measured); with the
    lock every run is complete."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(i)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(8)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, "\n".join(outputs)
    client, runs = _runs(tmp_path / "mlflow.db", "parallel")
    assert len(runs) == 8
    assert {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        history = client.get_metric_history(r.info.run_id, "loss")
        assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]
    assert sorted(r.data.params["worker"] for r in runs) == [str(i) for i in range(8)]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_unreachable_server_fails_fast_before_any_work(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_closed_port()}"}
    t0 = time.monotonic()
    result = subprocess.run(
        MMA + ["train", "mnist-linf-std", "--params", str(ROOT / "presets" / "smoke.yaml")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - t0
    assert result.returncode == 2, result.stderr
    assert "unreachable" in result.stderr and result.stderr.strip().count("\n") == 0
    assert elapsed < 15, elapsed  # seconds, not MLflow's minutes of retries
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing written


def test_resumed_stage_continues_the_same_run_without_duplicate_steps(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    run_file = tmp_path / "checkpoints" / "run.json"
    with pytest.raises(RuntimeError):
        with stage_run("resume", "train", name="m", tags={}, run_id_file=run_file) as t:
            for step in (1, 2, 3):
                t.log_metrics({"loss": float(step)}, step=step)
            t.flush()  # a checkpoint at step 3
            t.log_metrics({"loss": 4.0}, step=4)  # after the checkpoint: redone on resume
            raise RuntimeError("crash")
    first = json.loads(run_file.read_text())["run_id"]
    with stage_run("resume", "train", name="m", tags={}, run_id_file=run_file) as t:
        for step in (4, 5):
            t.log_metrics({"loss": float(step)}, step=step)
    client, runs = _runs(tmp_path / "mlflow.db", "resume")
    assert [r.info.run_id for r in runs] == [first]
    assert runs[0].info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(first, "loss")) == [1, 2, 3, 4, 5]


def _tiny_params(tmp_path: Path) -> Path:
    doc = {
        "experiment": "kill",
        "device": "cpu",
        "threads": 1,
        "data": {"root": "data", "datasets": ["mnist"], "val_size": 500},
        "models": {
            "tiny": {
                "dataset": "mnist",
                "arch": "lenet5_madry",
                "norm": "linf",
                "method": "std",
                "optimizer": {"name": "adam", "lr": 0.001},
                "train_steps": 200,
                "batch_size": 20,
                "train_limit": 1000,
                "val_limit": 100,
                "eval_every": 50,
                "checkpoint_every": 10,
                "log_every": 1,
            }
        },
        "table1": {"sources": {}, "columns": {}},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.slow
def test_kill_9_then_rerun_continues_the_same_mlflow_run(tmp_path):
    from conftest import mnist_source

    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "MMA_DATA_SOURCE": str(mnist_source()),
    }
    params = _tiny_params(tmp_path)
    subprocess.run(MMA + ["data", "--params", str(params)], env=env, cwd=tmp_path, check=True, capture_output=True)
    resume = tmp_path / "results" / "checkpoints" / "tiny" / "seed0" / "resume.pt"
    proc = subprocess.Popen(
        MMA + ["train", "tiny", "--params", str(params)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not resume.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed; make it longer"
    time.sleep(0.5)  # some steps past the checkpoint, whose metrics were never sent
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_id = json.loads((resume.parent / "run.json").read_text())["run_id"]

    result = subprocess.run(
        MMA + ["train", "tiny", "--params", str(params)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stderr
    client, runs = _runs(tmp_path / "mlflow.db", "kill")
    train_runs = [r for r in runs if r.data.tags.get("mma.stage") == "train"]
    assert [r.info.run_id for r in train_runs] == [run_id]  # continued, no orphan
    assert train_runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert sorted(steps) == list(range(1, 201))  # every step exactly once
    assert (tmp_path / "results" / "models" / "tiny" / "seed0" / "model.pt").exists()
    assert not resume.parent.exists()  # resume state removed once finished


@pytest.mark.slow
def test_snakemake_four_parallel_training_jobs_record_four_complete_runs(tmp_path):
    """`snakemake --cores 4` with 4 training jobs at once (2 models × 2 seeds) on a fresh default sqlite store."""
    from test_pipeline import _env, _tool, scratch_copy

    repo = scratch_copy(tmp_path / "repo", profile=None)
    doc = yaml.safe_load(_tiny_params(tmp_path).read_text())
    tiny = next(iter(doc["models"].values()))
    doc["models"] = {f"tiny-{i}": {**tiny, "train_steps": 30, "eval_every": 30} for i in range(2)}
    doc["seeds"] = [0, 1]
    (repo / "params.yaml").write_text(yaml.safe_dump(doc))
    targets = [f"results/models/tiny-{i}/seed{s}/model.pt" for i in range(2) for s in (0, 1)]
    result = subprocess.run(
        [_tool("snakemake"), "--cores", "4", *targets],
        cwd=repo,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client, runs = _runs(repo / "mlflow.db", "kill")
    train = [r for r in runs if r.data.tags.get("mma.stage") == "train"]
    assert sorted((r.data.tags["mma.model"], r.data.tags["mma.seed"]) for r in train) == [
        (f"tiny-{i}", s) for i in range(2) for s in ("0", "1")
    ]
    assert {r.info.status for r in train} == {"FINISHED"}
    for r in train:
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "loss")) == list(range(1, 31))
        assert "val_clean_acc" in r.data.metrics


# --------------------------------------------------------------------------- stale runs and tags
SMOKE = ROOT / "presets" / "smoke.yaml"
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
    assert {
        "mma.method": "mma",
        "mma.norm": "l2",
        "mma.dataset": "mnist",
        "mma.seed": 0,
        "mma.group": "mnist-l2-mma-2p0",
        "mma.eval_seed": 0,
    }.items() <= seen.items()


# --------------------------------------------------------------------------- bounded waits, credentials
def test_passwords_of_uris_are_redacted_in_any_text():
    from mma.tracking import redact

    assert redact("store http://alice:s3cret@h:5000/x failed") == "store http://alice:***@h:5000/x failed"
    assert (
        redact("postgresql+psycopg2://u:p@ss@h/db?password=x&sslmode=require")
        == "postgresql+psycopg2://u:***@h/db?password=***&sslmode=require"
    )
    assert redact("sqlite:////srv/mlflow.db and mail@host") == "sqlite:////srv/mlflow.db and mail@host"


HOLD = """
import fcntl, sys, time
f = open(sys.argv[1], "a")
fcntl.flock(f, fcntl.LOCK_EX)
print("held", flush=True)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    if sys.argv[2] == "sleep":
        time.sleep(0.05)
"""


def _holder(lock: Path, how: str, seconds: float) -> subprocess.Popen:
    """A process holding ``lock`` for ``seconds``, asleep or working (spinning on the CPU)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock), how, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize(
    "how, seconds, waited, outcome",
    [
        ("work", 3.0, (2.0, 30.0), "acquired"),  # a working holder is waited for past WAIT_S (1 s)
        ("sleep", 30.0, (1.0, 10.0), "idle for 1 s"),  # an idle one for WAIT_S only
        ("work", 30.0, (4.0, 20.0), "working for over 4 s"),  # a working one for MAX_WAIT_S at most
    ],
    ids=["working holder", "idle holder", "working past the cap"],
)
def test_a_lock_is_waited_on_while_its_holder_works(tmp_path, monkeypatch, how, seconds, waited, outcome):
    from mma import locks

    monkeypatch.setattr(locks, "WAIT_S", 1.0)
    monkeypatch.setattr(locks, "MAX_WAIT_S", 4.0)
    lock = tmp_path / "x.lock"
    holder = _holder(lock, how, seconds)
    fd = locks.open_lock(lock)
    try:
        t0 = time.monotonic()
        try:
            locks.acquire(fd, lock, wait_s=locks.WAIT_S)
            result = "acquired"
        except locks.LockTimeout as e:
            result = str(e)
        elapsed = time.monotonic() - t0
    finally:
        os.close(fd)
        holder.kill()
        holder.wait()
    assert outcome in result and (outcome == "acquired" or f"pid {holder.pid} (" in result), result
    assert waited[0] <= elapsed < waited[1], elapsed


@pytest.mark.slow
def test_a_held_store_lock_ends_the_wait_within_its_bound(tmp_path):
    """Another program holds mlflow.db's lock and does nothing: the stage gives up after the default
    bound (locks.WAIT_S), in one line naming the holder, instead of waiting forever."""
    from mma import locks

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    holder = _holder(tmp_path / "mlflow.db.lock", "sleep", 150)
    try:
        t0 = time.monotonic()
        result = subprocess.run(
            ["timeout", "-k", "5", "140", *MMA, "report", "--params", str(ROOT / "presets" / "smoke.yaml")],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        elapsed = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and f"by pid {holder.pid} (" in result.stderr, result.stderr
    assert f"idle for {locks.WAIT_S:.0f} s" in result.stderr
    assert locks.WAIT_S <= elapsed < locks.WAIT_S + 60, elapsed  # + the process's start (~5 s; 15 s on a busy machine)


class AuthProxy(http.server.BaseHTTPRequestHandler):
    """Basic authentication in front of an MLflow server: requests with alice's credentials are
    forwarded, others answered 401 (as an authenticating reverse proxy or MLflow's basic-auth app)."""

    upstream: int = 0
    seen = {"forwarded": 0, "refused": 0}

    def _forward(self):
        if self.headers.get("Authorization") != "Basic " + base64.b64encode(b"alice:s3cret").decode():
            self.seen["refused"] += 1
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.seen["forwarded"] += 1
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization", "connection")}
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream, timeout=60)
        upstream.request(self.command, self.path, body=body, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for k, v in answer.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_credentials_reach_the_server_as_mlflow_sends_them_and_are_never_printed(tmp_path):
    """A server behind basic authentication: the user:password of the URI (or MLflow's
    MLFLOW_TRACKING_USERNAME/PASSWORD) is sent, the run and its artifact land there, and no
    message shows the password; a wrong password is one line saying so."""
    from conftest import mnist_source
    from mlflow.tracking import MlflowClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "art"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    AuthProxy.upstream = port
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AuthProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and server.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start within 180 s")
        params = _tiny_params(tmp_path)
        base = {**os.environ, "MMA_DATA_SOURCE": str(mnist_source())}
        proxied = f"127.0.0.1:{proxy.server_address[1]}"
        runs = [
            ("in the URI", {"MLFLOW_TRACKING_URI": f"http://alice:s3cret@{proxied}"}),
            (
                "in MLflow's variables",
                {
                    "MLFLOW_TRACKING_URI": f"http://{proxied}",
                    "MLFLOW_TRACKING_USERNAME": "alice",
                    "MLFLOW_TRACKING_PASSWORD": "s3cret",
                },
            ),
        ]
        for how, env in runs:
            result = subprocess.run(
                MMA + ["data", "--params", str(params)],
                env={**base, **env},
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert result.returncode == 0, (how, result.stderr)
            assert "s3cret" not in result.stdout + result.stderr
        assert AuthProxy.seen["refused"] == 0 and AuthProxy.seen["forwarded"] > 0
        client = MlflowClient(f"http://127.0.0.1:{port}")
        data_runs = client.search_runs([client.get_experiment_by_name("kill").experiment_id])
        assert len(data_runs) == 2 and {r.info.status for r in data_runs} == {"FINISHED"}
        assert [a.path for a in client.list_artifacts(data_runs[0].info.run_id, "params")] == ["params/params.yaml"]

        wrong = {**base, "MLFLOW_TRACKING_URI": f"http://alice:n0t-it@{proxied}"}
        result = subprocess.run(
            MMA + ["data", "--params", str(params)],
            env=wrong,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "refused the credentials (HTTP 401)" in result.stderr and "http://alice:***@" in result.stderr
        assert "n0t-it" not in result.stdout + result.stderr
    finally:
        proxy.shutdown()
        proxy.server_close()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
