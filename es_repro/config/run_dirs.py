"""Run directory names: results/<experiment>/<run_name(override_dirname)>, deterministic, so relaunching the same
command resumes an unfinished run and skips a finished one (the run_name resolver in conf/config.yaml)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from es_repro.util.files import file_sha256

MAX_RUN_NAME = 200  # file systems refuse names over 255 bytes; leave room for suffixes such as ".tmp"
_KEY = re.compile(r"(?:^|,)([+~]*[A-Za-z_][\w.\-]*)=")


def _path_label(value: str) -> str:
    """A path-valued override as a flat, short name: its last component + 8 hex of its contents (of the text when it
    is not a readable file), so a run directory never nests and is keyed by the data, not by where it lies."""
    path = Path(value)
    try:
        digest = file_sha256(path)
    except OSError:
        digest = hashlib.sha256(value.encode()).hexdigest()
    return f"{(path.name or 'path')[:40]}-{digest[:8]}"


def flatten_paths(overrides: str) -> str:
    """Replace every override value that contains '/' by its _path_label."""
    keys = list(_KEY.finditer(overrides))
    out = []
    for i, m in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(overrides)
        value = overrides[m.end():end]
        out.append(overrides[m.start():m.end()] + (_path_label(value) if "/" in value else value))
    return "".join(out).replace("/", "_") if keys else overrides.replace("/", "_")


def run_name(overrides: str) -> str:
    """A run directory's name from its overrides: "default" when there are none; path values flattened
    (flatten_paths); a long one is cut and given a hash of the whole, so two runs never share a directory and
    run.json still records every override."""
    if not overrides:
        return "default"
    overrides = flatten_paths(overrides)
    if len(overrides.encode()) <= MAX_RUN_NAME:
        return overrides
    digest = hashlib.sha1(overrides.encode()).hexdigest()[:12]
    return overrides.encode()[: MAX_RUN_NAME - 13].decode(errors="ignore") + "~" + digest
