"""Files that survive a kill: written beside their target and renamed into place (a reader sees the old file or
the new one, never half), and a file's content hash."""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


def temp_path(path: Path) -> Path:
    """Where a writer of ``path`` (a file or a directory) puts its unfinished copy: hidden, per process."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file to write ``path``; on a clean exit flush, fsync and rename it into place."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    with atomic_file(path) as f:
        json.dump(data, f, indent=2, default=str)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_root() -> Path:
    """Where converted checkpoints and noise tables live: $ES_REPRO_CACHE, else ~/.cache/es-repro."""
    return Path(os.environ.get("ES_REPRO_CACHE", Path.home() / ".cache" / "es-repro"))
