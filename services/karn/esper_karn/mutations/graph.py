"""An editable copy of a BlueprintIR graph: the surgery mutation operators perform, and nothing else.

A BlueprintIR is immutable data; operators edit this mutable twin (nodes by id, one source per input
port, one node feeding ``output``) and turn it back into an IR, which the contract and the shape
inference then judge. Edits that need the feature sizes ask :meth:`EditableGraph.widths`, which applies
the same layer semantics as :mod:`esper_contracts.ir_shapes`: projections set the width, everything
else passes it through (a depthwise convolution follows its input too).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from esper_contracts import BlueprintIR, IREdge, IRNode, OpType
from esper_contracts.blueprints import INPUT_NODE, OP_ARITY, OUTPUT_NODE

ACTIVATIONS = (OpType.RELU, OpType.GELU, OpType.SILU, OpType.TANH, OpType.SIGMOID)
NORMS = (OpType.LAYER_NORM, OpType.GROUP_NORM, OpType.BATCH_NORM2D)
PROJECTIONS = (OpType.LINEAR, OpType.CONV2D)


class MutationRefused(ValueError):
    """The operator cannot apply to this parent; the message says why (no such layer, no legal width, ...)."""


@dataclass
class Node:
    """A mutable node: its op, attributes and the node feeding each input port."""

    op: OpType
    attrs: dict[str, Any]
    sources: list[str] = field(default_factory=list)


def is_depthwise(node: Node) -> bool:
    """A convolution with one group per channel: its width follows its input."""
    a = node.attrs
    return (node.op is OpType.CONV2D and a.get("groups", 1) > 1
            and a.get("groups") == a.get("in_channels") == a.get("out_channels"))


def is_projection(node: Node) -> bool:
    """A layer that sets the width of what it produces (a linear or non-depthwise convolution)."""
    return node.op in PROJECTIONS and not is_depthwise(node)


class EditableGraph:
    """The nodes of an IR in their original order (new ones appended), with their input sources."""

    def __init__(self, ir: BlueprintIR) -> None:
        self.layout = ir.input.layout
        self.input_features = ir.input.features
        self.output_features = ir.output.features
        self.nodes: dict[str, Node] = {}
        for n in ir.nodes:
            self.nodes[n.id] = Node(n.op, dict(n.attrs), [""] * OP_ARITY[n.op])
        self.output_src = ""
        for e in ir.edges:
            if e.dst == OUTPUT_NODE:
                self.output_src = e.src
            else:
                self.nodes[e.dst].sources[e.port] = e.src

    # --- reading ---------------------------------------------------------------------------------------

    def of_op(self, *ops: OpType) -> list[str]:
        """Ids of the nodes with one of ``ops``, in graph order."""
        return [i for i, n in self.nodes.items() if n.op in ops]

    def consumers(self, node_id: str) -> list[tuple[str, int]]:
        """(node, port) pairs reading ``node_id``; the graph output appears as (``output``, 0)."""
        found = [(i, p) for i, n in self.nodes.items() for p, s in enumerate(n.sources) if s == node_id]
        if self.output_src == node_id:
            found.append((OUTPUT_NODE, 0))
        return found

    def ancestors(self, node_id: str) -> set[str]:
        """Every node (and ``input``) that ``node_id`` depends on."""
        seen: set[str] = set()
        todo = list(self.nodes[node_id].sources) if node_id in self.nodes else []
        while todo:
            src = todo.pop()
            if src not in seen:
                seen.add(src)
                if src != INPUT_NODE:
                    todo.extend(self.nodes[src].sources)
        return seen

    def order(self) -> list[str]:
        """Node ids with every node after its sources (the graph is acyclic by construction)."""
        done: set[str] = {INPUT_NODE}
        out: list[str] = []
        pending = list(self.nodes)
        while pending:
            ready = [i for i in pending if all(s in done for s in self.nodes[i].sources)]
            if not ready:
                raise MutationRefused(f"the edited graph has a cycle or a dangling source among {sorted(pending)}")
            for i in ready:
                done.add(i)
                out.append(i)
            pending = [i for i in pending if i not in done]
        return out

    def widths(self) -> dict[str, int]:
        """The feature size each node (and ``input``) produces, by the layer semantics of the attributes."""
        w = {INPUT_NODE: self.input_features}
        for i in self.order():
            n = self.nodes[i]
            if n.op is OpType.LINEAR:
                w[i] = int(n.attrs["out_features"])
            elif n.op is OpType.CONV2D and not is_depthwise(n):
                w[i] = int(n.attrs["out_channels"])
            else:
                w[i] = w[n.sources[0]]
        return w

    # --- editing ---------------------------------------------------------------------------------------

    def fresh_id(self, prefix: str) -> str:
        """An id not used yet, starting with ``prefix`` (operators name what they add)."""
        for k in itertools.count():
            candidate = prefix if k == 0 else f"{prefix}_{k}"
            if candidate not in self.nodes and candidate not in (INPUT_NODE, OUTPUT_NODE):
                return candidate
        raise AssertionError("unreachable")

    def add(self, prefix: str, op: OpType, *sources: str, **attrs: Any) -> str:
        """Append a node fed by ``sources``; returns its id."""
        node_id = self.fresh_id(prefix)
        self.nodes[node_id] = Node(op, dict(attrs), list(sources))
        return node_id

    def redirect(self, old: str, new: str, *, keep: set[str] | None = None) -> None:
        """Make every reader of ``old`` (except the nodes in ``keep``) read ``new`` instead."""
        keep = keep or set()
        for i, n in self.nodes.items():
            if i not in keep:
                n.sources = [new if s == old else s for s in n.sources]
        if self.output_src == old:
            self.output_src = new

    def insert_after(self, node_id: str, prefix: str, op: OpType, **attrs: Any) -> str:
        """A new node reading ``node_id`` that takes over all of its readers; returns the new id."""
        new = self.add(prefix, op, node_id, **attrs)
        self.redirect(node_id, new, keep={new})
        return new

    def remove_passthrough(self, node_id: str) -> None:
        """Drop a one-input node, its readers reading its input instead."""
        node = self.nodes.pop(node_id)
        self.redirect(node_id, node.sources[0])

    def prune_dead(self) -> list[str]:
        """Remove the nodes that no longer reach the output; returns their ids."""
        live: set[str] = set()
        todo = [self.output_src]
        while todo:
            i = todo.pop()
            if i != INPUT_NODE and i not in live:
                live.add(i)
                todo.extend(self.nodes[i].sources)
        dead = [i for i in self.nodes if i not in live]
        for i in dead:
            del self.nodes[i]
        return dead

    def reflow(self) -> None:
        """Re-derive the attributes that must agree with a node's input width after a width change.

        Projections take their new input width; norms and attention follow it (their group or head
        counts drop to the largest divisor not above the old count); a depthwise convolution stays
        depthwise. An ``add`` or ``mul`` whose inputs now disagree is left as is: the shape check refuses it.
        """
        w = {INPUT_NODE: self.input_features}
        for i in self.order():
            n, a = self.nodes[i], self.nodes[i].attrs
            x = w[n.sources[0]]
            if n.op is OpType.LINEAR:
                a["in_features"] = x
            elif n.op is OpType.CONV2D and is_depthwise(n):
                a.update(in_channels=x, out_channels=x, groups=x)
            elif n.op is OpType.CONV2D:
                groups = a.get("groups", 1)
                a["in_channels"] = x
                if x % groups or a["out_channels"] % groups:
                    a["groups"] = 1
            elif n.op is OpType.LAYER_NORM:
                a["normalized_shape"] = x
            elif n.op is OpType.BATCH_NORM2D:
                a["num_features"] = x
            elif n.op is OpType.GROUP_NORM:
                a.update(num_channels=x, num_groups=largest_divisor(x, int(a["num_groups"])))
            elif n.op is OpType.MULTIHEAD_ATTENTION:
                a.update(embed_dim=x, num_heads=largest_divisor(x, int(a["num_heads"])))
            w[i] = self._produced(n, x)

    @staticmethod
    def _produced(n: Node, x: int) -> int:
        if n.op is OpType.LINEAR:
            return int(n.attrs["out_features"])
        if n.op is OpType.CONV2D and not is_depthwise(n):
            return int(n.attrs["out_channels"])
        return x

    def to_ir(self, template: BlueprintIR, **update: Any) -> BlueprintIR:
        """A validated BlueprintIR of this graph, with ``template``'s interface and the fields in ``update``."""
        nodes = [IRNode(id=i, op=n.op, attrs=n.attrs) for i, n in self.nodes.items()]
        edges = [IREdge(src=s, dst=i, port=p) for i, n in self.nodes.items() for p, s in enumerate(n.sources)]
        edges.append(IREdge(src=self.output_src, dst=OUTPUT_NODE))
        body = template.model_dump(exclude={"nodes", "edges"}) | {"nodes": nodes, "edges": edges} | update
        try:
            return BlueprintIR.model_validate(body)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError: keep its first line of reason
            raise MutationRefused(f"the edited graph is not a valid BlueprintIR: {exc}") from None


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` that is at most ``at_most`` (1 at worst)."""
    return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0)
