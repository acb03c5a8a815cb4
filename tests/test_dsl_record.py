"""`@record` behaves as `@dataclass(frozen=True)` does: construction, defaults, equality, hash, repr."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from dataclasses import field

import pytest

from netc.dsl import ast, ir
from netc.dsl.errors import Loc
from netc.dsl.record import record


@record
class Point:
    """A test record."""

    x: int
    y: int = 2
    tags: dict = field(default_factory=dict)

    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)


@dataclasses.dataclass(frozen=True)
class PointTwin:
    """The same fields as a real frozen dataclass."""

    x: int
    y: int = 2
    tags: dict = field(default_factory=dict)


def _both(*args, **kwargs):
    """Build a Point and its twin from the same arguments: the outcome (or the exception type) of each."""
    outcomes = []
    for cls in (Point, PointTwin):
        try:
            outcomes.append(cls(*args, **kwargs))
        except TypeError as error:
            outcomes.append(type(error))
    return outcomes


@pytest.mark.parametrize("args, kwargs", [
    ((1,), {}), ((1, 5), {}), ((1,), {"y": 7}), ((), {"x": 3, "y": 4, "tags": {"a": 1}}),
    ((), {}), ((1, 2, {}, 4), {}), ((1,), {"x": 2}), ((1,), {"z": 3}),
])
def test_construction_matches_a_frozen_dataclass(args, kwargs) -> None:
    mine, twin = _both(*args, **kwargs)
    if isinstance(twin, type):
        assert mine is twin  # the same exception type for the same mistake
    else:
        assert (mine.x, mine.y, mine.tags) == (twin.x, twin.y, twin.tags)
        assert repr(mine).replace("Point(", "") == repr(twin).replace("PointTwin(", "")


def test_values_compare_and_hash_by_fields_and_stay_frozen() -> None:
    a, b, c = Point(1, 2, {}), Point(1, 2, {}), Point(1, 3)
    assert a == b and a != c and a != PointTwin(1, 2, {}) and a.norm1() == 3
    assert Point(1).tags is not Point(1).tags  # each instance gets a fresh default
    loc = Loc("a.net", 3, 4)
    assert hash(loc) == hash(Loc("a.net", 3, 4)) and len({loc, Loc("a.net", 3, 4), Loc("a.net", 3, 5)}) == 2
    with pytest.raises(TypeError):
        hash(a)  # a dict field is unhashable, as in the dataclass
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.x = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        del a.y


def test_dataclass_functions_work_on_records() -> None:
    assert dataclasses.is_dataclass(Point)
    assert [f.name for f in dataclasses.fields(Point)] == ["x", "y", "tags"]
    moved = dataclasses.replace(Point(1, 2, {"k": 1}), y=9)
    assert moved == Point(1, 9, {"k": 1}) and dataclasses.asdict(moved) == {"x": 1, "y": 9, "tags": {"k": 1}}
    config = dataclasses.replace(ir.TrainConfig(), epochs=3)
    assert config.epochs == 3 and config.optimizer == ir.OptimizerConfig() and config != ir.TrainConfig()
    value = ast.Value("tuple", (ast.Value("int", 2, Loc("a", 1, 1)),), Loc("a", 1, 1))
    assert pickle.loads(pickle.dumps(value)) == value and copy.deepcopy(value) == value
    assert value.text() == "(2)" and value.plain() == (2,)


def test_a_record_may_not_bring_its_own_generated_methods() -> None:
    with pytest.raises(TypeError, match="defines __eq__"):
        @record
        class Bad:
            x: int

            def __eq__(self, other: object) -> bool:
                return True
