"""Stream positions: the east-west order of every functional slice, for the preset and for other shapes."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from openlpu.hardware import Geometry, Hemisphere, load_chip

W, E = Hemisphere.W, Hemisphere.E


def west_to_east(g: Geometry) -> list[int]:
    """Every slice's position, in the order the module docstring draws them, west edge first."""
    s, r = g.mem_slices_per_hemisphere, g.vxm_ranks
    return (
        [g.mxm(W), g.sxm(W)]
        + [g.mem(W, i) for i in reversed(range(s))]
        + [g.vxm_rank(k) for k in range(r)]
        + [g.mem(E, i) for i in range(s)]
        + [g.sxm(E), g.mxm(E)]
    )


@pytest.mark.parametrize("slices, ranks", [(44, 4), (1, 1), (3, 2), (8, 5)])
def test_positions_ordered_distinct_and_dense(slices: int, ranks: int) -> None:
    g = Geometry(mem_slices_per_hemisphere=slices, vxm_ranks=ranks)
    order = west_to_east(g)
    assert order == sorted(order)
    assert len(set(order)) == len(order) == g.positions
    assert order == list(range(g.positions))  # no gaps: a value moves one position per cycle


def test_groqchip1_positions() -> None:
    g = Geometry.of(load_chip("groqchip1"))
    assert (g.mem_slices_per_hemisphere, g.vxm_ranks, g.positions) == (44, 4, 96)
    assert g.mxm(W) < g.sxm(W) < g.mem(W, 43) < g.mem(W, 0) < g.vxm_rank(0) < g.vxm_rank(3) < g.mem(E, 0)
    assert g.mem(E, 0) < g.mem(E, 43) < g.sxm(E) < g.mxm(E)
    # MEM slices are numbered outward from the VXM in both hemispheres, so slice 0 is the VXM's neighbour.
    assert (g.mem(W, 0), g.vxm_rank(0), g.vxm_rank(3), g.mem(E, 0)) == (45, 46, 49, 50)


def test_positions_mirror() -> None:
    g = Geometry.of(load_chip())
    last = g.positions - 1
    assert g.mxm(E) == last - g.mxm(W)
    assert g.sxm(E) == last - g.sxm(W)
    assert all(g.mem(E, i) == last - g.mem(W, i) for i in range(44))


def test_global_slice_numbering() -> None:
    g = Geometry.of(load_chip())
    numbers = [g.global_slice(W, i) for i in range(44)] + [g.global_slice(E, i) for i in range(44)]
    assert numbers == list(range(88))


def test_geometry_follows_the_chip_file(tmp_path: Path) -> None:
    text = (resources.files("openlpu.hardware.presets") / "groqchip1.toml").read_text(encoding="utf-8")
    small = text.replace("slices_per_hemisphere = 44", "slices_per_hemisphere = 4")
    assert small != text
    path = tmp_path / "small.toml"
    path.write_text(small, encoding="utf-8")
    g = Geometry.of(load_chip(path))
    assert g.positions == 4 + 2 * 4 + 4
    assert west_to_east(g) == list(range(g.positions))


def test_position_names() -> None:
    g = Geometry.of(load_chip())
    names = [g.name(p) for p in range(g.positions)]
    assert len(set(names)) == g.positions
    spots = (g.mxm(W), g.sxm(W), g.mem(W, 3), g.vxm_rank(0), g.mem(E, 43), g.sxm(E), g.mxm(E))
    expected = ["mxm.w", "sxm.w", "mem.w.3", "vxm rank 0", "mem.e.43", "sxm.e", "mxm.e"]
    assert [g.name(p) for p in spots] == expected
