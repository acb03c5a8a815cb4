"""A residual or parallel block's merge: branch output shapes -> the add/concat node's shape and FLOPs."""

from __future__ import annotations

from netc.dsl.ir import Shape
from netc.dsl.ops import ShapeError, fmt_shape, numel

MERGES = ("add", "concat")


def merge_shape(merge: str, shapes: list[Shape]) -> Shape:
    """The merged shape of the branch outputs, or ShapeError naming each branch's shape."""
    listed = ", ".join(f"branch {index}: {fmt_shape(shape)}" for index, shape in enumerate(shapes))
    if merge == "add":
        if any(shape != shapes[0] for shape in shapes):
            raise ShapeError(f"`parallel add` needs every branch to output the same shape, got {listed}")
        return shapes[0]
    ranks = {len(shape) for shape in shapes}
    axis = 1 if ranks == {2} else 0  # [C,H,W]: the channels; [F]: the features; [T,F]: F, per step
    if len(ranks) != 1 or any(shape[:axis] + shape[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:]
                              for shape in shapes):
        what = "channels" if ranks == {3} else "features"
        raise ShapeError(f"`parallel concat` joins the {what}, so every other dimension must agree, "
                         f"got {listed}")
    return (*shapes[0][:axis], sum(shape[axis] for shape in shapes), *shapes[0][axis + 1:])


def merge_flops(merge: str, shapes: list[Shape], out: Shape) -> int:
    return (len(shapes) - 1) * numel(out) if merge == "add" else 0
