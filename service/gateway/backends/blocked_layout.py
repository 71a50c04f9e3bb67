"""Rewrite the exported graph so that ONNX Runtime's CPU kernels keep it in their blocked layout.

On CPU, ONNX Runtime runs convolutions in a blocked channel layout (NCHWc: channels in
groups of 8 or 16). Any tensor that an operator outside that layout needs is converted
back to NCHW, and back again for the next convolution. Coordinate attention, as exported,
forces such round trips in each of its 16 blocks:
- `x * (gate_h * gate_w)` broadcasts `[N, C, H, 1]` against `[N, C, 1, W]`. The blocked
  Mul only takes operands of one shape, so the gates, the gated input and the result are
  reordered, and the broadcasting Mul itself took 15% of a run;
- the attention's middle width (`in_channels // 32`: 12, 18 and 30 in the later blocks) is
  not a multiple of the block, so its 1x1 convolutions leave the layout there;
- h_swish arrives as four elementwise operators (Add, Clip, Div, Mul), four passes over a
  small tensor each.

The rewrite computes the same function in operators that stay blocked:
- both gates are expanded to `[N, C, H, W]` with nearest `Resize`, which only copies
  values, and the shapes are written into the graph so that ONNX Runtime can prove the
  operands of the two Muls equal;
- the middle width is padded with zero channels to a multiple of `BLOCK`, with zero
  weights on both sides, so the padded channels add exact zeros;
- h_swish becomes one `HardSwish` (`x * clip(x / 6 + 1/2, 0, 1)`; equal to
  `x * clip(x + 3, 0, 6) / 6` up to float rounding).

Only what matches these patterns exactly is touched; any other graph passes through
unchanged. Effect: 16-22% less ONNX Runtime time per image, same outputs within float
rounding (docs/performance.md).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import helper, numpy_helper

# A multiple of every NCHWc block size ONNX Runtime uses on x86 (8 with AVX2, 16 with AVX-512).
BLOCK = 16


@dataclasses.dataclass
class Rewrite:
    """The rewritten graph and how many of each pattern were changed."""

    model: onnx.ModelProto
    hard_swishes: int = 0
    padded_widths: int = 0
    expanded_gates: int = 0


def load_for_cpu(path: Path) -> bytes:
    """The ONNX model at `path`, rewritten, as bytes for `ort.InferenceSession`."""
    return rewrite(onnx.load(str(path))).model.SerializeToString()


def rewrite(model: onnx.ModelProto) -> Rewrite:
    """Return a rewritten copy of `model` (the argument is left as it was)."""
    result = Rewrite(model=onnx.ModelProto())
    result.model.CopyFrom(model)
    # The exporter's recorded shapes would go stale where widths are padded; ONNX Runtime
    # infers them again, and `expand_gate_products` records the ones it needs.
    del result.model.graph.value_info[:]
    graph = _Graph(result.model.graph)
    graph.inline_initializer_identities()
    result.hard_swishes = graph.fuse_hard_swishes()
    result.padded_widths = graph.pad_attention_widths()
    result.expanded_gates = graph.expand_gate_products(result.model)
    graph.drop_unused_constants()
    return result


class _Graph:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph

    # -- lookups, recomputed after each pass (the graphs are small) --------------------

    # Nodes are named by their index in `graph.node`: protobuf hands out a new Python
    # object on every access, so neither identity nor a dict of objects would hold.

    def producers(self) -> dict[str, int]:
        return {out: index for index, node in enumerate(self.graph.node) for out in node.output}

    def consumers(self) -> dict[str, list[int]]:
        found: dict[str, list[int]] = defaultdict(list)
        for index, node in enumerate(self.graph.node):
            for name in node.input:
                found[name].append(index)
        return found

    def initializers(self) -> dict[str, onnx.TensorProto]:
        return {tensor.name: tensor for tensor in self.graph.initializer}

    def constant(
        self, name: str, producers: dict[str, int], initializers: dict[str, onnx.TensorProto]
    ) -> NDArray[Any] | None:
        """The value of an initializer or a `Constant` node's output, else None."""
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        node = self.graph.node[producers[name]] if name in producers else None
        if node is not None and node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    return numpy_helper.to_array(attribute.t)
        return None

    def add_initializer(self, array: NDArray[Any], name: str) -> str:
        if name not in self.initializers():
            self.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def replace_nodes(self, drop: set[int], insert_before: dict[int, list[onnx.NodeProto]]) -> None:
        """Drop the nodes at the indices in `drop`; put new nodes before the given indices."""
        kept: list[onnx.NodeProto] = []
        for index, node in enumerate(self.graph.node):
            kept.extend(insert_before.get(index, []))
            if index not in drop:
                kept.append(node)
        del self.graph.node[:]
        self.graph.node.extend(kept)

    # -- passes ------------------------------------------------------------------------

    def inline_initializer_identities(self) -> None:
        """The exporter shares repeated weights through `Identity` nodes; read through them
        so that weights are found as initializers."""
        initializers = self.initializers()
        graph_outputs = {output.name for output in self.graph.output}
        alias = {
            node.output[0]: node.input[0]
            for node in self.graph.node
            if node.op_type == "Identity"
            and node.input[0] in initializers
            and node.output[0] not in graph_outputs
        }
        drop = {index for index, node in enumerate(self.graph.node)
                if node.op_type == "Identity" and node.output[0] in alias}
        for node in self.graph.node:
            for index, name in enumerate(node.input):
                if name in alias:
                    node.input[index] = alias[name]
        self.replace_nodes(drop, {})

    def fuse_hard_swishes(self) -> int:
        """`Mul(x, Div(Clip(Add(x, 3), 0, 6), 6))` -> `HardSwish(x)`."""
        drop: set[int] = set()
        fused: dict[int, list[onnx.NodeProto]] = {}
        producers, consumers = self.producers(), self.consumers()
        initializers = self.initializers()
        for m, mul in enumerate(self.graph.node):
            if mul.op_type != "Mul" or len(mul.input) != 2:
                continue
            for x, gate in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
                chain = self._hard_sigmoid_of(x, gate, producers, initializers)
                if chain and all(len(consumers[self.graph.node[i].output[0]]) == 1 for i in chain):
                    drop |= {*chain, m}
                    fused[m] = [helper.make_node(
                        "HardSwish", [x], [mul.output[0]], name=f"{mul.output[0]}/hswish"
                    )]
                    break
        self.replace_nodes(drop, fused)
        return len(fused)

    def _hard_sigmoid_of(
        self, x: str, gate: str, producers: dict[str, int],
        initializers: dict[str, onnx.TensorProto],
    ) -> list[int]:
        """The indices of Add, Clip, Div when `gate` is `clip(x + 3, 0, 6) / 6`, else []."""
        nodes = self.graph.node

        def made_by(name: str, op_type: str, arity: int) -> onnx.NodeProto | None:
            index = producers.get(name)
            if index is None or nodes[index].op_type != op_type or len(nodes[index].input) != arity:
                return None
            return nodes[index]

        def is_const(name: str, value: float) -> bool:
            array = self.constant(name, producers, initializers)
            return array is not None and array.size == 1 and float(array.reshape(())) == value

        div = made_by(gate, "Div", 2)
        if div is None or not is_const(div.input[1], 6.0):
            return []
        clip = made_by(div.input[0], "Clip", 3)
        if clip is None or not (is_const(clip.input[1], 0.0) and is_const(clip.input[2], 6.0)):
            return []
        add = made_by(clip.input[0], "Add", 2)
        if add is None or x not in add.input:
            return []
        if not is_const(add.input[1] if add.input[0] == x else add.input[0], 3.0):
            return []
        return [producers[gate], producers[div.input[0]], producers[clip.input[0]]]

    def pad_attention_widths(self) -> int:
        """Pad the width between a 1x1 Conv and the 1x1 Convs it feeds through one
        HardSwish to a multiple of `BLOCK`; returns how many Convs were widened."""
        nodes, initializers, consumers = self.graph.node, self.initializers(), self.consumers()
        widened = 0
        for conv in nodes:
            weight = _pointwise_weight(conv, initializers)
            if weight is None or weight.shape[0] % BLOCK == 0:
                continue
            width = weight.shape[0]
            padded = -(-width // BLOCK) * BLOCK
            users = [nodes[i] for i in consumers[conv.output[0]]]
            if len(users) != 1 or users[0].op_type != "HardSwish":
                continue
            readers = [nodes[i] for i in consumers[users[0].output[0]]]
            reader_weights = [_pointwise_weight(reader, initializers) for reader in readers]
            if not readers or any(w is None or w.shape[1] != width for w in reader_weights):
                continue
            conv.input[1] = self.add_initializer(
                _pad(weight, axis=0, size=padded), f"{conv.input[1]}/padded{padded}"
            )
            if len(conv.input) > 2 and conv.input[2]:
                bias = numpy_helper.to_array(initializers[conv.input[2]])
                conv.input[2] = self.add_initializer(
                    _pad(bias, axis=0, size=padded), f"{conv.input[2]}/padded{padded}"
                )
            for reader, reader_weight in zip(readers, reader_weights, strict=True):
                assert reader_weight is not None
                reader.input[1] = self.add_initializer(
                    _pad(reader_weight, axis=1, size=padded), f"{reader.input[1]}/padded_in{padded}"
                )
            widened += 1
        return widened

    def expand_gate_products(self, model: onnx.ModelProto) -> int:
        """`Mul(sigmoid [N,C,H,1], sigmoid [N,C,1,W])` -> the same Mul of both expanded to
        `[N,C,H,W]` by nearest Resize. The expanded shapes are recorded (batch dimension
        by name) so that ONNX Runtime sees equal operands here and in the Mul that gates
        the attention's input with the product."""
        shapes = _inferred_shapes(model)
        nodes, producers = self.graph.node, self.producers()
        inserted: dict[int, list[onnx.NodeProto]] = {}
        for m, mul in enumerate(nodes):
            if mul.op_type != "Mul" or len(mul.input) != 2:
                continue
            if not all(name in producers and nodes[producers[name]].op_type == "Sigmoid"
                       for name in mul.input):
                continue
            dims = [shapes.get(name) for name in mul.input]
            full = _outer_shape(dims[0], dims[1])
            if full is None:
                continue
            expanded = []
            for name, shape in zip(mul.input, dims, strict=True):
                assert shape is not None
                scales = np.array(
                    [1, 1, _int(full[2]) // _int(shape[2]), _int(full[3]) // _int(shape[3])],
                    dtype=np.float32,
                )
                scales_name = self.add_initializer(scales, f"{name}/expand_scales")
                out = f"{name}/expanded"
                expanded.append(helper.make_node(
                    "Resize", [name, "", scales_name], [out], name=out, mode="nearest",
                    coordinate_transformation_mode="asymmetric", nearest_mode="floor",
                ))
                self.graph.value_info.append(_value_info(out, full))
            inserted[m] = expanded
            del mul.input[:]
            mul.input.extend(node.output[0] for node in expanded)
            self.graph.value_info.append(_value_info(mul.output[0], full))
        self.replace_nodes(set(), inserted)
        return len(inserted)

    def drop_unused_constants(self) -> None:
        """Initializers and `Constant` nodes that only the replaced nodes read."""
        used = {name for node in self.graph.node for name in node.input}
        used |= {output.name for output in self.graph.output}
        self.replace_nodes(
            {i for i, node in enumerate(self.graph.node)
             if node.op_type == "Constant" and node.output[0] not in used},
            {},
        )
        kept = [tensor for tensor in self.graph.initializer if tensor.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)


Dim = int | str


def _pointwise_weight(
    node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]
) -> NDArray[Any] | None:
    """The weight of a 1x1, ungrouped Conv whose weight is an initializer, else None."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in initializers:
        return None
    for attribute in node.attribute:
        if attribute.name == "group" and attribute.i != 1:
            return None
    weight = numpy_helper.to_array(initializers[node.input[1]])
    if weight.ndim != 4 or weight.shape[2:] != (1, 1):
        return None
    return weight


def _pad(array: NDArray[Any], *, axis: int, size: int) -> NDArray[Any]:
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, size - array.shape[axis])
    return np.pad(array, widths)


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, list[Dim | None]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[Dim | None]] = {}
    graph = inferred.graph
    for info in [*graph.value_info, *graph.input, *graph.output]:
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [
                dim.dim_value if dim.HasField("dim_value")
                else dim.dim_param if dim.HasField("dim_param") else None
                for dim in info.type.tensor_type.shape.dim
            ]
    return shapes


def _outer_shape(a: list[Dim | None] | None, b: list[Dim | None] | None) -> list[Dim] | None:
    """`[N, C, H, W]` when `a` is `[N, C, H, 1]` and `b` is `[N, C, 1, W]` (or the reverse),
    with N known (a number or a name) and C, H, W numbers; else None."""
    if a is None or b is None or len(a) != 4 or len(b) != 4:
        return None
    if a[2] == 1 and b[3] == 1:
        a, b = b, a
    n, c, h, w = a[0], a[1], a[2], b[3]
    if n is None or n != b[0] or c != b[1] or a[3] != 1 or b[2] != 1:
        return None
    if not all(isinstance(d, int) and d > 1 for d in (c, h, w)):
        return None
    return [n, _int(c), _int(h), _int(w)]


def _int(dim: Dim | None) -> int:
    assert isinstance(dim, int)
    return dim


def _value_info(name: str, shape: list[Dim]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)
