"""MLflow tracking: one run per stage invocation, safe under parallel jobs.

Where runs go: ``$MLFLOW_TRACKING_URI`` if set, else a sqlite file ``mlflow.db`` at
the root of the user's repository (artifacts in ``mlartifacts/`` beside it), by
absolute path.  ``dvc exp run --temp/--queue`` runs stages in a clone under
``<repo>/.dvc/tmp/exps/...``; :func:`repo_root` maps such a workspace back to
``<repo>`` so those runs land in the same store.

Why a lock: a fresh sqlite store opened by several processes at once races on
schema creation/migration (measured: 8 processes, some crash).  Every process
opens the store, and creates the experiment, while holding an exclusive
``flock`` on ``mlflow.db.lock``; with sqlite, every later write takes the same
lock too, so parallel jobs never hit "database is locked" either.

Why a preflight: against an unreachable server (or database) MLflow retries for
minutes; before any work we send one API request through MLflow's own HTTP client
(its credentials: userinfo in the URI, ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``,
tokens, TLS settings) with a 3 s timeout and no retries, or open one connection to the
database server, and fail with one line.  The lock is waited on while its holder works,
for ``locks.WAIT_S`` seconds of a holder doing nothing (``locks.acquire``); then the
error names the holder.  A URI's password is never printed
(``redact``).

Metrics are buffered and sent on :meth:`Tracker.flush` (the training loop calls it
right after each resume checkpoint), so a run resumed after a crash continues the
same MLflow run and never logs a step twice.

SIGTERM (a scheduler's ``scancel`` or time limit) ends a stage's run as KILLED, like
Ctrl-C, and the command exits 143; training first checkpoints the step in progress
(:mod:`mma.interrupt`).  For many parallel jobs use a tracking server (docs/cluster.md).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlsplit

from . import interrupt, locks

URI_ENV = "MLFLOW_TRACKING_URI"
STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
PROBE_TIMEOUT_S = 3.0


DATABASES = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}  # MLflow's server databases, default ports


class TrackingError(Exception):
    """The tracking store cannot be used; one line naming it and the fix."""


_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^\s/]*@")  # greedy: up to the last @
_SECRET_QUERY = re.compile(r"(?i)\b(password|passwd|pwd|token|secret)=[^&\s]*")


def redact(text: str) -> str:
    """``text`` with the password of every URI in it (``scheme://user:PASSWORD@host``, or a
    ``password=`` query value) replaced by ``***``: what any message may show of a URI."""
    return _SECRET_QUERY.sub(r"\1=***", _USERINFO.sub(r"\1***@", str(text)))


# --------------------------------------------------------------------------- where
def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The user's repository: the folder above ``.dvc/tmp`` when inside a DVC
    experiment workspace, else the nearest folder with ``.git`` or ``.dvc``, else ``start``."""
    here = Path(start or os.getcwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 1):
        if parts[i] == ".dvc" and parts[i + 1] == "tmp":
            return Path(*parts[:i])
    for folder in (here, *here.parents):
        if (folder / ".git").exists() or (folder / ".dvc").is_dir():
            return folder
    return here


def tracking_uri(root: Path | None = None) -> str:
    env = os.environ.get(URI_ENV)
    if env:
        return env
    return f"sqlite:///{(root or repo_root()) / STORE_FILE}"


def git_commit(root: Path | None = None) -> str:
    """HEAD's hash, with "-dirty" when tracked files differ; "unknown" outside git."""
    cwd = root or repo_root()
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("-dirty" if dirty else "")) if head else "unknown"


# --------------------------------------------------------------------------- which invocation
PIPELINE_ENV = "MMA_PIPELINE_RUN"  # set once per `snakemake` invocation (Snakefile onstart), or by hand


def pipeline_run() -> Optional[str]:
    """An id shared by the stage runs of one pipeline invocation (tag ``mma.pipeline_run``):
    $MMA_PIPELINE_RUN (Snakemake's onstart sets it for its jobs); under DVC, the experiment's
    name (`dvc exp run`) or the `dvc` process that runs the stages (`dvc repro`); else None."""
    if os.environ.get(PIPELINE_ENV):
        return os.environ[PIPELINE_ENV]
    if os.environ.get("DVC_EXP_NAME"):
        return f"dvc-exp:{os.environ['DVC_EXP_NAME']}"
    if os.environ.get("DVC_STAGE"):  # set by DVC for every stage command
        proc = _ancestor("dvc")
        if proc:
            return f"dvc:{os.uname().nodename}:{proc[0]}:{proc[1]}"
    return None


def _ancestor(program: str) -> Optional[tuple[int, str]]:
    """(pid, start time in clock ticks) of the nearest ancestor process running ``program``
    (Linux /proc; None elsewhere or if there is none)."""
    pid = os.getppid()
    for _ in range(20):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        fields = stat[stat.rindex(")") + 2 :].split()
        if any(Path(a.decode(errors="replace")).name == program for a in argv[:2]):
            return pid, fields[19]  # starttime: pid + start time never repeat together
        pid = int(fields[1])  # ppid
        if pid <= 1:
            return None
    return None


def dvc_experiment_tags() -> dict:
    """Under `dvc exp run`: the experiment's name and baseline commit.  The run used the
    baseline's code with the experiment's params applied, so ``mma.git_commit`` is marked
    ``-dirty`` (stage_run) rather than naming a commit whose params it did not use."""
    name = os.environ.get("DVC_EXP_NAME")
    if not name:
        return {}
    return {"mma.dvc_exp": name, "mma.dvc_exp_baseline": os.environ.get("DVC_EXP_BASELINE_REV", "")}


def params_file_tag(path: str | os.PathLike) -> str:
    """How a run names its params file: relative to the repository (a `dvc exp run --temp`
    workspace maps back to it: its temporary copy is deleted afterwards), else absolute.
    The file's content is logged with the run as the artifact params/FILE."""
    path = Path(path).resolve()
    root = repo_root(path.parent)
    here = Path(os.getcwd()).resolve()
    for base in (here, root):
        try:
            return str(path.relative_to(base))
        except ValueError:
            continue
    return str(path)


# --------------------------------------------------------------------------- locking
def _lock_file(uri: str) -> Optional[Path]:
    """The lock beside a sqlite store; None for servers (they serialise themselves)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    return db.with_name(db.name + ".lock")


@contextlib.contextmanager
def _locked(uri: str) -> Iterator[None]:
    lock = _lock_file(uri)
    if lock is None:
        yield
        return
    fd = locks.open_lock(lock)
    try:
        try:
            locks.acquire(fd, lock, wait_s=locks.WAIT_S)
        except locks.LockTimeout as e:
            raise TrackingError(f"MLflow store {uri}: its lock {lock} stayed held by {e}; {locks.WHAT_TO_DO}") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _probe(uri: str, experiment: str) -> None:
    """Fail fast (seconds) if an http(s) tracking server does not answer its API, or a
    database server does not take a connection."""
    scheme = urlsplit(uri).scheme.split("+")[0]
    if scheme in ("http", "https"):
        _probe_server(uri, experiment)
    elif scheme in DATABASES:
        _probe_database(uri, scheme)


def _probe_server(uri: str, experiment: str) -> None:
    """One API request as MLflow's client sends it (same credentials and TLS settings), no retry."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    hint = f"start it, or unset {URI_ENV} to record runs in the local store {repo_root() / STORE_FILE}"
    try:
        response = http_request(
            get_default_host_creds(uri),
            "/api/2.0/mlflow/experiments/get-by-name",
            "GET",
            max_retries=0,
            timeout=PROBE_TIMEOUT_S,
            raise_on_status=False,
            params={"experiment_name": experiment},
        )
    except Exception as e:  # noqa: BLE001 - refused, timed out, unknown host, bad TLS: unreachable either way
        raise TrackingError(f"MLflow tracking server {redact(uri)} is unreachable ({_reason(e)}); {hint}") from None
    if response.status_code in (401, 403):
        raise TrackingError(
            f"MLflow tracking server {redact(uri)} refused the credentials (HTTP "
            f"{response.status_code}); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
            "(or the URI's user:password@) to an account of that server"
        )
    if response.status_code not in (200, 404):  # 404: no such experiment yet, the API answered
        raise TrackingError(
            f"MLflow tracking server {redact(uri)} answered its API with HTTP {response.status_code} "
            f"({response.reason}); is it an MLflow server? {hint}"
        )


def _probe_database(uri: str, scheme: str) -> None:
    """A TCP connection to the database server within PROBE_TIMEOUT_S, then one SQLAlchemy
    connection (MLflow would otherwise retry for ~100 s)."""
    parts = urlsplit(uri)
    host, port = parts.hostname, parts.port or DATABASES[scheme]
    if host:  # none: a local socket
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
        except OSError as e:
            raise TrackingError(
                f"MLflow store {redact(uri)}: the database server {host}:{port} is unreachable "
                f"({e.strerror or 'no answer'}); start it, or fix (or unset) {URI_ENV}"
            ) from None
    os.environ.setdefault("PGCONNECT_TIMEOUT", str(int(PROBE_TIMEOUT_S) + 2))  # libpq: a server that stalls
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri)
        try:
            engine.connect().close()
        finally:
            engine.dispose()
    except Exception as e:  # noqa: BLE001 - a missing driver, a refused login, no such database
        raise TrackingError(
            f"MLflow store {redact(uri)} cannot be used ({type(e).__name__}: {_reason(e)}); fix "
            f"the database (or its driver: pip install -e '.[cluster]'), or fix (or unset) "
            f"{URI_ENV}"
        ) from None


def _reason(e: BaseException) -> str:
    """The root cause's first line, short and redacted ("[Errno 111] Connection refused")."""
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    found = re.search(r"\[Errno -?\d+\] [^'\")]*|Read timed out|timed out", text)
    return redact(found.group(0) if found else text[:200])


@functools.lru_cache(maxsize=None)
def open_store(experiment: str, uri: str | None = None):
    """(MlflowClient, experiment id), creating the store and the experiment once, under the lock.
    Commands call it before any work, so a bad store fails them in seconds."""
    uri = uri or tracking_uri()
    _probe(uri, experiment)
    if redact(uri) != uri:  # MLflow prints each run's link ("View run ... at: URI...") with the password in it
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    # a server that dies mid-run must not stall training for minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not "Creating initial MLflow database tables..."
    # a locked or read-only mlflow.db: MLflow logs the traceback, then raises; the CLI says it in one line
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).parent.is_dir():
        raise TrackingError(
            f"MLflow store {uri}: folder {Path(uri.removeprefix('sqlite:///')).parent} does not "
            f"exist; create it, or fix (or unset) {URI_ENV}"
        )
    with _locked(uri):
        try:
            client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(experiment)
            if found is not None:
                _check_artifact_location(uri, found)
                return client, found.experiment_id
            location = None
            if uri.startswith("sqlite:///"):  # artifacts beside the store, not in whatever cwd is
                location = (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACT_DIR).as_uri()
            return client, client.create_experiment(experiment, artifact_location=location)
        except TrackingError:
            raise
        except Exception as e:  # noqa: BLE001 - any store failure means "cannot track"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TrackingError(redact(f"MLflow store {uri} cannot be used ({type(e).__name__}: {first})")) from None


def _check_artifact_location(uri: str, experiment) -> None:
    """A local store whose experiment keeps its artifacts in another folder's mlartifacts/
    was copied (``cp -a`` of a checkout): runs here would write into the original.  Refuse."""
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri.removeprefix("sqlite:///"))
    location = experiment.artifact_location or ""
    expected = (db.parent / ARTIFACT_DIR).as_uri()
    if (
        location.startswith("file:")
        and location.rstrip("/") != expected.rstrip("/")
        and Path(location.removeprefix("file://")).parent.resolve() != db.parent.resolve()
    ):
        raise TrackingError(
            f"MLflow store {db}: experiment {experiment.name!r} keeps its artifacts in {location}, not beside this "
            f"store: the store was copied from another checkout, and runs here would write into that one. Move "
            f"{db.name} (and {ARTIFACT_DIR}/) out of {db.parent} to start a fresh store here, or set {URI_ENV} to "
            "the original store"
        )


# --------------------------------------------------------------------------- one run
class Tracker:
    """One MLflow run.  ``log_metrics`` buffers; ``flush`` sends (also at the end of the run)."""

    def __init__(self, client, run_id: str, uri: str):
        self.client, self.run_id, self.uri = client, run_id, uri
        self._pending: list = []
        self.logged: set[str] = set()  # metric keys logged by this process

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "item"):
                continue  # strings and nested results belong in files/artifacts, not metrics
            value = float(value)
            if math.isfinite(value):
                self._pending.append(Metric(_key(key), value, now, int(step or 0)))
                self.logged.add(key)

    def flush(self, *, final: bool = False) -> None:
        """Send the buffered metrics.  On failure keep them for the next flush with a
        warning (training must not die on a tracking hiccup), or raise if ``final``."""
        pending, self._pending, i = self._pending, [], 0
        try:
            for i in range(0, len(pending), 1000):  # MLflow's batch limit
                with _locked(self.uri):
                    self.client.log_batch(self.run_id, metrics=pending[i : i + 1000])
        except Exception as e:  # noqa: BLE001
            self._pending = pending[i:] + self._pending
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if final:
                raise TrackingError(
                    redact(
                        f"MLflow logging to {self.uri} failed at the end of the run ({why}); "
                        "the stage's output files are complete"
                    )
                ) from None
            print(
                redact(f"warning: MLflow logging failed, {len(self._pending)} metrics kept for the next try ({why})"),
                file=sys.stderr,
            )

    def log_params(self, params: dict) -> None:
        """``params`` (a nested record) as MLflow params, one per leaf: ``attacks.pgd40x1.steps``."""
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

        flat = [Param(_key(k), _param_value(v)) for k, v in flatten(params).items()]
        for i in range(0, len(flat), MAX_PARAMS_TAGS_PER_BATCH):  # one request per batch MLflow accepts
            with _locked(self.uri):
                self.client.log_batch(self.run_id, params=flat[i : i + MAX_PARAMS_TAGS_PER_BATCH])

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        with _locked(self.uri):
            self.client.log_batch(self.run_id, tags=[RunTag(_key(k), str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path or path.name)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)


@contextlib.contextmanager
def stage_run(
    experiment: str,
    stage: str,
    *,
    tags: dict,
    params: dict | None = None,
    run_id_file: Path | None = None,
    name: str | None = None,
    seed: int | None = None,
) -> Iterator[Tracker]:
    """An MLflow run around one stage invocation; FINISHED on success, FAILED/KILLED otherwise.

    run_id_file: where the run id is kept while the stage can be resumed; if it names
    a run of this experiment, that run is continued (same id) instead of a new one.
    """
    uri = tracking_uri()
    client, experiment_id = open_store(experiment, uri)
    run_id = _resumable(client, run_id_file, experiment_id)
    _end_stale_runs(client, uri, experiment_id, stage, name, seed, keep=run_id)
    with _locked(uri):
        if run_id is None:
            run_id = client.create_run(experiment_id, run_name=_run_name(stage, name, seed)).info.run_id
            resumed = False
        else:
            client.update_run(run_id, status="RUNNING")
            resumed = True
    if run_id_file is not None and not resumed:
        from .io import write_json

        write_json(run_id_file, {"run_id": run_id, "uri": redact(uri)})  # a file: no password
    tracker = Tracker(client, run_id, uri)
    status = "FAILED"
    try:
        with interrupt.on_sigterm():  # SIGTERM (scancel, time limit, kill) ends the run KILLED, as Ctrl-C does
            commit, exp = git_commit(repo_root()), dvc_experiment_tags()
            if exp and not commit.endswith("-dirty") and commit != "unknown":
                commit += "-dirty"  # the experiment's params, applied on top of that commit
            where = {"mma.pipeline_run": pipeline_run(), "mma.host": os.uname().nodename, "mma.pid": os.getpid()}
            tracker.set_tags(
                {
                    "mma.stage": stage,
                    "mma.git_commit": commit,
                    "mlflow.source.git.commit": commit.removesuffix("-dirty"),
                    "mma.resumed": str(resumed).lower(),
                    **exp,
                    **{k: v for k, v in where.items() if v is not None},
                    **tags,
                }
            )
            if params:
                tracker.log_params(params)
            yield tracker
            tracker.flush(final=True)
        status = "FINISHED"
    except interrupt.Terminated as e:
        status = "KILLED"
        print(f"{stage}{' ' + name if name else ''}: {e}; MLflow run {run_id} ended KILLED", file=sys.stderr)
        raise SystemExit(interrupt.EXIT_CODE) from None
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        # on failure, metrics after the last flush are dropped, not sent: a resumed run
        # logs those steps again, and must not find them twice
        with _locked(uri):
            client.set_terminated(run_id, status)


def _run_name(stage: str, name: Optional[str], seed: Optional[int]) -> str:
    """train:mnist-linf-std:seed0 (one member), report (the whole grid)."""
    return ":".join([stage] + ([name] if name else []) + ([f"seed{seed}"] if seed is not None else []))


def _end_stale_runs(
    client, uri: str, experiment_id: str, stage: str, name: Optional[str], seed: Optional[int], keep: Optional[str]
) -> None:
    """Runs of this stage (and member) left RUNNING by a process that died without a word
    (kill -9, out of memory, a lost node) on this machine: marked KILLED.  A run whose
    process is alive, or that was made on another machine, is left alone."""
    host = os.uname().nodename
    query = f"attributes.status = 'RUNNING' and tags.`mma.stage` = '{stage}' and tags.`mma.host` = '{host}'"
    if name:
        query += f" and tags.`mma.model` = '{name}'"
    if seed is not None:
        query += f" and tags.`mma.seed` = '{seed}'"
    try:
        runs = client.search_runs([experiment_id], filter_string=query, max_results=100)
    except Exception:  # noqa: BLE001 - housekeeping must not stop a stage
        return
    for run in runs:
        pid = run.data.tags.get("mma.pid", "")
        if run.info.run_id == keep or not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        with _locked(uri):
            client.set_terminated(run.info.run_id, "KILLED")
        client.set_tag(run.info.run_id, "mma.ended_by", f"a later {stage} run: its process {pid} was gone")
        print(
            f"{stage}{' ' + name if name else ''}: MLflow run {run.info.run_id} was left RUNNING by process "
            f"{pid}, which is gone; marked KILLED",
            file=sys.stderr,
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _resumable(client, run_id_file: Path | None, experiment_id: str) -> Optional[str]:
    if run_id_file is None or not Path(run_id_file).is_file():
        return None
    try:
        run_id = json.loads(Path(run_id_file).read_text())["run_id"]
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - a stale or foreign id: start a new run
        return None
    return run_id if run.info.experiment_id == experiment_id else None


# --------------------------------------------------------------------------- helpers
def _key(key: str) -> str:
    """MLflow keys allow alphanumerics, _ - . space / : only."""
    return "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in str(key))[:250]


def _param_value(value: Any) -> str:
    """A param's value as MLflow stores it: a list as JSON, anything else as ``str``; cut to
    MLflow's limit (``MAX_PARAM_VAL_LENGTH``), saying so (the whole file is the run's params artifact)."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    if len(text) <= MAX_PARAM_VAL_LENGTH:
        return text
    cut = " ... (cut: the whole value is in the run's params artifact)"
    return text[: MAX_PARAM_VAL_LENGTH - len(cut)] + cut


def flatten(record: Any, prefix: str = "") -> dict:
    """A nested record as MLflow params: one key per leaf, its path joined by dots
    (``evaluate.margins.fab_steps``); a list of mappings by index (``evaluate.threat_models.0.dataset``);
    any other list (``table1.eps``) and an empty mapping stay one value."""
    if isinstance(record, dict) and record:
        items = record.items()
    elif isinstance(record, (list, tuple)) and record and all(isinstance(v, dict) for v in record):
        items = enumerate(record)
    else:
        return {prefix: record}
    out = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out
