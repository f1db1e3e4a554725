"""The wire format both sides speak: messages as bytes, without pickle.

A frame is::

    b"BTW1" | header length (u32, little-endian) | header (UTF-8 JSON) | tensor bytes ...

The header is one JSON object whose keys and value types are fixed per message ``type``
(``request``, ``response``, ``error``, ``configure``, ``ready``, ``close``); a decoder accepts
exactly those keys and types and nothing else.  Tensors follow the header in the order of the
header's ``tensors`` list (``{"dtype", "shape", "nbytes"}``, dtype from :data:`DTYPES`), each
starting at a multiple of :data:`ALIGN` bytes from the frame start; their sizes are checked
against the shape and the frame's total length, so a lying length is rejected before any tensor
is built.

Request ``params`` are plain data: ``None``, bools, ints, finite floats, strings, lists of them,
and two tagged forms so that what the ops need survives the trip: ``{"tuple": [...]}`` (conv
``stride``, ``input_size`` ...) and ``{"dict": {...}}`` (string keys); a non-finite float is
``{"float": "nan" | "inf" | "-inf"}``.  Anything else refuses to encode.

The trusted side decodes a worker's reply with :func:`read_reply`: a malformed reply is an
:class:`~blindtrain.errors.IntegrityError` naming layer, op and step; a worker-reported failure is a
:class:`~blindtrain.errors.WorkerError` whose text is escaped and truncated (:func:`blindtrain.errors.untrusted_text`).
No byte a worker sends is ever unpickled or evaluated.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import IntegrityError, WorkerCrashed, WorkerError, untrusted_text
from .messages import Ref, Request, Response, Sent, Tag

MAGIC = b"BTW1"
ALIGN = 64
MAX_HEADER_BYTES = 16 * 2**20
MAX_DIMS = 8
MAX_TENSORS = 4096
MAX_NAME = 1024
MAX_DEPTH = 16
MAX_WORKER_TEXT = 2000

DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64,
    "uint8": torch.uint8, "int8": torch.int8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64,
    "bool": torch.bool,
}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_ITEMSIZE = {name: torch.empty((), dtype=dtype).element_size() for name, dtype in DTYPES.items()}
KINDS = frozenset({"masked", "public", "obfuscated", "pad", "share", "clear"})
_PREFIX = struct.Struct("<4sI")


class MalformedMessage(ValueError):
    """Bytes that are not a well-formed frame of the expected type (says what is wrong)."""


# -- control messages -----------------------------------------------------------------------

@dataclass(frozen=True)
class Configure:
    """The trusted side tells a freshly connected worker its name, adversary (tests) and threads."""

    name: str
    adversary: dict
    threads: int | None = None


@dataclass(frozen=True)
class Ready:
    """A worker is configured and computes on ``device``."""

    device: str


@dataclass(frozen=True)
class Close:
    """The trusted side is done with this worker."""


@dataclass(frozen=True)
class Failure:
    """A worker could not run a request; ``message`` is the worker's (untrusted) text."""

    message: str


# -- params: plain data with tuples and dicts tagged ----------------------------------------

def _encode_value(value: Any, path: str, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise TypeError(f"wire: params nested deeper than {MAX_DEPTH} at {path}")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, tuple):
        return {"tuple": [_encode_value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode_value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"wire: params dict keys must be strings at {path}")
        return {"dict": {k: _encode_value(v, f"{path}.{k}", depth + 1) for k, v in value.items()}}
    raise TypeError(f"wire: params value of type {type(value).__name__} at {path} cannot cross "
                    f"(plain ints, floats, bools, strings, None, lists, tuples and dicts only)")


_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _decode_value(value: Any, path: str, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise MalformedMessage(f"params nested deeper than {MAX_DEPTH} at {path}")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MalformedMessage(f"non-finite float literal at {path}")
        return value
    if isinstance(value, list):
        return [_decode_value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict) and len(value) == 1:
        (tag, inner), = value.items()
        if tag == "tuple" and isinstance(inner, list):
            return tuple(_decode_value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(inner))
        if tag == "dict" and isinstance(inner, dict):
            return {k: _decode_value(v, f"{path}.{k}", depth + 1) for k, v in inner.items()}
        if tag == "float" and inner in _NON_FINITE:
            return _NON_FINITE[inner]
    raise MalformedMessage(f"params value at {path} is not wire plain data")


# -- header checks --------------------------------------------------------------------------

def _expect_keys(obj: Any, keys: set[str], where: str) -> dict:
    if not isinstance(obj, dict):
        raise MalformedMessage(f"{where} is not an object")
    if set(obj) != keys:
        extra, missing = sorted(set(obj) - keys), sorted(keys - set(obj))
        raise MalformedMessage(f"{where} has unexpected keys {extra} / lacks keys {missing}")
    return obj


def _int(value: Any, where: str, *, minimum: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedMessage(f"{where} is not an integer")
    if minimum is not None and value < minimum:
        raise MalformedMessage(f"{where} is below {minimum}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_NAME:
        raise MalformedMessage(f"{where} is not a string of at most {MAX_NAME} characters")
    return value


def _opt_str(value: Any, where: str) -> str | None:
    return None if value is None else _str(value, where)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise MalformedMessage(f"{where} is not a boolean")
    return value


def _str_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise MalformedMessage(f"{where} is not an object")
    return {_str(k, f"{where} key"): _str(v, f"{where}[{k!r}]") for k, v in value.items()}


def _reject_constant(name: str):
    raise MalformedMessage(f"JSON constant {name} is not allowed")


# -- framing -------------------------------------------------------------------------------

def _pad(n: int) -> int:
    return (-n) % ALIGN


def _frame(header: dict, tensors: list[torch.Tensor]) -> bytearray:
    cpu = [t.detach() if t.device.type == "cpu" and t.is_contiguous() else t.detach().to("cpu").contiguous()
           for t in tensors]
    metas = []
    for tensor in cpu:
        if tensor.dtype not in _DTYPE_NAMES:
            raise TypeError(f"wire: dtype {tensor.dtype} cannot cross (allowed: {', '.join(DTYPES)})")
        metas.append({"dtype": _DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                      "nbytes": tensor.numel() * tensor.element_size()})
    text = json.dumps({**header, "tensors": metas}, separators=(",", ":"), allow_nan=False).encode("utf-8")
    offset = _PREFIX.size + len(text)
    offset += _pad(offset)
    starts = []
    for meta in metas:
        starts.append(offset)
        offset += meta["nbytes"] + _pad(meta["nbytes"])
    frame = bytearray(offset)
    _PREFIX.pack_into(frame, 0, MAGIC, len(text))
    frame[_PREFIX.size:_PREFIX.size + len(text)] = text
    view = memoryview(frame)
    for start, meta, tensor in zip(starts, metas, cpu):
        if meta["nbytes"]:
            view[start:start + meta["nbytes"]] = tensor.reshape(-1).view(torch.uint8).numpy()
    return frame


def _unframe(data) -> tuple[dict, list[torch.Tensor]]:
    """Parse and check a frame; tensors are views of ``data`` (copied once if it is read-only)."""
    view = memoryview(data).cast("B")
    if view.readonly:
        view = memoryview(bytearray(view))
    if len(view) < _PREFIX.size:
        raise MalformedMessage("frame shorter than its prefix")
    magic, header_len = _PREFIX.unpack_from(view, 0)
    if magic != MAGIC:
        raise MalformedMessage("not a blindtrain wire frame (bad magic)")
    if header_len > MAX_HEADER_BYTES or _PREFIX.size + header_len > len(view):
        raise MalformedMessage("header length exceeds the frame")
    try:
        header = json.loads(bytes(view[_PREFIX.size:_PREFIX.size + header_len]).decode("utf-8"),
                            parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        raise MalformedMessage(f"header is not JSON: {type(exc).__name__}") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list):
        raise MalformedMessage("header has no tensor list")
    metas = header.pop("tensors")
    if len(metas) > MAX_TENSORS:
        raise MalformedMessage(f"more than {MAX_TENSORS} tensors")
    offset = _PREFIX.size + header_len
    offset += _pad(offset)
    tensors = []
    for i, meta in enumerate(metas):
        meta = _expect_keys(meta, {"dtype", "shape", "nbytes"}, f"tensor {i}")
        dtype = DTYPES.get(meta["dtype"]) if isinstance(meta["dtype"], str) else None
        if dtype is None:
            raise MalformedMessage(f"tensor {i}: dtype {meta['dtype']!r} is not allowed")
        shape = meta["shape"]
        if not isinstance(shape, list) or len(shape) > MAX_DIMS:
            raise MalformedMessage(f"tensor {i}: shape is not a list of at most {MAX_DIMS} sizes")
        shape = [_int(s, f"tensor {i} shape", minimum=0) for s in shape]
        if any(s >= 2**62 for s in shape):
            raise MalformedMessage(f"tensor {i}: a dimension is implausibly large")
        nbytes = _int(meta["nbytes"], f"tensor {i} nbytes", minimum=0)
        itemsize = _ITEMSIZE[meta["dtype"]]
        if math.prod(shape) * itemsize != nbytes:
            raise MalformedMessage(f"tensor {i}: nbytes {nbytes} does not match shape {shape} of {meta['dtype']}")
        end = offset + nbytes
        if end > len(view):
            raise MalformedMessage(f"tensor {i}: its bytes run past the end of the frame")
        if nbytes == 0:
            tensors.append(torch.empty(shape, dtype=dtype))
        else:
            tensors.append(torch.frombuffer(view, dtype=dtype, count=nbytes // itemsize, offset=offset).view(shape))
        offset = end + _pad(nbytes)
    if offset != len(view):
        raise MalformedMessage("frame length does not match its tensors")
    return header, tensors


def _type_of(header: dict) -> str:
    kind = header.get("type")
    if kind not in _DECODERS:
        raise MalformedMessage(f"unknown message type {kind!r}")
    return kind


# -- the messages --------------------------------------------------------------------------

def encode(message) -> bytearray:
    """One message (:class:`Request`, :class:`Response`, :class:`Failure`, :class:`Configure`,
    :class:`Ready` or :class:`Close`) as a frame."""
    if isinstance(message, Request):
        tensors, args = [], {}
        for name, arg in message.args.items():
            if isinstance(arg, Sent):
                args[name] = {"sent": len(tensors), "kind": arg.kind}
                tensors.append(arg.tensor)
            elif isinstance(arg, Ref):
                args[name] = {"ref": arg.handle}
            else:
                raise TypeError(f"wire: argument {name!r} is neither Sent nor Ref")
        tag = message.tag
        header = {"type": "request", "instr": message.instr, "args": args,
                  "tag": {"step": int(tag.step), "layer": tag.layer, "op": tag.op,
                          "modulus": None if tag.modulus is None else int(tag.modulus)},
                  "params": _encode_value(dict(message.params), "params"), "keep": dict(message.keep),
                  "keep_result": message.keep_result, "return_result": bool(message.return_result)}
        return _frame(header, tensors)
    if isinstance(message, Response):
        has = message.result is not None
        return _frame({"type": "response", "result": has, "worker_seconds": float(message.worker_seconds)},
                      [message.result] if has else [])
    if isinstance(message, Failure):
        return _frame({"type": "error", "message": message.message[:MAX_HEADER_BYTES // 8]}, [])
    if isinstance(message, Configure):
        return _frame({"type": "configure", "name": message.name, "adversary": _encode_value(message.adversary, "adversary"),
                       "threads": message.threads}, [])
    if isinstance(message, Ready):
        return _frame({"type": "ready", "device": message.device}, [])
    if isinstance(message, Close):
        return _frame({"type": "close"}, [])
    raise TypeError(f"wire: cannot encode a {type(message).__name__}")


def _decode_request(h: dict, tensors: list[torch.Tensor]) -> Request:
    _expect_keys(h, {"type", "instr", "args", "tag", "params", "keep", "keep_result", "return_result"}, "request")
    if not isinstance(h["args"], dict):
        raise MalformedMessage("request args is not an object")
    args, used = {}, []
    for name, arg in h["args"].items():
        _str(name, "argument name")
        if isinstance(arg, dict) and set(arg) == {"ref"}:
            args[name] = Ref(_str(arg["ref"], f"argument {name!r} handle"))
            continue
        arg = _expect_keys(arg, {"sent", "kind"}, f"argument {name!r}")
        index = _int(arg["sent"], f"argument {name!r} index", minimum=0)
        if index >= len(tensors):
            raise MalformedMessage(f"argument {name!r} names tensor {index} of {len(tensors)}")
        if arg["kind"] not in KINDS:
            raise MalformedMessage(f"argument {name!r} has unknown kind {arg['kind']!r}")
        args[name] = Sent(tensors[index], arg["kind"])
        used.append(index)
    if sorted(used) != list(range(len(tensors))):
        raise MalformedMessage("request tensors are not each used by exactly one argument")
    tag = _expect_keys(h["tag"], {"step", "layer", "op", "modulus"}, "tag")
    modulus = None if tag["modulus"] is None else _int(tag["modulus"], "tag modulus", minimum=2)
    params = _decode_value(h["params"], "params")
    if not isinstance(params, dict):
        raise MalformedMessage("request params is not a dict")
    return Request(_str(h["instr"], "instr"), args,
                   Tag(_int(tag["step"], "tag step"), _str(tag["layer"], "tag layer"), _str(tag["op"], "tag op"),
                       modulus),
                   params=params, keep=_str_map(h["keep"], "keep"),
                   keep_result=_opt_str(h["keep_result"], "keep_result"),
                   return_result=_bool(h["return_result"], "return_result"))


def _decode_response(h: dict, tensors: list[torch.Tensor]) -> Response:
    _expect_keys(h, {"type", "result", "worker_seconds"}, "response")
    if len(tensors) != int(_bool(h["result"], "response result")):
        raise MalformedMessage("response tensor count does not match its result flag")
    seconds = h["worker_seconds"]
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds < 1e9:
        raise MalformedMessage("worker_seconds is not a plausible duration")
    return Response(result=tensors[0] if tensors else None, worker_seconds=float(seconds))


def _decode_failure(h: dict, tensors) -> Failure:
    _expect_keys(h, {"type", "message"}, "error")
    if not isinstance(h["message"], str):
        raise MalformedMessage("error message is not a string")
    return Failure(h["message"])


def _decode_configure(h: dict, tensors) -> Configure:
    _expect_keys(h, {"type", "name", "adversary", "threads"}, "configure")
    adversary = _decode_value(h["adversary"], "adversary")
    if not isinstance(adversary, dict):
        raise MalformedMessage("configure adversary is not a dict")
    threads = None if h["threads"] is None else _int(h["threads"], "threads", minimum=1)
    return Configure(_str(h["name"], "name"), adversary, threads)


def _decode_ready(h: dict, tensors) -> Ready:
    _expect_keys(h, {"type", "device"}, "ready")
    return Ready(_str(h["device"], "device"))


def _decode_close(h: dict, tensors) -> Close:
    _expect_keys(h, {"type"}, "close")
    return Close()


_DECODERS = {"request": _decode_request, "response": _decode_response, "error": _decode_failure,
             "configure": _decode_configure, "ready": _decode_ready, "close": _decode_close}


def decode(data, *, expect: tuple[str, ...] | None = None):
    """Check and decode one frame; ``expect``: the message types acceptable here.  Raises
    :class:`MalformedMessage` (saying what is wrong) on anything else."""
    header, tensors = _unframe(data)
    kind = _type_of(header)
    if expect is not None and kind not in expect:
        raise MalformedMessage(f"expected a {' or '.join(expect)} message, got {kind!r}")
    if kind not in ("request", "response") and tensors:
        raise MalformedMessage(f"a {kind} message carries no tensors")
    return _DECODERS[kind](header, tensors)


# -- the trusted side's view of a worker's answer ------------------------------------------

def read_reply(data, *, request: Request, worker: str) -> Response:
    """A worker's reply to ``request``, checked.  A malformed reply raises
    :class:`~blindtrain.errors.IntegrityError` (layer, op, step of the request); a reported failure
    raises :class:`~blindtrain.errors.WorkerError`."""
    try:
        message = decode(data, expect=("response", "error"))
        if isinstance(message, Response) and message.result is not None and not request.return_result:
            raise MalformedMessage("a result came back where none was asked for")
    except MalformedMessage as exc:
        tag = request.tag
        raise IntegrityError(layer=tag.layer, op=tag.op, step=tag.step,
                             detail=f"worker {worker!r} sent a malformed reply ({exc})") from None
    if isinstance(message, Failure):
        tag = request.tag
        raise WorkerError(f"worker {worker!r} failed serving layer {tag.layer!r}, op {tag.op!r}, step {tag.step}: "
                          f"{untrusted_text(message.message, limit=MAX_WORKER_TEXT)}")
    return message


def read_ready(data, *, worker: str) -> str:
    """The device a worker reports in its ``ready`` message (a malformed one is a crash at startup)."""
    try:
        message = decode(data, expect=("ready", "error"))
    except MalformedMessage as exc:
        raise WorkerCrashed(f"worker {worker!r} sent a malformed ready message ({exc})") from None
    if isinstance(message, Failure):
        raise WorkerCrashed(f"worker {worker!r} failed to start: {untrusted_text(message.message, limit=MAX_WORKER_TEXT)}")
    return message.device
