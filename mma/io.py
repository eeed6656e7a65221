"""Files that are either complete or absent, and tensor files that never run code.

Every output goes to a temporary name in the same folder and is renamed into
place (rename is atomic on POSIX), so a killed stage never leaves a file that
looks complete.  Outputs get the mode a plain ``open``/``mkdir`` gives (0666/0777
less the umask), not the 0600/0700 of a temporary file.  Tensor files load with
``torch.load(weights_only=True)``: a pickle that would execute code is refused; they
are written byte for byte the same whenever their content is (``save_tensors``).
A write that fails for want of space raises OSError(ENOSPC) naming the output.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


class BadFileError(Exception):
    """A file between stages that cannot be used: missing, corrupt, truncated, or not the
    file it should be.  The message is one line naming the file and what to rerun."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class UnsafeFileError(BadFileError):
    """A tensor file that needs arbitrary unpickling (or is not a tensor file)."""


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk, or a full quota


def umask() -> int:
    """The process's umask, read without changing it where Linux's /proc tells it."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def plain_mode(path: str | os.PathLike, folder: bool = False) -> None:
    """Give a file from ``mkstemp`` (0600) or a folder from ``mkdtemp`` (0700) the mode a plain
    ``open``/``mkdir`` would: 0666/0777 less the umask (a group's shared results stay readable)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~umask())


@contextlib.contextmanager
def no_space_names(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise a full disk (ENOSPC, EDQUOT) inside the block as OSError naming ``path``."""
    try:
        yield
    except OSError as e:
        if e.errno in NO_SPACE and e.filename != str(path):
            raise OSError(e.errno, os.strerror(e.errno), str(path)) from None
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it into place.  A full disk
    raises OSError(ENOSPC) naming ``path``; ``path`` is then as it was."""
    path = Path(path)
    with no_space_names(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp)
        try:
            plain_mode(tmp)
            yield tmp
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _jsonable(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_tensors(path: str | os.PathLike, obj: Any) -> None:
    """torch.save atomically; ``obj`` must hold only tensors, numbers, strings, lists and dicts.

    Byte for byte the same file whenever ``obj`` is the same: saved to memory first, so the
    archive's inner folder is torch's fixed "archive" rather than the temporary file's random
    name (and a full disk is Python's OSError, not torch's "enforce fail" RuntimeError)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_tensors(path: str | os.PathLike, map_location: Any = "cpu", *, remedy: str = "") -> Any:
    """torch.load with weights_only=True, after checking the archive's CRC-32 of every
    entry (a flipped bit anywhere is caught, not loaded).  Anything needing code execution
    is refused (UnsafeFileError); a missing, empty, truncated or corrupt file raises
    BadFileError naming it and ``remedy`` (e.g. "rerun `mma train NAME`")."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    todo = f"; {remedy}" if remedy else ""
    if not path.is_file():
        raise BadFileError(f"{path}: missing{todo}")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every entry, checks its CRC-32
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        size = path.stat().st_size
        what = "empty" if size == 0 else f"not a complete tensor file ({size} bytes; truncated or overwritten?: {e})"
        raise BadFileError(f"{path}: {what}{todo}") from None
    except Exception as e:  # noqa: BLE001 - zlib.error, struct.error...: a damaged archive either way
        raise BadFileError(f"{path}: corrupt ({type(e).__name__}: {e}){todo}") from None
    if bad is not None:
        entry = str(Path(*Path(bad).parts[1:]))  # torch names entries "<archive name>/data/0"
        raise BadFileError(
            f"{path}: corrupt (checksum of its {entry} differs: the file changed after it was written){todo}"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unpickling refused"
        raise UnsafeFileError(f"{path}: refused to load (not a plain tensor file: {first}){todo}") from None
    except Exception as e:  # noqa: BLE001 - any failure to parse a file is that file's fault
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadFileError(f"{path}: not a readable tensor file ({type(e).__name__}: {first[:200]}){todo}") from None


def read_json(path: str | os.PathLike, *, remedy: str = "") -> Any:
    """A JSON file written by a stage; BadFileError (naming it and ``remedy``) if it is
    missing, not UTF-8 or not valid JSON (e.g. truncated)."""
    path = Path(path)
    todo = f"; {remedy}" if remedy else ""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadFileError(f"{path}: missing{todo}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BadFileError(f"{path}: not valid JSON ({str(e).splitlines()[0][:120]}; truncated?){todo}") from None
