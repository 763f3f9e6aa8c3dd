"""The chip description: the groqchip1 preset, its derived figures, and whole error messages for bad files."""

from __future__ import annotations

import copy
import tomllib
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from openlpu.errors import ConfigError
from openlpu.hardware import Chip, chip_from_dict, load_chip, preset_names

MIB = 1 << 20
PRESET_TEXT = (resources.files("openlpu.hardware.presets") / "groqchip1.toml").read_text(encoding="utf-8")


def preset_dict() -> dict[str, Any]:
    return tomllib.loads(PRESET_TEXT)


def test_presets_listed() -> None:
    assert "groqchip1" in preset_names()


def test_preset_loads_reference_values() -> None:
    c = load_chip("groqchip1")
    assert (c.name, c.source, c.clock_hz) == ("groqchip1", "preset groqchip1", 900_000_000)
    assert (c.lanes.superlanes, c.lanes.lanes_per_superlane, c.lanes.lanes) == (20, 16, 320)
    assert c.streams.streams_per_direction == 32
    assert (c.mem.slices_per_hemisphere, c.mem.addresses_per_slice, c.mem.banks_per_slice) == (44, 8192, 2)
    assert (c.vxm.alus, c.vxm.ranks, c.vxm.large_alus) == (16, 4, (0, 2, 5, 7, 8, 10, 13, 15))
    assert (c.mxm.planes, c.mxm.plane_rows, c.mxm.plane_columns) == (4, 320, 320)
    assert (c.sxm.queues_per_hemisphere, c.icu.mxm_queues_per_hemisphere) == (14, 6)
    assert load_chip() == c  # groqchip1 is the default


def test_derived_figures() -> None:
    c = load_chip("groqchip1")
    assert c.vector_bytes == 320
    assert c.mem_slices == 88
    assert c.slice_bytes == 5 * MIB // 2
    assert c.sram_bytes == 88 * 5 * MIB // 2 == 230_686_720
    assert c.sram_bytes_per_cycle == 56_320
    assert c.sram_read_bytes_per_cycle == 28_160
    assert c.queue_count == 144
    s = c.summary()
    assert s["peak_int8_ops_per_second"] == 737_280_000_000_000
    assert s["peak_fp16_flops_per_second"] == 184_320_000_000_000
    assert s["sram_bandwidth_bytes_per_second"] == 56_320 * 900_000_000
    assert s["instruction_queues"] == 144
    assert all(isinstance(v, int) for k, v in s.items() if k not in ("name", "source"))


def test_chip_is_frozen() -> None:
    c = load_chip()
    with pytest.raises(AttributeError):
        c.mem.addresses_per_slice = 1  # type: ignore[misc]


def test_user_file_with_double_sram(tmp_path: Path) -> None:
    text = PRESET_TEXT.replace("addresses_per_slice = 8192", "addresses_per_slice = 16384")
    assert text != PRESET_TEXT
    path = tmp_path / "big.toml"
    path.write_text(text, encoding="utf-8")
    big = load_chip(path)
    assert big.source == str(path)
    assert big.sram_bytes == 2 * load_chip("groqchip1").sram_bytes == 440 * MIB
    assert load_chip(str(path)) == big


def _set(section: str, **values: Any):
    return lambda d: d[section].update(values)


def _drop(section: str, name: str | None = None):
    return lambda d: d.pop(section) if name is None else d[section].pop(name)


BAD_CHIPS = {
    "missing section": (_drop("sxm"), "my.toml: [sxm]: missing section; add a [sxm] table"),
    "missing field": (
        _drop("mem", "read_latency_cycles"),
        "my.toml: [mem.read_latency_cycles]: missing; add `read_latency_cycles = ...` (an integer in 1..64)",
    ),
    "unknown field": (
        _set("mem", latency=3),
        "my.toml: [mem]: unknown field(s) ['latency']; valid fields are "
        "['addresses_per_slice', 'banks_per_slice', 'read_latency_cycles', 'slices_per_hemisphere', "
        "'write_latency_cycles']",
    ),
    "unknown section": (
        lambda d: d.update(cache={}),
        "my.toml: [cache]: unknown section(s); valid sections are "
        "['c2c', 'chip', 'icu', 'lanes', 'mem', 'mxm', 'streams', 'sxm', 'vxm']",
    ),
    "wrong type": (
        _set("mem", addresses_per_slice="8192"),
        "my.toml: [mem.addresses_per_slice]: value '8192' must be an integer in 2..16777216",
    ),
    "bool is not an int": (
        _set("mem", banks_per_slice=True),
        "my.toml: [mem.banks_per_slice]: value True must be an integer in 1..2",
    ),
    "section not a table": (lambda d: d.update(mem=3), "my.toml: [mem]: must be a table, got int"),
    "empty name": (_set("chip", name=""), "my.toml: [chip.name]: value '' must be a non-empty string"),
    "out of range": (
        _set("chip", clock_hz=0),
        "my.toml: [chip.clock_hz]: value 0 is outside the valid range 1000000..100000000000",
    ),
    "odd planes": (
        _set("mxm", planes=3),
        "my.toml: [mxm.planes]: value 3 must be even (half the planes per hemisphere)",
    ),
    "planes narrower than a vector": (
        _set("mxm", plane_rows=256, plane_columns=256),
        "my.toml: [mxm]: plane_rows = 256 and plane_columns = 256 must both equal the vector length "
        "superlanes*lanes_per_superlane = 320 (a plane consumes whole vectors)",
    ),
    "alus not a multiple of ranks": (
        _set("vxm", ranks=3),
        "my.toml: [vxm]: alus = 16 is not a multiple of ranks = 3",
    ),
    "large ALU out of range": (
        _set("vxm", large_alus=[0, 16]),
        "my.toml: [vxm.large_alus]: ALU ids [16] are outside 0..15",
    ),
    "too few large ALUs for the kernels": (
        _set("vxm", large_alus=[0, 5, 10, 15]),
        "my.toml: [vxm]: ranks = 4 with [1, 1, 1, 1] large ALUs per rank: the kernels chain operations through four "
        "ranks with two large ALUs side by side in each (the reference's 4x4 mesh, large ALUs in a checkerboard); "
        "give ranks >= 4 and at least two large ALUs in every rank (ALU id = ranks * row + rank)",
    ),
    "too few ranks for the kernels": (
        _set("vxm", ranks=2),
        "my.toml: [vxm]: ranks = 2 with [4, 4] large ALUs per rank: the kernels chain operations through four "
        "ranks with two large ALUs side by side in each (the reference's 4x4 mesh, large ALUs in a checkerboard); "
        "give ranks >= 4 and at least two large ALUs in every rank (ALU id = ranks * row + rank)",
    ),
}


@pytest.mark.parametrize("case", BAD_CHIPS)
def test_bad_chip_rejected_with_whole_message(case: str) -> None:
    mutate, message = BAD_CHIPS[case]
    data = copy.deepcopy(preset_dict())
    mutate(data)
    with pytest.raises(ConfigError) as e:
        chip_from_dict(data, source="my.toml")
    assert str(e.value) == message


def test_bad_toml_syntax(tmp_path: Path) -> None:
    text = "[chip\nname = 'x'\n"
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(tomllib.TOMLDecodeError) as parse_error:
        tomllib.loads(text)
    with pytest.raises(ConfigError) as e:
        load_chip(path)
    assert str(e.value) == f"{path}: not valid TOML: {parse_error.value}"
    assert "line 1" in str(e.value)


def test_unknown_preset_name() -> None:
    with pytest.raises(ConfigError) as e:
        load_chip("groqchip9")
    assert str(e.value) == "unknown chip 'groqchip9': give a preset (groqchip1) or a path to a .toml"


def test_missing_chip_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as e:
        load_chip(path)
    assert str(e.value) == f"{path}: no such chip file; give a preset (groqchip1) or a path"


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "slow.toml"
    path.write_text(PRESET_TEXT.replace("clock_hz = 900_000_000", "clock_hz = 10"), encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_chip(path)
    range_text = "1000000..100000000000"
    assert str(e.value) == f"{path}: [chip.clock_hz]: value 10 is outside the valid range {range_text}"


def test_direct_construction_is_checked() -> None:
    c = load_chip()
    with pytest.raises(ConfigError, match=r"^<built-in>: \[mxm.planes\]: value 5 must be even"):
        Chip(chip=c.chip, lanes=c.lanes, streams=c.streams, mem=c.mem, vxm=c.vxm,
             mxm=type(c.mxm)(**{**_fields(c.mxm), "planes": 5}), sxm=c.sxm, icu=c.icu, c2c=c.c2c)


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}
