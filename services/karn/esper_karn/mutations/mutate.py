"""Apply one operator to a parent and hand back a child that the contracts accept, or a refusal that says why.

Nothing leaves here unchecked: the child is rebuilt as a BlueprintIR (structure), must keep the parent's
input and output interface exactly, must differ from the parent, and must pass the contracts' shape and
parameter inference (``infer_ir_shapes``) under Karn's parameter limit. It carries its lineage: the parent
id, and a mutation record with the operator, what it changed and the generation (the parent's plus one).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from esper_contracts import MAX_IR_PARAMETERS, BlueprintIR, MutationRecord
from esper_contracts.ir_shapes import IRShapeError, infer_ir_shapes

from .graph import EditableGraph, MutationRefused
from .operators import MutationOperator

#: Tags a child does not inherit: they describe where the parent came from, not what it computes.
PROVENANCE_TAGS = frozenset({"builtin", "library", "karn"})
KARN_TAG = "karn"


@dataclass(frozen=True)
class Child:
    """A checked child design and how it was made."""

    ir: BlueprintIR
    blueprint_id: str
    parent_id: str
    operator: str
    detail: str
    parameter_count: int

    @property
    def generation(self) -> int:
        """The child's generation (its parent's plus one)."""
        return self.ir.generation


def check_child(parent: BlueprintIR, child: BlueprintIR, *, max_parameters: int = MAX_IR_PARAMETERS) -> int:
    """Refuse a child that changes the interface, equals its parent or cannot be built; return its parameter count."""
    if child.input != parent.input or child.output != parent.output:
        raise MutationRefused(f"the child's interface {child.input} -> {child.output} differs from the parent's "
                              f"{parent.input} -> {parent.output}")
    if child.ir_hash() == parent.ir_hash():
        raise MutationRefused("the edit left the computation unchanged")
    try:
        return infer_ir_shapes(child, max_parameters=max_parameters).parameter_count
    except IRShapeError as exc:
        raise MutationRefused(f"shape check: {exc}") from None


def child_tags(parent: BlueprintIR, extra: tuple[str, ...] = ()) -> list[str]:
    """The parent's design tags (its family name first), then ``karn`` and any ``extra`` tags."""
    inherited = [t for t in parent.tags if t not in PROVENANCE_TAGS and t not in extra]
    return list(dict.fromkeys([*inherited, KARN_TAG, *extra]))


def mutate(parent: BlueprintIR, operator: MutationOperator, rng: random.Random, *,
           max_parameters: int = MAX_IR_PARAMETERS, attempts: int = 4, tags: tuple[str, ...] = ()) -> Child:
    """Apply ``operator`` to ``parent`` at a site drawn from ``rng``; MutationRefused when no attempt works.

    An edit can be legal where it is made and still break a shape downstream (a width reaching a
    residual add); each of the ``attempts`` draws a new site, and the last reason is kept.
    """
    if parent.input.layout not in operator.layouts:
        raise MutationRefused(f"{operator.name} does not apply to layout {parent.input.layout} "
                              f"(only {sorted(operator.layouts)})")
    parent_id = parent.ir_hash()
    reason = "no attempt made"
    for _ in range(max(1, attempts)):
        graph = EditableGraph(parent)
        try:
            detail = operator.edit(graph, rng)
            graph.prune_dead()
            record = MutationRecord(parent_id=parent_id, operator=operator.name, generation=parent.generation + 1,
                                    detail=detail[:1000])
            draft = graph.to_ir(parent, parent_ids=[parent_id], mutation=record, tags=child_tags(parent, tags),
                                version=1, description=f"{parent.name} -> {operator.name}: {detail}"[:4000])
            params = check_child(parent, draft, max_parameters=max_parameters)
        except MutationRefused as exc:
            reason = str(exc)
            continue
        blueprint_id = draft.ir_hash()
        child = draft.model_copy(update={"name": f"karn-g{record.generation}-{blueprint_id[:12]}"})
        return Child(child, blueprint_id, parent_id, operator.name, detail, params)
    raise MutationRefused(f"{operator.name} on {parent.name}: {reason}")
