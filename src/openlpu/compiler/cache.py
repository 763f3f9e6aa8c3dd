"""An on-disk cache of compiled artefacts, so that a second run of the same model on the same chip skips the work.

An entry is named by the sha256 of a canonical JSON text of its kind, the caller's key (model file identity, chip,
options), the openlpu version and a hash of openlpu's source files: a change to any of them, OpenLPU's own code
included, makes a new entry. Entries are pickles written atomically (a temporary file, then `os.replace`) under
``$OPENLPU_CACHE_DIR`` or ``~/.cache/openlpu``, one folder per kind. An entry that cannot be read is rebuilt and
rewritten, not an error; a folder that cannot be written costs only the rebuild. ``OPENLPU_NO_CACHE=1`` turns the
cache off.

Loading a pickle runs code: the cache folder must be writable only by its owner, as ``~/.cache`` is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import hashlib
import json
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path, PurePath
from typing import Any, TypeVar

import numpy as np

from openlpu.errors import InternalError

T = TypeVar("T")

CACHE_DIR_ENV = "OPENLPU_CACHE_DIR"
NO_CACHE_ENV = "OPENLPU_NO_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/openlpu")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
"""The ``openlpu`` package folder, whose ``*.py`` files `source_fingerprint` hashes."""

_KIND = re.compile(r"[a-z0-9][a-z0-9_.-]*")


def cache_directory() -> Path:
    """``$OPENLPU_CACHE_DIR`` if set, else ``~/.cache/openlpu``."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()


def cache_enabled() -> bool:
    """False when ``OPENLPU_NO_CACHE`` is set to anything but empty or ``0``."""
    return os.environ.get(NO_CACHE_ENV, "") in ("", "0")


@functools.cache
def source_fingerprint() -> str:
    """sha256 (hex) of every ``openlpu/**/*.py`` file's path and contents; computed once per process."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        h.update(path.relative_to(PACKAGE_ROOT).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def package_version() -> str:
    """The installed openlpu distribution's version, or ``"unknown"`` when run from an uninstalled tree."""
    try:
        return metadata.version("openlpu")
    except metadata.PackageNotFoundError:
        return "unknown"


def file_identity(path: str | Path) -> dict[str, Any]:
    """What names a file's contents cheaply: its resolved path, size and modification time in nanoseconds."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _plain(value: Any) -> Any:
    """JSON form of the non-JSON values a key may hold (`json.dumps` calls it for each one)."""
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {"__type__": f"{type(value).__module__}.{type(value).__qualname__}", **fields}
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, range):
        return [value.start, value.stop, value.step]
    if isinstance(value, np.generic):
        return value.item()
    raise InternalError(
        f"cache key holds a {type(value).__name__} ({value!r:.80}), which has no canonical JSON form; "
        "put a str, number, path, enum, dataclass or file_identity() in the key instead"
    )


def canonical_json(value: Any) -> str:
    """One text per value: sorted keys, no spaces, paths/enums/dataclasses written as plain JSON."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_plain)


def _identity(kind: str, key: Mapping[str, object]) -> str:
    if not _KIND.fullmatch(kind):
        raise InternalError(f"cache kind {kind!r} is not a folder name; use lower-case letters, digits, _ . -")
    return canonical_json(
        {"kind": kind, "key": dict(key), "openlpu": package_version(), "source": source_fingerprint()}
    )


def entry_path(kind: str, key: Mapping[str, object], directory: Path | None = None) -> Path:
    """Where the entry for (`kind`, `key`) lives."""
    return _entry_path(kind, _identity(kind, key), directory)


def _entry_path(kind: str, identity: str, directory: Path | None) -> Path:
    digest = hashlib.sha256(identity.encode()).hexdigest()
    return (directory or cache_directory()) / kind / f"{digest}.pickle"


def _load(path: Path, identity: str) -> tuple[bool, Any]:
    """(True, value) if `path` holds an entry for `identity`; (False, None) if it is missing or unreadable."""
    try:
        with path.open("rb") as f:
            stored_identity, value = pickle.load(f)
    # A truncated or foreign pickle can raise almost anything (EOFError, UnpicklingError, ValueError, an
    # ImportError for a class since renamed...): each only means the entry must be rebuilt.
    except Exception:
        return False, None
    return (True, value) if stored_identity == identity else (False, None)


def _store(path: Path, identity: str, value: Any) -> None:
    """Write the entry atomically; a folder that cannot be written is skipped (the cache is an optimisation)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump((identity, value), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError:
        pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def cached(kind: str, key: Mapping[str, object], build: Callable[[], T], *, directory: Path | None = None) -> T:
    """The value `build()` returns for (`kind`, `key`), from the cache if an entry exists, else built and stored.

    `kind` names the artefact (a folder name, e.g. ``"compiled-model"``); `key` holds everything the value
    depends on besides OpenLPU's own code (which is added automatically): use `file_identity` for files.
    `directory` overrides `cache_directory()`. With ``OPENLPU_NO_CACHE=1`` this is just `build()`.
    """
    identity = _identity(kind, key)
    if not cache_enabled():
        return build()
    path = _entry_path(kind, identity, directory)
    found, value = _load(path, identity)
    if found:
        return value
    value = build()
    _store(path, identity, value)
    return value
