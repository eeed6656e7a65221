"""What every stage does around its work: locks, identity checks of the files it reads,
output folders swapped in whole, and a writability check before the work.

Output folders are replaced whole, so each stage names the files it writes there; a folder
holding anything else is refused before the work, never emptied.

Identity: every file a stage hands to another (model.pt, a transfer set and its
manifest, per_example.pt) carries ``contract.output_identity``: the model it belongs to
(``contract.identity``: name, seed, sha256 of its resolved settings, the data used), the stage
that wrote it and, from transfer and evaluate, the sha256 of that stage's record (what it
read from the params, ``contract``).  A reader compares it with the params entry it is
about to use the file for, so a file copied to another model's folder or left over from
other settings is refused with the stage to rerun, never used under a wrong name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .. import locks, paths
from ..io import BadFileError, no_space_names, plain_mode


class BusyError(Exception):
    """Another invocation holds the lock of what this one would write."""


# --------------------------------------------------------------------------- identity
def check_identity(path: Path, found, want: dict, remedy: str) -> None:
    """BadFileError unless the identity ``found`` in ``path`` is ``want`` (field by field)."""
    if not isinstance(found, dict):
        raise BadFileError(
            f"{path}: carries no identity (written by an older version, or not by this pipeline); {remedy}"
        )
    if found.get("model") != want["model"]:
        raise BadFileError(
            f"{path}: belongs to model {found.get('model')!r}, not {want['model']!r} (copied or moved?); {remedy}"
        )
    if found.get("seed") != want["seed"]:
        raise BadFileError(
            f"{path}: belongs to seed {found.get('seed')!r} of {want['model']}, not seed "
            f"{want['seed']} (copied or moved?); {remedy}"
        )
    if found.get("data") != want["data"]:
        raise BadFileError(f"{path}: made on data {found.get('data')!r}, the params say {want['data']!r}; {remedy}")
    if found.get("spec_sha256") != want["spec_sha256"]:
        raise BadFileError(
            f"{path}: made for other settings of {want['model']} than the params file's "
            f"(spec sha256 {str(found.get('spec_sha256'))[:12]}…, params {want['spec_sha256'][:12]}…); "
            f"{remedy}"
        )
    if "settings_sha256" in want and found.get("settings_sha256") != want["settings_sha256"]:
        from . import CONTRACTS

        read = ", ".join(CONTRACTS[want["stage"]].reads)
        found_sha = str(found.get("settings_sha256"))[:12]
        raise BadFileError(
            f"{path}: made under other {want['stage']} settings ({read}) than the params file's "
            f"(settings sha256 {found_sha}…, params {want['settings_sha256'][:12]}…); {remedy}"
        )
    if found.get("stage") != want["stage"]:
        raise BadFileError(f"{path}: written by stage {found.get('stage')!r}, expected {want['stage']!r}; {remedy}")


def load_checked_model(params, name: str, seed: int, device: str):
    """(model, spec, meta) of results/models/NAME/seedS/model.pt, checked: intact, loadable and
    trained for exactly this params entry and seed."""
    from ..train import load_model
    from .contract import identity

    path = paths.model_file(name, seed)
    remedy = f"rerun `mma train {name} --seed {seed}`"
    model, spec, meta = load_model(path, device, remedy=remedy)
    check_identity(path, meta.get("identity"), identity(params, name, seed, "train"), remedy)
    return model, spec, meta


# --------------------------------------------------------------------------- locks
@contextlib.contextmanager
def stage_lock(
    stage: str, name: str, seed: int | None = None, *, shared: bool = False, wait: bool = False
) -> Iterator[None]:
    """An flock on results/.locks/STAGE-NAME[-seedS].lock for the block.  Exclusive (a writer)
    or shared (readers); ``wait=False``: refuse at once with BusyError naming the holder;
    ``wait=True``: wait while the holder works (``locks.acquire``: bounded) first.  A link or a foreign file in the
    lock's place is refused (``locks.open_lock``), never written through."""
    path = paths.lock_file(stage, name, seed)
    fd = locks.open_lock(path)
    try:
        try:
            locks.acquire(fd, path, shared=shared, wait_s=locks.WAIT_S if wait else 0.0)
        except locks.LockTimeout as e:
            if wait:  # a lock held for seconds at most (readers of the transfer sets, their swap)
                raise BusyError(f"{path}: stayed locked by {e}; {locks.WHAT_TO_DO}") from None
            command = (
                f"mma {stage}" + ("" if name == "all" else f" {name}") + ("" if seed is None else f" --seed {seed}")
            )
            raise BusyError(
                f"another `{command}` is running ({locks.read_holder(fd) or e}; lock {path}); wait for "
                "it to finish, then rerun"
            ) from None
        if not shared:
            locks.write_holder(fd, path)
        yield
    finally:
        os.close(fd)  # releases the lock


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
            raise BadFileError(
                f"{probe}: cannot be written ({e.strerror}), so the outputs in {folder} cannot "
                "be saved; make it writable (or run in a writable checkout), then rerun"
            ) from None


WORKFLOW_MARKS = {".snakemake_timestamp"}  # Snakemake's mark in a directory output: the pipeline's, not the user's


def refuse_foreign(folder: Path, ours: Callable[[str], bool], stage: str) -> None:
    """BadFileError naming them if ``folder`` holds anything ``ours`` (a file name → bool) does
    not claim: a stage that replaces its output folder whole never deletes what it did not make."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return  # nothing to lose (a file or link in the way: ensure_writable / the swap say so)
    # a link of one of our names is ours (a DVC checkout's link into its cache): removing it deletes no target
    foreign = sorted(
        p.name
        for p in folder.iterdir()
        if p.name not in WORKFLOW_MARKS and (not ours(p.name) or p.is_dir() and not p.is_symlink())
    )
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise BadFileError(
            f"{folder}: holds {len(foreign)} file(s) the {stage} stage did not make ({shown}), and "
            f"the stage replaces the folder whole; nothing was deleted: move them out of {folder}, "
            "then rerun"
        )


@contextlib.contextmanager
def swapped_in(final: Path, ours: Callable[[str], bool], stage: str, guard=contextlib.nullcontext) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; when the block succeeds it replaces
    ``final`` whole (old content moved aside, then deleted): a killed or failed stage leaves
    the previous outputs as they were, never a mix of new files and old ones.  ``ours``: the
    file names the ``stage`` writes there; anything else in ``final`` is refused before the
    block and again before the swap (``refuse_foreign``), never deleted.  ``guard()``: a
    context (e.g. a lock readers share) held for the swap itself."""
    final = Path(final)
    refuse_foreign(final, ours, stage)
    final.parent.mkdir(parents=True, exist_ok=True)
    for pattern in (f".{final.name}.new-*", f".{final.name}.old-*"):  # left by a killed earlier run
        for stale in final.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.new-", dir=final.parent))
    try:
        plain_mode(tmp, folder=True)
        with no_space_names(final):  # a full disk names the output folder, not the temporary one
            yield tmp
        old = None
        with guard():
            refuse_foreign(final, ours, stage)  # added while the stage worked?
            if final.exists() or final.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
                os.replace(final, old / final.name)
            os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
