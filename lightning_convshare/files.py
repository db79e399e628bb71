"""Writing files so that a reader (or a crash) never sees half of one: the project's one atomic write.

Every file a run, a sweep or a command leaves behind (``config.yaml``, ``metrics.json``,
``state.json``, checkpoints written outside a Trainer) goes through :func:`atomic_write`: the data
are written to a temporary file in the same directory, flushed to disk and moved over the target
with ``os.replace``, which is atomic on POSIX file systems.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Union

__all__ = ["atomic_write", "write_csv", "write_json"]

Payload = Union[str, bytes, Callable[[Path], None]]


def atomic_write(path: str | os.PathLike, data: Payload) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    Args:
        path: the target file (parent directories are created).
        data: text, bytes, or a writer ``fn(tmp_path)`` that writes the file itself (e.g.
            ``lambda p: torch.save(obj, p)``).

    Returns:
        ``Path(path)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if callable(data):
            os.close(fd)
            data(Path(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        else:
            with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """``data`` as indented, key-sorted JSON (non-JSON values as ``str``), written atomically."""
    return atomic_write(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> Path:
    """``rows`` (mappings with the keys ``fields``) as CSV with a header, written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields))
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, buffer.getvalue())
