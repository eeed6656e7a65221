"""What every stage does around its work: locks, identity checks of the files it reads,
output folders swapped in whole, and a writability check before the work.

Identity: every file a stage hands to another (model.pt, a transfer set and its
manifest, per_example.pt) carries ``mma.params.identity`` of the model it belongs to
(name, sha256 of the resolved settings, the data used, the stage that wrote it).  A
reader compares it with the params entry it is about to use the file for, so a file
copied to another model's folder or left over from other settings is refused with the
stage to rerun, never used under a wrong name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

from .. import paths
from ..io import BadFileError


class BusyError(Exception):
    """Another invocation holds the lock of what this one would write."""


# --------------------------------------------------------------------------- identity
def check_identity(path: Path, found, want: dict, remedy: str) -> None:
    """BadFileError unless the identity ``found`` in ``path`` is ``want`` (field by field)."""
    if not isinstance(found, dict):
        raise BadFileError(f"{path}: carries no identity (written by an older version, or not by this "
                           f"pipeline); {remedy}")
    if found.get("model") != want["model"]:
        raise BadFileError(f"{path}: belongs to model {found.get('model')!r}, not {want['model']!r} (copied or "
                           f"moved?); {remedy}")
    if found.get("seed") != want["seed"]:
        raise BadFileError(f"{path}: belongs to seed {found.get('seed')!r} of {want['model']}, not seed "
                           f"{want['seed']} (copied or moved?); {remedy}")
    if found.get("data") != want["data"]:
        raise BadFileError(f"{path}: made on data {found.get('data')!r}, the params say {want['data']!r}; {remedy}")
    if found.get("spec_sha256") != want["spec_sha256"]:
        raise BadFileError(f"{path}: made for other settings of {want['model']} than the params file's "
                           f"(spec sha256 {str(found.get('spec_sha256'))[:12]}…, params {want['spec_sha256'][:12]}…); "
                           f"{remedy}")
    if found.get("stage") != want["stage"]:
        raise BadFileError(f"{path}: written by stage {found.get('stage')!r}, expected {want['stage']!r}; {remedy}")


def load_checked_model(params, name: str, seed: int, device: str):
    """(model, spec, meta) of results/models/NAME/seedS/model.pt, checked: intact, loadable and
    trained for exactly this params entry and seed."""
    from ..params import identity
    from ..train import load_model

    path = paths.model_file(name, seed)
    remedy = f"rerun `mma train {name} --seed {seed}`"
    model, spec, meta = load_model(path, device, remedy=remedy)
    check_identity(path, meta.get("identity"), identity(params, name, seed, "train"), remedy)
    return model, spec, meta


# --------------------------------------------------------------------------- locks
@contextlib.contextmanager
def stage_lock(stage: str, name: str, seed: int | None = None, *, shared: bool = False,
               wait: bool = False) -> Iterator[None]:
    """An flock on results/.locks/STAGE-NAME[-seedS].lock for the block.  Exclusive (a writer)
    or shared (readers); ``wait=False``: refuse at once with BusyError naming the holder."""
    path = paths.lock_file(stage, name, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(f, mode | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            command = f"mma {stage}" + ("" if name == "all" else f" {name}") \
                + ("" if seed is None else f" --seed {seed}")
            raise BusyError(f"another `{command}` is running ({holder}; lock {path}); wait for it to "
                            "finish, then rerun") from None
        if not shared:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
            f.flush()
        yield


# --------------------------------------------------------------------------- outputs
def ensure_writable(*folders: Path) -> None:
    """Before any work: each folder (or, where it does not exist yet, its nearest existing
    parent) is a folder we can create files in.  BadFileError naming it otherwise."""
    for folder in folders:
        folder = Path(folder)
        probe = folder
        while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise BadFileError(f"{probe}: is not a folder, so {folder} cannot be written; move it away")
        try:
            fd, tmp = tempfile.mkstemp(prefix=".mma-write-check-", dir=probe)
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise BadFileError(f"{probe}: cannot be written ({e.strerror}), so the outputs in {folder} cannot "
                               "be saved; make it writable (or run in a writable checkout), then rerun") from None


@contextlib.contextmanager
def swapped_in(final: Path, guard=contextlib.nullcontext) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; when the block succeeds it replaces
    ``final`` whole (old content moved aside, then deleted): a killed or failed stage leaves
    the previous outputs as they were, never a mix of new files and old ones.  ``guard()``:
    a context (e.g. a lock readers share) held for the swap itself."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for pattern in (f".{final.name}.new-*", f".{final.name}.old-*"):  # left by a killed earlier run
        for stale in final.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.new-", dir=final.parent))
    try:
        yield tmp
        old = None
        with guard():
            if final.exists() or final.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
                os.replace(final, old / final.name)
            os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
