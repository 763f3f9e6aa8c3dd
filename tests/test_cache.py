"""The on-disk cache of compiled artefacts (openlpu.compiler.cache): hits, misses, corruption, keys, switches."""

from __future__ import annotations

import enum
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from openlpu.compiler import cache
from openlpu.compiler.cache import cached, canonical_json, entry_path, file_identity, source_fingerprint
from openlpu.errors import InternalError
from openlpu.hardware import load_chip


class Counter:
    """A build function that counts its calls and returns a fresh list each time."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> list[int]:
        self.calls += 1
        return [self.calls, 42]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cache.NO_CACHE_ENV, raising=False)
    monkeypatch.delenv(cache.CACHE_DIR_ENV, raising=False)


KEY = {"model": "m.gguf", "dtype": "fp16", "context": 128}


def test_second_call_is_a_hit(tmp_path: Path) -> None:
    build = Counter()
    assert cached("thing", KEY, build, directory=tmp_path) == [1, 42]
    assert cached("thing", dict(reversed(KEY.items())), build, directory=tmp_path) == [1, 42]
    assert build.calls == 1
    assert entry_path("thing", KEY, tmp_path).parent == tmp_path / "thing"
    assert [p.name for p in (tmp_path / "thing").iterdir()] == [entry_path("thing", KEY, tmp_path).name]


@pytest.mark.parametrize("change", [{"dtype": "int8"}, {"context": 256}, {"extra": None}])
def test_any_key_change_misses(tmp_path: Path, change: dict[str, object]) -> None:
    build = Counter()
    cached("thing", KEY, build, directory=tmp_path)
    assert cached("thing", {**KEY, **change}, build, directory=tmp_path) == [2, 42]
    assert cached("other", KEY, build, directory=tmp_path) == [3, 42]


def test_a_code_change_misses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build = Counter()
    cached("thing", KEY, build, directory=tmp_path)
    monkeypatch.setattr(cache, "source_fingerprint", lambda: "0" * 64)
    assert cached("thing", KEY, build, directory=tmp_path) == [2, 42]


@pytest.mark.parametrize("damage", [b"", b"not a pickle", pickle.dumps(("another identity", [9]))])
def test_unreadable_entry_is_rebuilt(tmp_path: Path, damage: bytes) -> None:
    build = Counter()
    cached("thing", KEY, build, directory=tmp_path)
    path = entry_path("thing", KEY, tmp_path)
    path.write_bytes(damage)
    assert cached("thing", KEY, build, directory=tmp_path) == [2, 42]
    assert cached("thing", KEY, build, directory=tmp_path) == [2, 42]  # rewritten
    assert build.calls == 2


def test_truncated_entry_is_rebuilt(tmp_path: Path) -> None:
    build = Counter()
    cached("thing", KEY, build, directory=tmp_path)
    path = entry_path("thing", KEY, tmp_path)
    path.write_bytes(path.read_bytes()[:-5])
    assert cached("thing", KEY, build, directory=tmp_path) == [2, 42]


def test_unwritable_directory_still_builds(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    build = Counter()
    assert cached("thing", KEY, build, directory=blocker) == [1, 42]
    assert cached("thing", KEY, build, directory=blocker) == [2, 42]


def test_no_temporary_files_left(tmp_path: Path) -> None:
    for context in range(5):
        cached("thing", {**KEY, "context": context}, Counter(), directory=tmp_path)
    assert sorted(p.suffix for p in (tmp_path / "thing").iterdir()) == [".pickle"] * 5


def test_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.NO_CACHE_ENV, "1")
    build = Counter()
    cached("thing", KEY, build, directory=tmp_path)
    cached("thing", KEY, build, directory=tmp_path)
    assert build.calls == 2 and not any(tmp_path.iterdir())
    monkeypatch.setenv(cache.NO_CACHE_ENV, "0")
    cached("thing", KEY, build, directory=tmp_path)
    cached("thing", KEY, build, directory=tmp_path)
    assert build.calls == 3


def test_directory_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(tmp_path / "c"))
    assert cache.cache_directory() == tmp_path / "c"
    cached("thing", KEY, Counter())
    assert entry_path("thing", KEY).is_file() and entry_path("thing", KEY).is_relative_to(tmp_path / "c")
    monkeypatch.delenv(cache.CACHE_DIR_ENV)
    assert cache.cache_directory() == Path.home() / ".cache" / "openlpu"


class Colour(enum.Enum):
    RED = "red"


@dataclass(frozen=True)
class Options:
    dtype: str
    layers: range


def test_canonical_json() -> None:
    assert canonical_json({"b": 1, "a": [Path("/x/y"), Colour.RED, b"\x01", frozenset({3, 1}), np.int64(5)]}) == (
        '{"a":["/x/y","red","01",[1,3],5],"b":1}'
    )
    assert canonical_json(Options("fp16", range(0, 4))) == (
        '{"__type__":"test_cache.Options","dtype":"fp16","layers":[0,4,1]}'
    )
    chip = load_chip("groqchip1")
    assert canonical_json({"chip": chip}) == canonical_json({"chip": load_chip("groqchip1")})


def test_unencodable_key_is_a_bug() -> None:
    with pytest.raises(InternalError) as err:
        cached("thing", {"f": object}, Counter(), directory=Path("/nonexistent"))
    assert str(err.value) == (
        "cache key holds a type (<class 'object'>), which has no canonical JSON form; put a str, number, path, "
        "enum, dataclass or file_identity() in the key instead"
    )
    with pytest.raises(InternalError, match="cache kind 'a/b' is not a folder name"):
        cached("a/b", KEY, Counter())


def test_file_identity_follows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"abc")
    first = file_identity(path)
    assert first == {"path": str(path.resolve()), "size": 3, "mtime_ns": path.stat().st_mtime_ns}
    os.utime(path, ns=(0, first["mtime_ns"] + 1_000_000))
    assert file_identity(path) != first


def test_source_fingerprint_is_stable() -> None:
    fingerprint = source_fingerprint()
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
    assert source_fingerprint() is fingerprint  # computed once per process
