"""Cut an ONNX graph into maximal supported ("runtime") segments and "fallback" (TVM) segments.

Segments come out in topological order; each one is extractable as its own valid ONNX model with
:func:`extract_segment`. The cut is greedy on ready nodes: a segment keeps taking every node of its kind
whose producers are already placed, and at each cut the kind whose segment would grow largest goes next,
which keeps the number of segments and tensor hand-offs low.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import ConversionError

RUNTIME, FALLBACK = "runtime", "fallback"


@dataclass
class Segment:
    """A run of nodes that execute on one side (``kind``: "runtime" or "fallback")."""

    index: int
    kind: str
    nodes: list[int]                       # node indices in the source graph, topological
    inputs: list[str] = field(default_factory=list)   # tensors from graph inputs or earlier segments
    outputs: list[str] = field(default_factory=list)  # tensors later segments or the graph need
    reasons: dict[str, str] = field(default_factory=dict)  # op_type -> why it falls back

    def op_counts(self, model: Any) -> dict[str, int]:
        return dict(Counter(model.graph.node[i].op_type for i in self.nodes).most_common())


@dataclass
class Partition:
    model: Any
    segments: list[Segment]

    @property
    def handoffs(self) -> int:
        """Tensors passed from one segment to another."""
        graph_inputs = {i.name for i in self.model.graph.input}
        return sum(1 for s in self.segments for t in s.inputs if t not in graph_inputs)

    def summary(self) -> list[dict]:
        return [{"index": s.index, "kind": s.kind, "nodes": len(s.nodes), "ops": s.op_counts(self.model),
                 "inputs": s.inputs, "outputs": s.outputs} for s in self.segments]


def _subgraph_inputs(node: Any) -> set[str]:
    """Outer-scope tensors a node's subgraphs (If/Loop/Scan bodies) read."""
    from onnx import AttributeProto

    names: set[str] = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs) if a.type == AttributeProto.GRAPHS else []
        for g in graphs:
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                local.update(n.output)
            for n in g.node:
                names.update(x for x in (*n.input, *_subgraph_inputs(n)) if x and x not in local)
            names.update(o.name for o in g.output if o.name not in local)
    return names


def partition(model: Any, is_fallback: Callable[[Any], str | None]) -> Partition:
    """Partition ``model``; ``is_fallback(node)`` returns a reason when the node must run on TVM, else None."""
    g = model.graph
    nodes = list(g.node)
    producer: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                producer[o] = i
    deps: list[set[int]] = []
    for n in nodes:
        ins = [x for x in (*n.input, *_subgraph_inputs(n)) if x]
        deps.append({producer[x] for x in ins if x in producer})
    users: list[set[int]] = [set() for _ in nodes]
    for i, d in enumerate(deps):
        for j in d:
            users[j].add(i)

    reasons: dict[int, str] = {}
    kinds: list[str | None] = []
    for i, n in enumerate(nodes):
        why = is_fallback(n)
        if why:
            reasons[i] = why
        kinds.append(FALLBACK if why else RUNTIME)
    # a Constant node sides with its first consumer (it costs nothing and avoids a hand-off)
    for i, n in enumerate(nodes):
        if n.op_type == "Constant" and i not in reasons and users[i]:
            kinds[i] = kinds[min(users[i])]

    placed: set[int] = set()
    pending = [len(d) for d in deps]

    def closure(kind: str, ready: set[int]) -> list[int]:
        """Nodes of ``kind`` that can run now, greedily, in topological order (no mutation)."""
        left = dict()
        order: list[int] = []
        frontier = sorted(i for i in ready if kinds[i] == kind)
        import heapq

        heapq.heapify(frontier)
        seen = set(frontier)
        while frontier:
            i = heapq.heappop(frontier)
            order.append(i)
            for u in users[i]:
                left[u] = left.get(u, pending[u]) - 1
                if left[u] == 0 and kinds[u] == kind and u not in seen:
                    seen.add(u)
                    heapq.heappush(frontier, u)
        return order

    ready = {i for i, p in enumerate(pending) if p == 0}
    segments: list[Segment] = []
    while len(placed) < len(nodes):
        options = {k: closure(k, ready) for k in (RUNTIME, FALLBACK)}
        kind = max(options, key=lambda k: (len(options[k]), k == RUNTIME))
        chosen = options[kind]
        if not chosen:  # cannot happen for an acyclic graph
            raise ConversionError("cannot partition the graph: it has a cycle or a dangling dependency")
        for i in chosen:
            placed.add(i)
            ready.discard(i)
            for u in users[i]:
                pending[u] -= 1
                if pending[u] == 0:
                    ready.add(u)
        if segments and segments[-1].kind == kind:
            segments[-1].nodes.extend(chosen)
        else:
            segments.append(Segment(len(segments), kind, chosen))

    _wire(model, segments, reasons)
    return Partition(model, segments)


def _wire(model: Any, segments: list[Segment], reasons: dict[int, str]) -> None:
    g = model.graph
    nodes = list(g.node)
    inits = {t.name for t in g.initializer}
    graph_outputs = [o.name for o in g.output]
    owner: dict[str, int] = {}
    for s in segments:
        for i in s.nodes:
            for o in nodes[i].output:
                if o:
                    owner[o] = s.index
    needed_by: dict[str, set[int]] = {}
    for s in segments:
        seen: list[str] = []
        for i in s.nodes:
            n = nodes[i]
            for x in (*n.input, *sorted(_subgraph_inputs(n))):
                if not x or x in inits or owner.get(x) == s.index or x in seen:
                    continue
                seen.append(x)
                needed_by.setdefault(x, set()).add(s.index)
        s.inputs = seen
        s.reasons = {nodes[i].op_type: reasons[i] for i in s.nodes if i in reasons}
    for s in segments:
        outs: list[str] = []
        for i in s.nodes:
            for o in nodes[i].output:
                if o and (o in graph_outputs or needed_by.get(o, set()) - {s.index}) and o not in outs:
                    outs.append(o)
        s.outputs = outs
    # graph outputs that are graph inputs or initializers pass through no segment: not supported
    for o in graph_outputs:
        if o not in owner:
            raise ConversionError(f"graph output {o!r} is not produced by any node (an input or constant passed "
                                  "through); the partitioner needs every output to come from a node")


def extract_segment(model: Any, seg: Segment, name: str | None = None) -> Any:
    """The segment as a standalone, checked ONNX model (its inputs, outputs, nodes and initializers)."""
    import onnx
    from onnx import helper

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    vi = {v.name: v for v in (*g.value_info, *g.input, *g.output)}
    nodes = [g.node[i] for i in seg.nodes]
    used = set()
    for n in nodes:
        used.update(n.input)
        used.update(_subgraph_inputs(n))
    inits = [t for t in g.initializer if t.name in used]

    def value_info(t: str):
        if t not in vi or not vi[t].type.tensor_type.elem_type:
            raise ConversionError(f"segment {seg.index}: no type is known for tensor {t!r} (shape inference "
                                  "could not infer it); give the model static shapes or value_info")
        return vi[t]

    sub = helper.make_graph(nodes, name or f"{g.name}_seg{seg.index}", [value_info(t) for t in seg.inputs],
                            [value_info(t) for t in seg.outputs], inits,
                            value_info=[v for v in g.value_info if v.name in used])
    m = helper.make_model(sub, opset_imports=list(model.opset_import), producer_name="edgekit-partition",
                          ir_version=model.ir_version)
    try:
        onnx.checker.check_model(m)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"segment {seg.index} is not a valid ONNX model: {str(exc).splitlines()[0]}") from None
    return m


def partition_for_target(model: Any, target: str, fallback_ops: Iterable[str] = ()) -> Partition:
    """Partition ``model`` by what ``target`` (an op_support target name) runs; ``fallback_ops`` are forced."""
    from .op_support import NodeSupport

    support = NodeSupport.for_model(model, target, forced=fallback_ops)
    return partition(model, support.reason)
