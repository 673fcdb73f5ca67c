"""The quantized layers of an INT8 OpenVINO model, named stably, and bypassing their quantizers.

Both engines end up as FakeQuantize operations once OpenVINO reads the model (NNCF inserts them;
the QDQ pairs of a neural-compressor ONNX model become them). A *layer* here is an operation that
reads a quantized activation (a convolution, an instance norm, ...). Its label is the name of the
ONNX node it came from, e.g. ``/decoder1/conv_skip/Conv`` or ``/encoder2/norm/InstanceNormalization``:
OpenVINO renames some operations on every read (InstanceNorm becomes ``MVN_421``), so labels are
resolved against each model object rather than stored as OpenVINO names.
"""

from __future__ import annotations

import re

import openvino as ov

from latup_edge.errors import LatupError

# Suffixes the tools add to an ONNX node's name: OpenVINO's bias split, neural-compressor's QDQ rename.
_SUFFIXES = ("/WithoutBiases", "_quant")
# With statistics="brain" the network computes its brain mask at its root scope, outside every module
# (/Abs, /ReduceMax, /Greater, /Cast, /MaxPool_1): the paper's network has no operation there.
_ROOT_SCOPE = re.compile(r"^/[A-Za-z]+(_\d+)?$")
# ... and takes the masked InstanceNorm and SE statistics inside these modules.
_STATISTICS_SCOPE = re.compile(r"^/[^/]+/(norm|attention)/|^/bottleneck/")


def _strip(name: str) -> str:
    for suffix in _SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def layer_label(op: ov.Node) -> str:
    """The ONNX node name an OpenVINO operation came from (stable across reads)."""
    name = op.get_friendly_name()
    if name.startswith("/"):
        return _strip(name)
    # InstanceNorm is read as MVN -> Multiply -> Add; the Add keeps the ONNX name.
    for _ in range(3):
        consumers = [
            t.get_node() for t in op.output(0).get_target_inputs() if t.get_node().get_type_name() != "ShapeOf"
        ]
        named = [c for c in consumers if c.get_friendly_name().startswith("/")]
        if named:
            return _strip(named[0].get_friendly_name())
        if len(consumers) != 1:
            break
        op = consumers[0]
    return name


def _is_activation_quantizer(op: ov.Node) -> bool:
    if op.get_type_name() != "FakeQuantize":
        return False
    return not _constant(op.input_value(0))


def _constant(output: ov.Output) -> bool:
    node = output.get_node()
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def _dequantized(fq: ov.Node) -> ov.Output:
    """Where a quantizer's value is float again: QDQ models read as FQ -> Convert(u8) -> Convert ->
    Subtract(zero point) -> Multiply(scale); NNCF's FakeQuantize output is already float."""
    output = fq.output(0)
    while True:
        targets = list(output.get_target_inputs())
        if len(targets) != 1:
            return output
        node = targets[0].get_node()
        kind = node.get_type_name()
        if kind == "Convert" or (kind in ("Subtract", "Multiply") and _constant(node.input_value(1))):
            output = node.output(0)
        else:
            return output


def quantized_inputs(model: ov.Model) -> dict[str, list[tuple[ov.Node, int, ov.Node]]]:
    """Layer label -> [(layer op, input index, activation FakeQuantize feeding it)], in graph order."""
    quantizers = {}
    for fq in model.get_ordered_ops():
        if _is_activation_quantizer(fq):
            output = _dequantized(fq)
            quantizers[(output.get_node().get_friendly_name(), output.get_index())] = fq
    layers: dict[str, list[tuple[ov.Node, int, ov.Node]]] = {}
    for op in model.get_ordered_ops():
        for index, source in enumerate(op.input_values()):
            fq = quantizers.get((source.get_node().get_friendly_name(), source.get_index()))
            if fq is not None:
                layers.setdefault(layer_label(op), []).append((op, index, fq))
    return layers


def quantized_layers(model: ov.Model) -> list[str]:
    """Labels of the layers that read a quantized activation, in graph order."""
    return list(quantized_inputs(model))


def bypass(model: ov.Model, labels: set[str] | list[str]) -> ov.Model:
    """A copy of ``model`` where the given layers read their activations in float (quantizers skipped).

    Only the named layers are rewired: a quantizer shared with other layers stays for them.
    """
    clone = model.clone()
    wanted = set(labels)
    unknown = wanted - set(quantized_inputs(clone))
    if unknown:
        raise LatupError(f"no quantized layer named {sorted(unknown)} in this model: check the names to keep in float")
    for label, inputs in quantized_inputs(clone).items():
        if label in wanted:
            for consumer, index, fq in inputs:
                consumer.input(index).replace_source_output(fq.input_value(0))
    clone.validate_nodes_and_infer_types()
    return clone


def friendly_names(model: ov.Model, labels: list[str] | set[str]) -> list[str]:
    """The OpenVINO names, in this model object, of the operations with these labels."""
    wanted = set(labels)
    return [op.get_friendly_name() for op in model.get_ordered_ops() if layer_label(op) in wanted]


def brain_statistics_ops(model: ov.Model) -> list[str]:
    """OpenVINO names of the operations of a brain-statistics network that must stay float: the brain
    mask, computed from the input, and the masked InstanceNorm and SE statistics. [] for the paper's
    network (volume statistics).

    Quantizing the mask path would drop from the mask the brain voxels within half a step of zero, and
    NNCF would otherwise quantize every sum, mean and variance of the statistics (measured on a narrow
    network: 119 quantizers instead of 39, and agreement with fp32 about 0.01 lower). The SE's linear
    layers stay quantizable, as in the paper's network.
    """
    ops = [(op.get_friendly_name(), op.get_type_name()) for op in model.get_ordered_ops()]
    ops = [(name, kind) for name, kind in ops if kind not in ("Constant", "Parameter", "Result")]
    if not any(_ROOT_SCOPE.match(name) for name, _ in ops):
        return []
    return [
        name for name, kind in ops if _ROOT_SCOPE.match(name) or (_STATISTICS_SCOPE.match(name) and kind != "MatMul")
    ]
