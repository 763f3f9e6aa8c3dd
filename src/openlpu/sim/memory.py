"""SRAM: the tensor layout map, initial contents, and the static checks of every MEM access.

The SRAM is one uint8 array [slice, address, lane] (west slices first); allocation is lazy, so untouched
slices cost nothing.
"""

from __future__ import annotations

import numpy as np

from openlpu.errors import InternalError, ProgramError
from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Geometry
from openlpu.isa.program import Init, InitKind, Program, Tensor
from openlpu.sim.numerics import planes_to_values, values_to_planes


def tensor_locations(t: Tensor, chip: Chip) -> tuple[np.ndarray, np.ndarray]:
    """(slices [rows, blocks, w], addresses [rows, blocks]) of every row's byte planes, per the layout in
    `openlpu.isa.program`."""
    geo, p, w = Geometry.of(chip), t.placement, t.dtype.width_bytes
    lanes = chip.lanes.lanes
    r = np.arange(t.rows)[:, None]
    j = np.arange(t.column_blocks(lanes))[None, :]
    addresses = p.address + j * t.rows_per_group() + r // p.interleave
    local = p.first_slice + (r % p.interleave)[:, :, None] * w + np.arange(w)[None, None, :]
    slices = geo.global_slice(p.hemisphere, 0) + np.broadcast_to(local, (t.rows, j.shape[1], w))
    return slices, np.broadcast_to(addresses, (t.rows, j.shape[1]))


def check_tensor(t: Tensor, chip: Chip) -> None:
    lanes = chip.lanes.lanes
    last_slice = t.placement.first_slice + min(t.placement.interleave, t.rows) * t.dtype.width_bytes - 1
    last_addr = t.placement.address + t.column_blocks(lanes) * t.rows_per_group() - 1
    where = f"tensor {t.name}"
    if t.rows < 1 or t.cols < 1:
        raise ProgramError(f"{where}: shape {t.rows}x{t.cols} must be positive")
    if t.placement.first_slice < 0 or last_slice >= chip.mem.slices_per_hemisphere:
        raise ProgramError(
            f"{where}: needs MEM slices {t.placement.first_slice}..{last_slice} but a hemisphere has "
            f"0..{chip.mem.slices_per_hemisphere - 1}; move it to a lower first slice or lower the interleave"
        )
    if t.placement.address < 0 or last_addr >= chip.mem.addresses_per_slice:
        raise ProgramError(
            f"{where}: needs addresses {t.placement.address}..{last_addr} but a slice has "
            f"0..{chip.mem.addresses_per_slice - 1}"
        )


def init_values(t: Tensor) -> np.ndarray:
    """The tensor's initial contents as an array [rows, cols] of its dtype (zeros when it has no init).
    Values the dtype cannot hold are an error, not silently wrapped."""
    values = _init_raw(t)
    with np.errstate(invalid="ignore", over="ignore"):
        typed = values.astype(t.dtype.numpy)
        lost = np.isinf(typed) & np.isfinite(values) if t.dtype.is_float else typed != values
    if np.any(lost):
        bad = np.asarray(values).ravel()[np.flatnonzero(np.ravel(lost))[0]]
        raise ProgramError(f"tensor {t.name}: initial value {bad} does not fit in {t.dtype.value}; change the init "
                           "or the tensor's type")
    return typed


def _init_raw(t: Tensor) -> np.ndarray:
    shape, dt = (t.rows, t.cols), np.float64
    init = t.init or Init(kind=InitKind.ZEROS)
    a = init.args
    if init.kind is InitKind.ZEROS:
        return np.zeros(shape, dt)
    if init.kind is InitKind.CONST:
        return np.full(shape, a[0]).astype(dt)
    if init.kind is InitKind.RANGE:
        return (a[0] + a[1] * np.arange(t.rows * t.cols)).reshape(shape).astype(dt)
    if init.kind is InitKind.VALUES:
        if len(a) != t.rows * t.cols:
            raise ProgramError(f"tensor {t.name}: values(...) gives {len(a)} numbers for {t.rows}x{t.cols}")
        return np.array(a).reshape(shape).astype(dt)
    rng = np.random.default_rng(int(a[0]))
    low, high = a[1], a[2]
    if t.dtype.is_float:
        return rng.uniform(low, high, size=shape)
    return rng.integers(int(low), int(high), size=shape, endpoint=True).astype(dt)


def _slab(t: Tensor, chip: Chip) -> tuple[slice, slice] | None:
    """When every group holds the same number of rows, the tensor is one rectangle of SRAM: slices x addresses."""
    p = t.placement
    if t.rows % p.interleave:
        return None
    first = Geometry.of(chip).global_slice(p.hemisphere, p.first_slice)
    depth = t.column_blocks(chip.lanes.lanes) * t.rows_per_group()
    return slice(first, first + p.interleave * t.dtype.width_bytes), slice(p.address, p.address + depth)


def store(sram: np.ndarray, t: Tensor, values: np.ndarray, chip: Chip) -> None:
    lanes, g, w = chip.lanes.lanes, t.placement.interleave, t.dtype.width_bytes
    blocks = t.column_blocks(lanes)
    padded = np.zeros((t.rows, blocks * lanes), t.dtype.numpy)
    padded[:, : t.cols] = values
    slab = _slab(t, chip)
    if slab is None:
        slices, addresses = tensor_locations(t, chip)
        planes = values_to_planes(padded.reshape(t.rows, -1, lanes), t.dtype)  # [rows, blocks, w, lanes]
        sram[slices, addresses[:, :, None]] = planes
        return
    # One strided copy per byte plane, straight into the slab: row i*g + k, block j -> slice k*w + b,
    # address j * rows_per_group + i.
    raw = padded.view(np.uint8).reshape(t.rows // g, g, blocks, lanes, w)
    target = sram[slab].reshape(g, w, blocks, t.rows // g, lanes)
    if not np.shares_memory(target, sram):  # pragma: no cover - reshape of this slab view never copies
        raise InternalError(f"tensor {t.name}: SRAM slab is not a view")
    for b in range(w):
        target[:, b] = raw[..., b].transpose(1, 2, 0, 3)


def load(sram: np.ndarray, t: Tensor, chip: Chip) -> np.ndarray:
    slab = _slab(t, chip)
    lanes, g, w = chip.lanes.lanes, t.placement.interleave, t.dtype.width_bytes
    if slab is not None:
        blocks = t.column_blocks(lanes)
        raw = sram[slab].reshape(g, w, blocks, t.rows // g, lanes).transpose(3, 0, 2, 1, 4)
        return planes_to_values(raw, t.dtype).reshape(t.rows, blocks * lanes)[:, : t.cols]
    slices, addresses = tensor_locations(t, chip)
    planes = sram[slices, addresses[:, :, None]]  # [rows, blocks, w, lanes]
    return planes_to_values(planes, t.dtype).reshape(t.rows, -1)[:, : t.cols]


def load_program(program: Program, chip: Chip, inputs: dict[str, np.ndarray]
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A fresh SRAM holding every tensor of `program` (its `inputs` override, by name, the tensors' initial
    contents), and those initial values by tensor name."""
    unknown = sorted(set(inputs) - {t.name for t in program.tensors})
    if unknown:
        raise ProgramError(f"inputs {unknown} name no tensor of program {program.name}")
    sram, initial = new_sram(chip), {}
    for t in program.tensors:
        value = np.asarray(inputs[t.name]) if t.name in inputs else init_values(t)
        if value.shape != (t.rows, t.cols):
            raise ProgramError(f"input {t.name}: shape {value.shape} but the tensor is {t.rows}x{t.cols}")
        initial[t.name] = value.astype(t.dtype.numpy)
        store(sram, t, initial[t.name], chip)
    return sram, initial


def new_sram(chip: Chip) -> np.ndarray:
    return np.zeros((chip.mem_slices, chip.mem.addresses_per_slice, chip.lanes.lanes), np.uint8)


def overlaps(tensors: tuple[Tensor, ...], chip: Chip) -> tuple[str, str] | None:
    """The first pair of tensors sharing an SRAM vector, if any."""
    keys, owners = [], []
    for n, t in enumerate(tensors):
        slices, addresses = tensor_locations(t, chip)
        k = (slices * chip.mem.addresses_per_slice + addresses[:, :, None]).ravel()
        keys.append(np.unique(k))
        owners.append(np.full(len(keys[-1]), n))
    if not keys:
        return None
    k, o = np.concatenate(keys), np.concatenate(owners)
    order = np.argsort(k, kind="stable")
    same = np.flatnonzero(k[order][1:] == k[order][:-1])
    if not len(same):
        return None
    i = same[0]
    return tensors[o[order[i]]].name, tensors[o[order[i + 1]]].name
