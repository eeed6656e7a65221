"""Files that are either complete or absent, and tensor files that never run code.

Every output goes to a temporary name in the same folder and is renamed into
place (rename is atomic on POSIX), so a killed stage never leaves a file that
looks complete.  Tensor files load with ``torch.load(weights_only=True)``: a
pickle that would execute code is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


class UnsafeFileError(Exception):
    """A tensor file that needs arbitrary unpickling (or is not a tensor file)."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
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
    """torch.save atomically; ``obj`` must hold only tensors, numbers, strings, lists and dicts."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_tensors(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """torch.load with weights_only=True; anything needing code execution is refused."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unpickling refused"
        raise UnsafeFileError(f"{path}: refused to load (not a plain tensor file: {first})") from None
    except (RuntimeError, EOFError) as e:
        raise UnsafeFileError(f"{path}: not a readable tensor file ({str(e).splitlines()[0]})") from None
