"""Tiny JSON-lines helpers shared by every stage.

Writes are atomic (temp file in the same folder, then os.replace) so a crashed stage never leaves
a half-written file that the next stage would happily read.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read one JSON object per line. Blank lines are skipped; anything else malformed is an error."""
    path = Path(path)
    records: list[dict] = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: malformed JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    return records


def chmod_as_created(fd: int) -> None:
    """Give a mkstemp file (always 0600) the mode open() would have: 0666 less the umask, like every other
    file the project writes, so an index or a table published by rename is readable by whoever reads the rest."""
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Write records one per line, atomically. Creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temp file must live in the same folder so os.replace is a same-filesystem rename.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    chmod_as_created(fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
