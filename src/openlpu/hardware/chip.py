"""The hardware description: one frozen dataclass per concept, loaded from TOML presets or user files.

Every field carries its unit in its name and a valid range in its metadata; `load_chip` checks every value and
reports the file, the field, the value and the valid range of anything wrong.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

from openlpu.errors import ConfigError

PRESETS_PACKAGE = "openlpu.hardware.presets"


def _range(lo: int | float, hi: int | float) -> Any:
    return field(metadata={"range": (lo, hi)})


@dataclass(frozen=True, kw_only=True, slots=True)
class LaneConfig:
    superlanes: int = _range(1, 64)
    lanes_per_superlane: int = _range(1, 64)

    @property
    def lanes(self) -> int:
        """Lanes in one vector (bytes in one stream register)."""
        return self.superlanes * self.lanes_per_superlane


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamConfig:
    streams_per_direction: int = _range(4, 256)


@dataclass(frozen=True, kw_only=True, slots=True)
class MemConfig:
    slices_per_hemisphere: int = _range(1, 1024)
    addresses_per_slice: int = _range(2, 1 << 24)
    banks_per_slice: int = _range(1, 2)
    read_latency_cycles: int = _range(1, 64)
    write_latency_cycles: int = _range(1, 64)


@dataclass(frozen=True, kw_only=True, slots=True)
class VxmConfig:
    alus: int = _range(1, 64)
    ranks: int = _range(1, 64)
    large_alus: tuple[int, ...] = _range(0, 63)
    simple_latency_cycles: int = _range(1, 64)
    convert_latency_cycles: int = _range(1, 64)
    transcendental_latency_cycles: int = _range(1, 256)


@dataclass(frozen=True, kw_only=True, slots=True)
class MxmConfig:
    planes: int = _range(2, 64)
    plane_rows: int = _range(16, 4096)
    plane_columns: int = _range(16, 4096)
    accumulator_vectors: int = _range(1, 1 << 16)
    abc_latency_cycles: int = _range(1, 1024)
    acc_latency_cycles: int = _range(1, 64)
    iw_latency_cycles: int = _range(1, 64)
    fp16_issue_interval_cycles: int = _range(1, 16)


@dataclass(frozen=True, kw_only=True, slots=True)
class SxmConfig:
    queues_per_hemisphere: int = _range(1, 64)
    shift_latency_cycles: int = _range(1, 256)
    distribute_latency_cycles: int = _range(1, 256)
    permute_latency_cycles: int = _range(1, 256)
    rotate_latency_cycles: int = _range(1, 256)
    transpose_latency_cycles: int = _range(1, 256)


@dataclass(frozen=True, kw_only=True, slots=True)
class IcuConfig:
    mxm_queues_per_hemisphere: int = _range(1, 64)
    notify_latency_cycles: int = _range(1, 1024)


@dataclass(frozen=True, kw_only=True, slots=True)
class C2cConfig:
    """Chip-to-chip links: a vector occupies a link for its serialisation time, then arrives `link_latency`
    later in the peer's receive buffer (no flow control: the schedule must match sends and receives)."""

    links: int = _range(0, 256)
    lanes_per_link: int = _range(1, 64)
    lane_rate_bps: int = _range(1_000_000, 1_000_000_000_000)
    wire_bytes_per_vector: int = _range(1, 1 << 20)
    link_latency_cycles: int = _range(1, 1 << 20)
    receive_latency_cycles: int = _range(1, 64)

    @property
    def link_bytes_per_second(self) -> int:
        return self.lanes_per_link * self.lane_rate_bps // 8


@dataclass(frozen=True, kw_only=True, slots=True)
class ChipInfo:
    name: str
    clock_hz: int = _range(1_000_000, 100_000_000_000)


@dataclass(frozen=True, kw_only=True, slots=True)
class Chip:
    """One LPU chip. Derived figures are properties; positions live in `openlpu.hardware.geometry`."""

    chip: ChipInfo
    lanes: LaneConfig
    streams: StreamConfig
    mem: MemConfig
    vxm: VxmConfig
    mxm: MxmConfig
    sxm: SxmConfig
    icu: IcuConfig
    c2c: C2cConfig
    source: str = "<built-in>"

    def __post_init__(self) -> None:
        _check_consistency(self)

    @property
    def name(self) -> str:
        return self.chip.name

    @property
    def clock_hz(self) -> int:
        return self.chip.clock_hz

    @property
    def vector_bytes(self) -> int:
        return self.lanes.lanes

    @property
    def mem_slices(self) -> int:
        return 2 * self.mem.slices_per_hemisphere

    @property
    def slice_bytes(self) -> int:
        return self.mem.addresses_per_slice * self.vector_bytes

    @property
    def sram_bytes(self) -> int:
        return self.mem_slices * self.slice_bytes

    @property
    def macs_per_cycle_int8(self) -> int:
        return self.mxm.planes * self.mxm.plane_rows * self.mxm.plane_columns

    @property
    def macs_per_cycle_fp16(self) -> int:
        """fp16 runs on plane pairs, one vector per `fp16_issue_interval_cycles`."""
        pairs = self.mxm.planes // 2
        return pairs * self.mxm.plane_rows * self.mxm.plane_columns // self.mxm.fp16_issue_interval_cycles

    @property
    def sram_bytes_per_cycle(self) -> int:
        """Read plus write bandwidth: every slice reads one vector and writes one vector per cycle."""
        return self.mem_slices * self.mem.banks_per_slice * self.vector_bytes

    @property
    def sram_read_bytes_per_cycle(self) -> int:
        return self.mem_slices * self.vector_bytes

    @property
    def serialisation_cycles(self) -> int:
        """Cycles one vector occupies a link: wire bytes at the link rate, rounded up to whole cycles."""
        bits = 8 * self.c2c.wire_bytes_per_vector * self.clock_hz
        rate = self.c2c.lanes_per_link * self.c2c.lane_rate_bps
        return -(-bits // rate)

    @property
    def queue_count(self) -> int:
        per_hemisphere = self.mem.slices_per_hemisphere + self.sxm.queues_per_hemisphere
        return 2 * (per_hemisphere + self.icu.mxm_queues_per_hemisphere) + self.vxm.alus

    def summary(self) -> dict[str, float | int | str]:
        """Derived figures a user checks after writing a chip file (exact integers plus per-second rates)."""
        hz = self.clock_hz
        return {
            "name": self.name,
            "source": self.source,
            "clock_hz": hz,
            "lanes": self.lanes.lanes,
            "vector_bytes": self.vector_bytes,
            "mem_slices": self.mem_slices,
            "sram_bytes": self.sram_bytes,
            "sram_read_bytes_per_cycle": self.sram_read_bytes_per_cycle,
            "sram_bytes_per_cycle": self.sram_bytes_per_cycle,
            "sram_bandwidth_bytes_per_second": self.sram_bytes_per_cycle * hz,
            "macs_per_cycle_int8": self.macs_per_cycle_int8,
            "macs_per_cycle_fp16": self.macs_per_cycle_fp16,
            "peak_int8_ops_per_second": 2 * self.macs_per_cycle_int8 * hz,
            "peak_fp16_flops_per_second": 2 * self.macs_per_cycle_fp16 * hz,
            "vxm_alus": self.vxm.alus * self.lanes.lanes,
            "instruction_queues": self.queue_count,
            "c2c_links": self.c2c.links,
            "c2c_link_bytes_per_second": self.c2c.link_bytes_per_second,
            "c2c_serialisation_cycles": self.serialisation_cycles,
            "c2c_link_latency_cycles": self.c2c.link_latency_cycles,
        }


SECTIONS: dict[str, type] = {
    "chip": ChipInfo,
    "lanes": LaneConfig,
    "streams": StreamConfig,
    "mem": MemConfig,
    "vxm": VxmConfig,
    "mxm": MxmConfig,
    "sxm": SxmConfig,
    "icu": IcuConfig,
    "c2c": C2cConfig,
}


def _fail(source: str, where: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: [{where}]: {message}")


def _check_consistency(c: Chip) -> None:
    src = c.source
    if c.vxm.alus % c.vxm.ranks:
        raise _fail(src, "vxm", f"alus = {c.vxm.alus} is not a multiple of ranks = {c.vxm.ranks}")
    bad = [a for a in c.vxm.large_alus if not 0 <= a < c.vxm.alus]
    if bad:
        raise _fail(src, "vxm.large_alus", f"ALU ids {bad} are outside 0..{c.vxm.alus - 1}")
    per_rank = [sum(a % c.vxm.ranks == r for a in set(c.vxm.large_alus)) for r in range(c.vxm.ranks)]
    if c.vxm.ranks < 4 or min(per_rank) < 2:
        raise _fail(src, "vxm", f"ranks = {c.vxm.ranks} with {per_rank} large ALUs per rank: the kernels chain "
                                "operations through four ranks with two large ALUs side by side in each (the "
                                "reference's 4x4 mesh, large ALUs in a checkerboard); give ranks >= 4 and at least "
                                "two large ALUs in every rank (ALU id = ranks * row + rank)")
    if c.mxm.planes % 2:
        raise _fail(src, "mxm.planes", f"value {c.mxm.planes} must be even (half the planes per hemisphere)")
    if c.mxm.plane_rows != c.lanes.lanes or c.mxm.plane_columns != c.lanes.lanes:
        raise _fail(
            src,
            "mxm",
            f"plane_rows = {c.mxm.plane_rows} and plane_columns = {c.mxm.plane_columns} must both equal the "
            f"vector length superlanes*lanes_per_superlane = {c.lanes.lanes} (a plane consumes whole vectors)",
        )
    if c.mxm.plane_rows % c.streams.streams_per_direction:
        raise _fail(
            src,
            "mxm.plane_rows",
            f"value {c.mxm.plane_rows} must be a multiple of streams_per_direction = "
            f"{c.streams.streams_per_direction} (LW loads one row per stream per cycle)",
        )
    if c.c2c.links % 2:
        raise _fail(src, "c2c.links", f"value {c.c2c.links} must be even (half the links at each hemisphere)")
    if c.streams.streams_per_direction % 4:
        raise _fail(src, "streams.streams_per_direction", "must be a multiple of 4 (fp32 uses 4-stream groups)")


def _convert(source: str, section: str, f: dataclasses.Field, hint: Any, raw: Any) -> Any:
    where = f"{section}.{f.name}"
    lo, hi = f.metadata.get("range", (None, None))
    if hint is str:
        if not isinstance(raw, str) or not raw:
            raise _fail(source, where, f"value {raw!r} must be a non-empty string")
        return raw
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise _fail(source, where, f"value {raw!r} must be an integer in {lo}..{hi}")
        if not lo <= raw <= hi:
            raise _fail(source, where, f"value {raw} is outside the valid range {lo}..{hi}")
        return raw
    if hint == tuple[int, ...]:
        if not isinstance(raw, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
            raise _fail(source, where, f"value {raw!r} must be a list of integers")
        return tuple(raw)
    raise _fail(source, where, f"unsupported field type {hint}")  # pragma: no cover - schema bug


def _build_section(source: str, name: str, cls: type, table: Any) -> Any:
    if not isinstance(table, dict):
        raise _fail(source, name, f"must be a table, got {type(table).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise _fail(source, name, f"unknown field(s) {unknown}; valid fields are {sorted(known)}")
    values = {}
    for f in fields(cls):
        if f.name not in table:
            lo, hi = f.metadata.get("range", (None, None))
            hint = f" (an integer in {lo}..{hi})" if lo is not None else ""
            raise _fail(source, f"{name}.{f.name}", f"missing; add `{f.name} = ...`{hint}")
        values[f.name] = _convert(source, name, f, hints[f.name], table[f.name])
    return cls(**values)


def chip_from_dict(data: dict[str, Any], *, source: str) -> Chip:
    """Build and validate a Chip from a parsed TOML document."""
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise _fail(source, ",".join(unknown), f"unknown section(s); valid sections are {sorted(SECTIONS)}")
    parts = {}
    for name, cls in SECTIONS.items():
        if name not in data:
            raise _fail(source, name, f"missing section; add a [{name}] table")
        parts[name] = _build_section(source, name, cls, data[name])
    return Chip(**parts, source=source)


def preset_names() -> list[str]:
    files = resources.files(PRESETS_PACKAGE).iterdir()
    return sorted(p.name.removesuffix(".toml") for p in files if p.name.endswith(".toml"))


def load_chip(preset_or_path: str | Path = "groqchip1") -> Chip:
    """Load a preset by name (e.g. ``groqchip1``) or a chip TOML file by path."""
    text, source = _read_chip_text(str(preset_or_path))
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    return chip_from_dict(data, source=source)


def _read_chip_text(spec: str) -> tuple[str, str]:
    if spec in preset_names():
        res = resources.files(PRESETS_PACKAGE) / f"{spec}.toml"
        return res.read_text(encoding="utf-8"), f"preset {spec}"
    path = Path(spec)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"{spec}: no such chip file; give a preset ({', '.join(preset_names())}) or a path")
        return path.read_text(encoding="utf-8"), str(path)
    raise ConfigError(f"unknown chip {spec!r}: give a preset ({', '.join(preset_names())}) or a path to a .toml")
