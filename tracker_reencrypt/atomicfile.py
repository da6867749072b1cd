"""Replacing a file atomically: a temporary file in the same directory, written, synced, then
renamed over the target, so a crash or Ctrl-C leaves either the old file or the new one whole,
never half of each. The keyring, the tracker-service's dotenv file and preflight's baseline
all need exactly this."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_file(
    path: Path, text: str, *, mode: int = 0o644, owner: tuple[int, int] | None = None, sync_directory: bool = False
) -> None:
    """Write ``text`` (UTF-8) over ``path``. ``mode`` is set before any byte is written (a
    keyring is never readable by others, even for an instant); ``owner`` (uid, gid) is kept
    when it is not the caller's; ``sync_directory`` also syncs the rename itself, so it survives
    a power cut. Raises OSError; the temporary file never outlives a failure."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        if owner is not None and owner != (os.geteuid(), os.getegid()):
            os.fchown(fd, *owner)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_directory:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
