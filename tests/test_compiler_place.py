"""Placement: inside the SRAM, no live overlap, co-read tensors on disjoint slices, activations reuse space."""

from __future__ import annotations

import dataclasses
import functools

import pytest
from frontend_refs import our_model

from openlpu.compiler.chipgraph import Role
from openlpu.compiler.lower import Dims, lower_chip
from openlpu.compiler.place import check, lifetimes, place, together
from openlpu.errors import DoesNotFitError, InternalError
from openlpu.hardware.chip import load_chip

CHIP = load_chip("groqchip1")


@functools.cache
def graph(context: int = 16):
    model = our_model(1)
    return lower_chip(model, Dims(model.config, context), 0, range(1), first=True, last=True)


def test_placement_passes_its_verifier_and_keeps_co_read_tensors_apart():
    g = graph()
    placed = place(g, CHIP)
    check(g, placed, CHIP)
    for name, others in together(g).items():
        for other in others:
            a, b = placed[name], placed[other]
            if a.placement.hemisphere is b.placement.hemisphere:
                assert not set(a.slices_used()) & set(b.slices_used()), (name, other)


def test_activations_with_disjoint_lifetimes_share_addresses():
    g = graph()
    placed, life = place(g, CHIP), lifetimes(g)
    acts = [t for t in g.tensors.values() if t.role is Role.ACT]
    spots = {}
    for t in acts:
        p = placed[t.name].placement
        spots.setdefault((p.hemisphere, p.first_slice, p.address), []).append(t.name)
    shared = [names for names in spots.values() if len(names) > 1]
    assert shared
    for names in shared:
        spans = sorted(life[n] for n in names)
        assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))


def test_the_verifier_catches_an_overlap():
    g = graph()
    placed = place(g, CHIP)
    k, v = placed["l0_k_cache"], placed["l0_qkv"]
    placed[v.name] = dataclasses.replace(v, placement=dataclasses.replace(
        k.placement, interleave=v.placement.interleave))
    with pytest.raises(InternalError, match="share SRAM"):
        check(g, placed, CHIP)


def test_a_context_too_long_for_the_sram_is_refused_with_advice():
    with pytest.raises(DoesNotFitError, match="shorter context"):
        place(graph(8192), CHIP)
