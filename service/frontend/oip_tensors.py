"""The Open Inference Protocol's (KServe v2) REST wire format: the inference request and its
tensors, JSON or binary (the binary tensor data extension: a JSON header of
`Inference-Header-Content-Length` bytes, then each binary tensor's raw little-endian bytes in
order), and the response built the same way. Only the shapes of data Anytime takes are decoded:
INT64 and BYTES inputs. numpy decodes and encodes whole tensors; nothing loops over elements
but the length prefixes of BYTES."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from .errors import ApiError

BINARY_EXTENSION = "binary_tensor_data"
HEADER_LENGTH = "inference-header-content-length"
WIRE_DTYPES = {"INT64": np.dtype("<i8"), "INT32": np.dtype("<i4"), "FP32": np.dtype("<f4")}


class InputTensor(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = {}
    data: Any = None


class RequestedOutput(msgspec.Struct):
    name: str
    parameters: dict[str, Any] = {}


class InferRequest(msgspec.Struct):
    inputs: list[InputTensor]
    id: str | None = None
    parameters: dict[str, Any] = {}
    outputs: list[RequestedOutput] | None = None


def _inline(schema: dict) -> dict:
    """A msgspec JSON schema with its $defs references written out (for the OpenAPI document)."""
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            return resolve(defs[node["$ref"].rsplit("/", 1)[1]]) if "$ref" in node else {
                k: resolve(v) for k, v in node.items()}
        return [resolve(v) for v in node] if isinstance(node, list) else node

    return resolve(schema)


REQUEST_SCHEMA = _inline(msgspec.json.schema(InferRequest))
_decode_request = msgspec.json.Decoder(InferRequest).decode
_encode = msgspec.json.Encoder().encode


def parse_request(body: bytes, header_length: str | None) -> tuple[InferRequest, dict[str, Any]]:
    """The request and its inputs by name, decoded (numpy INT64 arrays, lists of BYTES).
    ApiError 422 on anything malformed."""
    binary = b""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            size = -1
        if not 0 <= size <= len(body):
            raise ApiError(422, f"Inference-Header-Content-Length {header_length!r} does not fit the "
                                f"{len(body)}-byte body")
        body, binary = body[:size], memoryview(body)[size:]
    try:
        req = _decode_request(body)
    except msgspec.ValidationError as e:
        raise ApiError(422, f"invalid inference request: {e}") from None
    except msgspec.DecodeError as e:
        raise ApiError(422, f"inference request is not valid JSON: {e}") from None
    inputs, offset = {}, 0
    for t in req.inputs:
        if t.name in inputs:
            raise ApiError(422, f"input {t.name!r} given twice")
        size = t.parameters.get("binary_data_size")
        if size is None:
            inputs[t.name] = _json_tensor(t)
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise ApiError(422, f"input {t.name!r}: binary_data_size {size!r} does not fit the "
                                f"{len(binary)} bytes of binary data")
        inputs[t.name] = _binary_tensor(t, binary[offset:offset + size])
        offset += size
    if offset != len(binary):
        raise ApiError(422, f"{len(binary) - offset} bytes of binary data belong to no input")
    return req, inputs


def _elements(t: InputTensor) -> int:
    if not all(isinstance(d, int) and d >= 0 for d in t.shape):
        raise ApiError(422, f"input {t.name!r}: invalid shape {t.shape}")
    return math.prod(t.shape)


def _json_tensor(t: InputTensor):
    count = _elements(t)
    if t.data is None:
        raise ApiError(422, f"input {t.name!r} has neither data nor binary_data_size")
    if t.datatype not in ("BYTES", "INT64"):
        return None  # the caller names the datatypes it takes
    try:  # flat (row-major) or nested as the shape
        values = np.asarray(t.data, dtype=object if t.datatype == "BYTES" else None).reshape(-1)
    except (ValueError, TypeError):
        raise ApiError(422, f"input {t.name!r}: data is not a list of {count} values for shape {t.shape}") from None
    if values.size != count:
        raise ApiError(422, f"input {t.name!r}: {values.size} values for shape {t.shape}")
    if t.datatype == "BYTES":
        if not all(isinstance(v, str) for v in values):
            raise ApiError(422, f"input {t.name!r}: BYTES data must be strings")
        return values.tolist()
    if values.dtype.kind != "i" and count:
        kind = "out of range" if values.dtype.kind == "u" else f"not integers ({values.dtype})"
        raise ApiError(422, f"input {t.name!r}: INT64 data {kind}")
    return values.astype(np.int64).reshape(t.shape)


def _binary_tensor(t: InputTensor, raw: memoryview):
    count = _elements(t)
    if t.datatype == "BYTES":
        return _bytes_elements(t, raw, count)
    if t.datatype != "INT64":
        return None
    if len(raw) != count * 8:
        raise ApiError(422, f"input {t.name!r}: {len(raw)} bytes of INT64 data for shape {t.shape}")
    return np.frombuffer(raw, dtype=WIRE_DTYPES["INT64"]).reshape(t.shape)


def _bytes_elements(t: InputTensor, raw: memoryview, count: int) -> list[str]:
    """BYTES in binary form: each element is a 4-byte little-endian length, then its bytes."""
    out, pos = [], 0
    try:
        while pos < len(raw):
            size = int.from_bytes(raw[pos:pos + 4], "little")
            if pos + 4 + size > len(raw):
                raise ValueError
            out.append(bytes(raw[pos + 4:pos + 4 + size]).decode())
            pos += 4 + size
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, f"input {t.name!r}: malformed BYTES data (4-byte length, then UTF-8 bytes)") from None
    if len(out) != count:
        raise ApiError(422, f"input {t.name!r}: {len(out)} BYTES elements for shape {t.shape}")
    return out


@dataclass
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray


def encode_outputs(outputs: list[OutputTensor], binary: dict[str, bool]) -> tuple[list[msgspec.Raw], list[bytes]]:
    """Each output as its JSON tensor (already encoded) and, for binary outputs, its bytes."""
    tensors, chunks = [], []
    for o in outputs:
        arr = np.ascontiguousarray(o.array, dtype=WIRE_DTYPES[o.datatype])
        tensor = {"name": o.name, "datatype": o.datatype, "shape": list(arr.shape)}
        if binary[o.name]:
            tensor["parameters"] = {"binary_data_size": arr.nbytes}
            chunks.append(arr.tobytes())
        else:
            tensor["data"] = arr.ravel().tolist()
        tensors.append(msgspec.Raw(_encode(tensor)))
    return tensors, chunks


def response_body(header: dict, tensors: list[msgspec.Raw], chunks: list[bytes]) -> tuple[bytes, int | None]:
    """The response: JSON alone, or (when any output is binary) the JSON header, then the binary
    outputs' bytes; returns the body and the header's length (Inference-Header-Content-Length)."""
    head = _encode({**header, "outputs": tensors})
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)
