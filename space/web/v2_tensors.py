"""The v2 protocol's tensors on the wire: an inference request's JSON (and Triton's binary-data extension)
in, the answer's outputs out. Pure functions of bytes and arrays, so the rules are tested without a server.

Binary data (what ``tritonclient`` sends by default): the body is the request's JSON, then the tensors'
bytes; the ``Inference-Header-Content-Length`` header gives the JSON's length and each binary input its
``binary_data_size``. A ``BYTES`` tensor's elements are each a 4-byte little-endian length and the bytes.
An answer is binary the same way when the request asks (``binary_data`` on an output, or
``binary_data_output`` for all of them).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from space.errors import UserError
from space.web.bodies import decode_inputs

INPUT = "image"  # one BYTES tensor: encoded image files
OUTPUT = "scores"  # one FP32 tensor [N, labels]; or, with classification K, BYTES [N, K]
HEADER_LENGTH = "inference-header-content-length"
LENGTH = struct.Struct("<I")  # a BYTES element's length prefix


@dataclass(frozen=True)
class Asked:
    """One requested output: its classification count (0: every score), and whether it is binary."""

    classes: int = 0
    binary: bool = False


@dataclass
class InferCall:
    """A parsed inference request: the images, the request's parameters, the outputs asked for."""

    images: list[bytes]
    parameters: dict[str, Any]
    outputs: list[Asked] = field(default_factory=list)
    id: str | None = None


@dataclass(frozen=True)
class Answer:
    body: bytes
    headers: dict[str, str]
    media_type: str


def header_length(headers: Mapping[str, str]) -> int | None:
    """The JSON header's length of a binary request, or None for a JSON one."""
    value = headers.get(HEADER_LENGTH)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise UserError(f"{HEADER_LENGTH} must be the JSON header's length in bytes; got {value!r}.")
    return int(value)


def parse_header(data: bytes) -> dict[str, Any]:
    """The request's JSON object, or a 400 that says what is wrong."""
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):
        raise UserError(
            "The inference request is not valid JSON (with binary data, the Inference-Header-Content-Length "
            "header must give the JSON part's length)."
        ) from None
    if not isinstance(payload, dict):
        raise UserError('The inference request must be a JSON object with "inputs".')
    return payload


def image_tensor(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The request's one input, checked: named ``image``, ``BYTES``, shape ``[N]``."""
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise UserError(f'"inputs" must hold one tensor, named {INPUT!r}, of encoded image files.')
    tensor = inputs[0]
    if tensor.get("name") != INPUT:
        raise UserError(f"Unknown input {tensor.get('name')!r}; this model takes one input named {INPUT!r}.")
    if tensor.get("datatype") != "BYTES":
        raise UserError(
            f"Input {INPUT!r} must be BYTES (encoded image files); got {tensor.get('datatype')!r}."
        )
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise UserError(f"Input {INPUT!r} needs a shape such as [N]; got {shape!r}.")
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise UserError(f"Input {INPUT!r} has shape [N] (one file per image); got {shape}.")
    return tensor


def count_images(payload: Mapping[str, Any]) -> int:
    return math.prod(image_tensor(payload)["shape"])


def parse_request(body: bytes, header_length: int | None) -> InferCall:
    """The images, parameters and requested outputs of a JSON or binary inference request."""
    if header_length is not None and header_length > len(body):
        raise UserError(f"{HEADER_LENGTH} is {header_length}, more than the {len(body)} bytes sent.")
    payload = parse_header(body[:header_length] if header_length is not None else body)
    tensor = image_tensor(payload)
    count = math.prod(tensor["shape"])
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise UserError('"parameters" must be a JSON object.')
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if header_length is None:
            raise UserError(f"Input {INPUT!r} names binary_data_size, but {HEADER_LENGTH} is missing.")
        data = body[header_length:]
        if not isinstance(size, int) or size != len(data):
            raise UserError(f"binary_data_size is {size!r}, but {len(data)} bytes follow the JSON header.")
        images = split_bytes(data, count)
    else:
        images = json_images(tensor.get("data"), count)
    binary = parameters.get("binary_data_output") is True
    outputs = asked_outputs(payload.get("outputs"), binary)
    request_id = payload.get("id")
    return InferCall(images, parameters, outputs, request_id if isinstance(request_id, str) else None)


def split_bytes(data: bytes, count: int) -> list[bytes]:
    """A binary BYTES tensor's ``count`` elements."""
    elements, offset = [], 0
    while offset < len(data):
        if offset + LENGTH.size > len(data):
            raise UserError("The binary BYTES tensor ends inside an element's 4-byte length.")
        (length,) = LENGTH.unpack_from(data, offset)
        offset += LENGTH.size
        if offset + length > len(data):
            raise UserError(f"Element {len(elements)} of {INPUT!r} is cut short ({length} bytes announced).")
        elements.append(data[offset : offset + length])
        offset += length
    if len(elements) != count:
        raise UserError(
            f"Input {INPUT!r} has shape [{count}] but its binary data holds {len(elements)} files."
        )
    return elements


def json_images(data: object, count: int) -> list[bytes]:
    """A JSON BYTES tensor's elements: each file in base64 (nested lists are read row by row)."""
    flat = list(_flatten(data)) if isinstance(data, list) else None
    if flat is None or not all(isinstance(item, str) for item in flat):
        raise UserError(f'Input {INPUT!r} needs "data": a list of image files in base64 (or binary data).')
    if len(flat) != count:
        raise UserError(f"Input {INPUT!r} has shape [{count}] but its data holds {len(flat)} elements.")
    images = []
    for index, item in enumerate(flat):
        try:
            images.append(decode_inputs(item))
        except UserError as error:
            raise error.at(index) from None
    return images


def asked_outputs(outputs: object, binary_default: bool) -> list[Asked]:
    """The requested outputs (all of them, ``scores``, when none are named)."""
    if outputs is None:
        return [Asked(binary=binary_default)]
    if not isinstance(outputs, list):
        raise UserError('"outputs" must be a list of {"name": ...} objects.')
    asked = []
    for output in outputs:
        name = output.get("name") if isinstance(output, dict) else None
        if name != OUTPUT:
            raise UserError(f"Unknown output {name!r}; this model has one output, {OUTPUT!r}.")
        parameters = output.get("parameters") or {}
        classes = parameters.get("classification", 0)
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 0:
            raise UserError(f"classification must be a whole number of classes; got {classes!r}.")
        asked.append(Asked(classes, parameters.get("binary_data", binary_default) is True))
    return asked


def encode_response(
    call: InferCall, scores: np.ndarray, labels: list[str], name: str, version: str
) -> Answer:
    """The answer's JSON, followed by the binary outputs where they were asked for."""
    outputs, blobs = [], []
    for asked in call.outputs:
        if asked.classes:
            tensor, data = _classification(scores, labels, asked.classes)
        else:
            tensor = {"name": OUTPUT, "datatype": "FP32", "shape": list(scores.shape)}
            data = np.ascontiguousarray(scores, dtype="<f4")
        if asked.binary:
            blob = data.tobytes() if isinstance(data, np.ndarray) else b"".join(_element(s) for s in data)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = data.ravel() if isinstance(data, np.ndarray) else data
        outputs.append(tensor)
    head = {"model_name": name, "model_version": version, "outputs": outputs}
    if call.id is not None:
        head["id"] = call.id
    header = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return Answer(header, {}, "application/json")
    return Answer(header + b"".join(blobs), {HEADER_LENGTH: str(len(header))}, "application/octet-stream")


def _classification(scores: np.ndarray, labels: list[str], classes: int) -> tuple[dict[str, Any], list[str]]:
    """Triton's classification extension: the best ``classes`` per image as ``"score:index:label"``."""
    k = min(classes, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    data = [f"{row[i]:f}:{i}:{labels[i]}" for row, top in zip(scores, order, strict=True) for i in top]
    return {"name": OUTPUT, "datatype": "BYTES", "shape": [len(scores), k]}, data


def _element(text: str) -> bytes:
    encoded = text.encode()
    return LENGTH.pack(len(encoded)) + encoded


def _flatten(items: list[Any]) -> Iterator[object]:
    for item in items:
        if isinstance(item, list):
            yield from _flatten(item)
        else:
            yield item
