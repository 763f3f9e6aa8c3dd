"""The hot enums hash by identity and still key dicts across pickling (the compile cache pickles them)."""

from __future__ import annotations

import pickle

import pytest

from openlpu.enums import IdentityEnum
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.opcodes import Opcode
from openlpu.isa.types import Direction, DType, Unit


@pytest.mark.parametrize("cls", [Hemisphere, Direction, DType, Unit, Opcode])
def test_members_hash_by_identity_and_survive_a_pickled_dict(cls):
    assert issubclass(cls, IdentityEnum)
    members = list(cls)
    assert all(hash(m) == object.__hash__(m) for m in members)
    table = pickle.loads(pickle.dumps({m: i for i, m in enumerate(members)}))
    assert [table[m] for m in members] == list(range(len(members)))
    assert pickle.loads(pickle.dumps(members[0])) is members[0]
