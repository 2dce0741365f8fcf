"""Atomic checkpoint files: write to a temp file, fsync, rename (never a torn file)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file."""


def save_checkpoint(obj: Any, path) -> Path:
    """torch.save(obj) to `path` atomically. On failure (full disk, unwritable directory)
    the previous file at `path`, if any, is untouched and CheckpointError names the path."""
    path = Path(path)
    fd, tmp = None, None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            fd = None
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise CheckpointError(f"{path}: could not write checkpoint ({_problem(path, e)})") from None
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _problem(path: Path, e: OSError) -> str:
    """What went wrong, in words: 'No space left on device', '/x/f is not a directory'."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is not a directory"
    what = e.strerror or str(e)
    return f"{what}: {e.filename}" if e.filename and str(e.filename) != str(path) else what


def load_checkpoint(path) -> dict:
    """Load a checkpoint written by save_checkpoint; CheckpointError names the file on failure."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({str(e).strip()[:200]})") from None
    if not isinstance(obj, dict) or "policy" not in obj:
        raise CheckpointError(f"{path}: not a checkpoint of this trainer (no 'policy' entry)")
    return obj
