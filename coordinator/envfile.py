"""The tracker-service's dotenv file: set its ``TRACKER_MEK_ID_<PRODUCTID>`` lines, keep the rest.

Each variable's line is replaced where it is (an ``export`` prefix kept) or appended at the end;
every other line, blank ones and comments included, is copied byte for byte. The file is
replaced atomically (a temporary file in the same directory, synced, renamed) and keeps its mode
and its owner. A symlink is followed: the file it points to is the one the tracker reads, so that
is the one rewritten (replacing the link itself would leave the tracker on the old ids).

Not python-dotenv's ``set_key``: it drops the blank line before a variable it replaces (its
parser attaches that line to the variable), and an operator diffing the file after a rotation
must see only the key ids change. Line-based is enough here: our values are key ids, one line
each, and a tracker variable is never inside another variable's multi-line quoted value.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tracker_reencrypt.atomicfile import replace_file
from tracker_reencrypt.errors import ConfigError

_ASSIGNMENT = re.compile(r"\s*(export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


def check_env_file(path: Path) -> None:
    """Refuse, before anything changes, an env file that could not be written afterwards: a key
    rotated whose line then fails to land leaves the tracker-service pointing at the old id."""
    path = path.resolve()
    if not path.parent.is_dir():
        raise ConfigError(f"env file {path}: directory {path.parent} does not exist: create it or fix --env-file")
    if path.exists() and not (path.is_file() and os.access(path, os.R_OK | os.W_OK)):
        raise ConfigError(f"env file {path} is not a file this user can read and write: fix it or --env-file")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"env file {path}: directory {path.parent} is not writable (the file is replaced whole)")
    if path.exists() and os.geteuid() not in (0, path.stat().st_uid):
        raise ConfigError(
            f"env file {path} belongs to another user, and rewriting it would change its owner: run as that user"
        )


def update_env_file(path: Path, lines: list[str]) -> None:
    """Set each ``NAME=value`` of ``lines`` in the dotenv file at ``path`` (created if missing)."""
    check_env_file(path)
    path = path.resolve()  # through a symlink, to the file the tracker reads
    wanted = dict(line.split("=", 1) for line in lines)
    try:
        existing = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.exists() else []
        info = path.stat() if path.exists() else None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"env file {path} cannot be read ({type(error).__name__}): fix it or its permissions"
        ) from None
    updated, seen = [], set()
    for line in existing:
        match = _ASSIGNMENT.match(line)
        if match and match.group(2) in wanted:
            export, name = match.group(1) or "", match.group(2)
            updated.append(f"{export}{name}={wanted[name]}\n")
            seen.add(name)
        else:
            updated.append(line)
    if updated and not updated[-1].endswith("\n"):
        updated[-1] += "\n"
    updated += [f"{name}={value}\n" for name, value in wanted.items() if name not in seen]
    _replace(path, "".join(updated), info)


def _replace(path: Path, text: str, info: os.stat_result | None) -> None:
    """Write ``text`` over ``path`` atomically, with the mode and owner of the file it replaces."""
    try:
        replace_file(
            path,
            text,
            mode=info.st_mode & 0o7777 if info else 0o644,
            owner=(info.st_uid, info.st_gid) if info else None,
        )
    except OSError as error:
        raise ConfigError(f"env file {path} cannot be written ({error.strerror}): fix its permissions") from None
