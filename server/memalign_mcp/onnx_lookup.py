"""An ONNX model rewritten so that its int8 lookup tables stay int8 in memory: look up first, then dequantize.

The bundled MiniLM keeps every weight as int8 plus a scale, turned back into float32 by a `Cast` and a `Mul`
in the graph. onnxruntime folds those constant nodes when it loads the model, so the word-embedding table
(30,522 x 384) is held as 45 MiB of float32 although a text looks up only its own few dozen rows. For each
`Gather` that reads such a table this moves the lookup first: `Gather` the int8 rows (and their per-row
scales), then `Cast` and `Mul` those rows. That is the same arithmetic on the same numbers, so every vector is
bit-for-bit the one the original graph gives (tests/test_embeddings.py), for about 34 MiB less resident memory
(BENCHMARKS.md, retrieval at scale).

ONNX files are protocol buffers. The `onnx` package is not a dependency (importing it would cost more memory
than this saves), so this reads the few fields it needs (a node's inputs, outputs, op type and integer
attributes; an initializer's name and dims) and copies every other byte as it was. A model without the
pattern, or one it cannot read, is returned unchanged. It must never change what a model computes.
"""

from __future__ import annotations

from dataclasses import dataclass

# Field numbers of onnx.proto (ModelProto.graph; GraphProto.node/initializer; NodeProto; AttributeProto;
# TensorProto) and the values used here.
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_OUTPUT = 1, 5, 12
_VALUE_INFO_NAME = 1
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP_TYPE, _NODE_ATTRIBUTE, _NODE_DOMAIN = 1, 2, 4, 5, 7
_ATTRIBUTE_NAME, _ATTRIBUTE_INT, _ATTRIBUTE_GRAPH, _ATTRIBUTE_GRAPHS, _ATTRIBUTE_TYPE = 1, 3, 6, 11, 20
_ATTRIBUTE_TYPE_INT = 2
_TENSOR_DIMS, _TENSOR_NAME = 1, 8
_FLOAT = 1  # TensorProto.DataType.FLOAT
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True)
class _Field:
    number: int
    wire: int
    value: int | memoryview  # a varint's value, else the payload
    raw: memoryview  # the whole field, key included, to copy it unchanged


@dataclass(frozen=True)
class _Node:
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    ints: dict[str, int]  # integer attributes, by name
    standard: bool  # in the default ONNX domain
    subgraph: bool  # has a graph attribute (If, Loop, Scan), whose nodes may read any name of this graph


def _read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("a truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: memoryview) -> list[_Field]:
    out: list[_Field] = []
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | memoryview
        if wire == _VARINT:
            value, pos = _read_varint(data, pos)
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            value, pos = data[pos : pos + size], pos + size
        elif wire == _BYTES:
            length, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        else:
            raise ValueError(f"wire type {wire} is not used by ONNX")
        if pos > len(data):
            raise ValueError("a field runs past the end of its message")
        out.append(_Field(number, wire, value, data[start:pos]))
    return out


def _message(field: _Field) -> memoryview:
    if not isinstance(field.value, memoryview):
        raise ValueError(f"field {field.number} should be a string or a message")
    return field.value


def _text(field: _Field) -> str:
    return bytes(_message(field)).decode("utf-8")


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _node(data: memoryview) -> _Node:
    fields = _fields(data)
    ints: dict[str, int] = {}
    subgraph = False
    for field in fields:
        if field.number == _NODE_ATTRIBUTE:
            parts = _fields(_message(field))
            subgraph |= any(p.number in (_ATTRIBUTE_GRAPH, _ATTRIBUTE_GRAPHS) for p in parts)
            names = [_text(p) for p in parts if p.number == _ATTRIBUTE_NAME]
            values = [p.value for p in parts if p.number == _ATTRIBUTE_INT and isinstance(p.value, int)]
            if names and values:
                ints[names[0]] = _signed(values[0])
    return _Node(
        op_type="".join(_text(f) for f in fields if f.number == _NODE_OP_TYPE),
        inputs=tuple(_text(f) for f in fields if f.number == _NODE_INPUT),
        outputs=tuple(_text(f) for f in fields if f.number == _NODE_OUTPUT),
        ints=ints,
        standard=all(_text(f) in ("", "ai.onnx") for f in fields if f.number == _NODE_DOMAIN),
        subgraph=subgraph,
    )


def _dims(data: memoryview) -> tuple[str, tuple[int, ...]]:
    name, dims = "", list[int]()
    for field in _fields(data):
        if field.number == _TENSOR_NAME:
            name = _text(field)
        elif field.number == _TENSOR_DIMS and isinstance(field.value, int):
            dims.append(_signed(field.value))
        elif field.number == _TENSOR_DIMS and isinstance(field.value, memoryview):  # packed
            pos = 0
            while pos < len(field.value):
                dim, pos = _read_varint(field.value, pos)
                dims.append(_signed(dim))
    return name, tuple(dims)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _BYTES) + _varint(len(payload)) + payload


def _new_node(op_type: str, inputs: list[str], output: str, ints: dict[str, int] | None = None) -> bytes:
    parts = [_bytes_field(_NODE_INPUT, name.encode()) for name in inputs]
    parts.append(_bytes_field(_NODE_OUTPUT, output.encode()))
    parts.append(_bytes_field(_NODE_OP_TYPE, op_type.encode()))
    for name, value in (ints or {}).items():
        attribute = (
            _bytes_field(_ATTRIBUTE_NAME, name.encode())
            + _varint(_ATTRIBUTE_INT << 3 | _VARINT)
            + _varint(value)
            + _varint(_ATTRIBUTE_TYPE << 3 | _VARINT)
            + _varint(_ATTRIBUTE_TYPE_INT)
        )
        parts.append(_bytes_field(_NODE_ATTRIBUTE, attribute))
    return _bytes_field(_GRAPH_NODE, b"".join(parts))


def _scale_is_per_row(scale: tuple[int, ...], table: tuple[int, ...]) -> bool | None:
    """True: one scale per table row (look it up too); False: shared by every row; None: another shape."""
    if len(table) != 2:
        return None
    if len(scale) == 0 or scale in ((1,), (table[1],)):
        return False
    if len(scale) == 2 and scale[1] in (1, table[1]):
        if scale[0] == 1:
            return False
        if scale[0] == table[0]:
            return True
    return None


def _rewrite_graph(graph: memoryview) -> bytes | None:
    fields = _fields(graph)
    nodes = {index: _node(_message(f)) for index, f in enumerate(fields) if f.number == _GRAPH_NODE}
    shapes = dict(_dims(_message(f)) for f in fields if f.number == _GRAPH_INITIALIZER)
    if any(node.subgraph for node in nodes.values()):
        return None  # a subgraph may read a table by name: leave such a model alone
    producer = {out: index for index, node in nodes.items() for out in node.outputs}
    readers: dict[str, int] = {}
    for node in nodes.values():
        for name in node.inputs:
            readers[name] = readers.get(name, 0) + 1
    for f in fields:
        if f.number == _GRAPH_OUTPUT:  # a graph output is read from outside: never remove its producer
            for name in (_text(p) for p in _fields(_message(f)) if p.number == _VALUE_INFO_NAME):
                readers[name] = readers.get(name, 0) + 1
    replaced: dict[int, bytes] = {}
    for index, gather in nodes.items():
        if gather.op_type != "Gather" or gather.ints.get("axis", 0) != 0 or len(gather.inputs) != 2:
            continue
        table, indices = gather.inputs
        mul = nodes.get(producer.get(table, -1))
        if mul is None or mul.op_type != "Mul" or len(mul.inputs) != 2 or readers.get(table) != 1:
            continue
        cast_at = next((producer[i] for i in mul.inputs if i in producer and i not in shapes), -1)
        cast = nodes.get(cast_at)
        if cast is None or cast.op_type != "Cast" or cast.ints.get("to") != _FLOAT or len(cast.inputs) != 1:
            continue
        scale = next((i for i in mul.inputs if i != cast.outputs[0]), "")
        quantized = cast.inputs[0]
        if quantized not in shapes or scale not in shapes or readers.get(cast.outputs[0]) != 1:
            continue
        per_row = _scale_is_per_row(shapes[scale], shapes[quantized])
        if per_row is None or not all(n.standard for n in (gather, mul, cast)):
            continue
        stem = gather.outputs[0]
        new = _new_node("Gather", [quantized, indices], f"{stem}/rows_q", {"axis": 0})
        row_scale = scale
        if per_row:
            row_scale = f"{stem}/rows_scale"
            new += _new_node("Gather", [scale, indices], row_scale, {"axis": 0})
        new += _new_node("Cast", [f"{stem}/rows_q"], f"{stem}/rows_f", {"to": _FLOAT})
        new += _new_node("Mul", [f"{stem}/rows_f", row_scale], stem)
        replaced |= {index: new, producer[table]: b"", cast_at: b""}
    if not replaced:
        return None
    return b"".join(replaced.get(index, f.raw) for index, f in enumerate(fields))


def look_up_before_dequantizing(model: bytes) -> bytes:
    """The model with each dequantized lookup table read row by row; unchanged if it has none or is unreadable."""
    try:
        fields = _fields(memoryview(model))
        graphs = [f for f in fields if f.number == _MODEL_GRAPH]
        if len(graphs) != 1:
            return model
        rewritten = _rewrite_graph(_message(graphs[0]))
    except (ValueError, UnicodeDecodeError):
        return model
    if rewritten is None:
        return model
    return b"".join(_bytes_field(_MODEL_GRAPH, rewritten) if f is graphs[0] else f.raw for f in fields)
