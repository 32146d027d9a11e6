"""ONNX files from float TFLite ones (tf2onnx), and their int8 static quantisation (onnxruntime).

TFLite gives batch-polymorphic matmuls a shape computed by `UNSORTED_SEGMENT_PROD` with segment id -1 for the
dimensions to leave out; tf2onnx 1.17 counts those into segment 0, so a ViT's reshapes fail at run time for any
batch. `_segment_product` converts that op correctly for constant segment ids, the only kind TFLite emits there.

A batch-polymorphic JAX function broadcasts every constant operand (`max(x, 0)`, a BatchNorm's per-channel scale)
to the input's dynamic shape before the elementwise op, which becomes an `Expand` fed by shape arithmetic in ONNX;
ONNX's elementwise ops broadcast by themselves, so `drop_constant_broadcasts` feeds them the constants directly
(MobileNet v3-large: 81 of 132 `Expand` nodes and their shape arithmetic gone, outputs bit-identical), which lets
onnxruntime fuse the BatchNorms into the convolutions.
"""

import collections
from collections.abc import Iterator

import numpy as np
import onnx
import tf2onnx
from onnxruntime import quantization

OPSET = 17
# The op types whose weights and inputs int8 quantisation stores as int8 (with per-channel weight scales).
INT8_OP_TYPES = ("Conv", "MatMul", "Gemm")
# Elementwise ops with numpy-style broadcasting of their operands.
BROADCASTING_OPS = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow")


def from_tflite(tflite_path: str, onnx_path: str, *, input_name: str, output_name: str) -> None:
  """Converts a single-input, single-output float TFLite file to ONNX, naming its input and output."""
  model, _ = tf2onnx.convert.from_tflite(
    tflite_path,
    opset=OPSET,
    custom_op_handlers={"UnsortedSegmentProd": (_segment_product, []), "TFL_GELU": (_gelu, [])},
  )
  _rename(model.graph, model.graph.input[0].name, input_name)
  _rename(model.graph, model.graph.output[0].name, output_name)
  drop_constant_broadcasts(model.graph)
  onnx.checker.check_model(model)
  onnx.save(model, onnx_path)


def quantize_int8(source: str, target: str, batches: np.ndarray, *, input_name: str) -> None:
  """Static int8 quantisation (QDQ format) of the `INT8_OP_TYPES`, activation ranges calibrated on `batches`
  [K, N, ...] (uint8 images as the model takes them); the other ops stay float32."""
  quantization.quantize_static(
    source,
    target,
    _Calibration(batches, input_name),
    quant_format=quantization.QuantFormat.QDQ,
    op_types_to_quantize=list(INT8_OP_TYPES),
    per_channel=True,
    activation_type=quantization.QuantType.QInt8,
    weight_type=quantization.QuantType.QInt8,
  )


class _Calibration(quantization.CalibrationDataReader):
  """Feeds the calibration batches one at a time."""

  def __init__(self, batches: np.ndarray, input_name: str):
    self._batches: Iterator[dict[str, np.ndarray]] = ({input_name: batch} for batch in batches)

  def get_next(self) -> dict[str, np.ndarray] | None:
    return next(self._batches, None)


def _segment_product(ctx, node, name, args) -> None:
  """tf2onnx handler: UnsortedSegmentProd with constant segment ids as one ReduceProd per segment, concatenated;
  ids outside [0, num_segments), -1 above all, are left out as TensorFlow leaves them out."""
  del name, args
  data = node.input[0]
  ids = node.inputs[1].get_tensor_value(as_list=True)
  num_segments = int(node.inputs[2].get_tensor_value(as_list=False))
  parts = []
  for segment in range(num_segments):
    members = np.array([i for i, s in enumerate(ids) if s == segment], np.int64)
    indices = ctx.make_const(tf2onnx.utils.make_name(f"{node.name}_segment"), members).output[0]
    gathered = ctx.make_node("Gather", [data, indices], attr={"axis": 0}).output[0]
    # An empty segment reduces to 1, the product's identity, as in TensorFlow.
    parts.append(ctx.make_node("ReduceProd", [gathered], attr={"axes": [0], "keepdims": 1}).output[0])
  ctx.replace_inputs(node, parts)
  node.type = "Concat"
  node.set_attr("axis", 0)


def drop_constant_broadcasts(graph: onnx.GraphProto) -> int:
  """Removes each `Expand` of a constant whose every reader is an elementwise op with a non-constant other operand
  (which then fixes the result's shape), then whatever only those nodes read; the number removed."""
  constants = {i.name for i in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
  readers = collections.defaultdict(list)
  for node in graph.node:
    for name in node.input:
      readers[name].append(node)

  def droppable(node) -> bool:
    users = readers[node.output[0]]
    return bool(users) and all(
      user.op_type in BROADCASTING_OPS and any(i != node.output[0] and i not in constants for i in user.input)
      for user in users
    )

  dropped = [n for n in graph.node if n.op_type == "Expand" and n.input[0] in constants and droppable(n)]
  for node in dropped:
    for user in readers[node.output[0]]:
      user.input[:] = [node.input[0] if i == node.output[0] else i for i in user.input]
    graph.node.remove(node)
  _drop_unread(graph)
  return len(dropped)


def _drop_unread(graph: onnx.GraphProto) -> None:
  """Removes the nodes and initializers that nothing reads, until none is left."""
  while True:
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    unread = [n for n in graph.node if not any(o in read for o in n.output)]
    for node in unread:
      graph.node.remove(node)
    if not unread:
      break
  kept = [i for i in graph.initializer if i.name in read]
  del graph.initializer[:]
  graph.initializer.extend(kept)


def _gelu(ctx, node, name, args) -> None:
  """tf2onnx handler: TFLite's GELU (fused by its converter when every shape is known) as ONNX arithmetic, the tanh
  form when `approximate`, else the erf form; tf2onnx 1.17 has no handler of its own."""
  del name, args
  x = node.input[0]

  def const(value: float) -> str:
    return ctx.make_const(tf2onnx.utils.make_name(f"{node.name}_c"), np.array(value, np.float32)).output[0]

  def op(kind: str, *inputs: str) -> str:
    return ctx.make_node(kind, list(inputs)).output[0]

  if node.get_attr_value("approximate", 0):
    cubic = op("Mul", op("Mul", x, x), x)
    inner = op("Mul", const(np.sqrt(2.0 / np.pi)), op("Add", x, op("Mul", const(0.044715), cubic)))
    gate = op("Add", const(1.0), op("Tanh", inner))
  else:
    gate = op("Add", const(1.0), op("Erf", op("Mul", x, const(1.0 / np.sqrt(2.0)))))
  ctx.replace_inputs(node, [op("Mul", const(0.5), x), gate])
  node.type = "Mul"
  for attribute in list(node.attr):
    del node.attr[attribute]


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
  """Renames value `old` everywhere in `graph` (its declaration, and every node that reads or writes it)."""
  for value in (*graph.input, *graph.output):
    if value.name == old:
      value.name = new
  for node in graph.node:
    node.input[:] = [new if x == old else x for x in node.input]
    node.output[:] = [new if x == old else x for x in node.output]
