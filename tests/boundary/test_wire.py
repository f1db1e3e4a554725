"""The wire format: every request the protocols send survives the trip exactly; hostile bytes are refused
with a clear error and nothing in them is ever run."""

from __future__ import annotations

import json
import multiprocessing as mp
import pickle
import struct

import pytest
import torch

import blindtrain as bt
from blindtrain.boundary import Ref, Request, Response, Sent, Tag, bilinear_products, wire
from blindtrain.boundary.boundary import Boundary
from blindtrain.boundary.transport import ProcessTransport
from blindtrain.models import build

TAG = Tag(step=3, layer="features.0", op="grad_input", modulus=2**61 - 1)


def _same_value(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


def assert_same_request(got: Request, sent: Request) -> None:
    assert (got.instr, got.tag, got.keep, got.keep_result, got.return_result) == \
        (sent.instr, sent.tag, sent.keep, sent.keep_result, sent.return_result)
    assert _same_value(got.params, sent.params), (got.params, sent.params)
    assert got.args.keys() == sent.args.keys()
    for name, arg in sent.args.items():
        other = got.args[name]
        assert type(other) is type(arg)
        if isinstance(arg, Ref):
            assert other.handle == arg.handle
        else:
            assert other.kind == arg.kind and other.tensor.dtype == arg.tensor.dtype
            assert torch.equal(other.tensor, arg.tensor.detach().cpu())


# -- every request shape the protocols send ------------------------------------------------

@pytest.fixture
def wire_roundtrip(monkeypatch):
    """Every request crosses as wire bytes, and the worker runs the decoded copy (so a lost tuple, dtype
    or key breaks the protocol); returns what crossed."""
    seen: list[Request] = []
    original = Boundary.submit

    class RoundTrip:
        def __init__(self, pending, request):
            self.pending, self.request = pending, request

        def done(self):
            return self.pending.done()

        def result(self):
            response = self.pending.result()
            back = wire.read_reply(bytes(wire.encode(response)), request=self.request, worker="test")
            assert back.worker_seconds == response.worker_seconds
            assert (back.result is None) == (response.result is None)
            if back.result is not None:
                assert back.result.dtype == response.result.dtype and torch.equal(back.result, response.result)
            return back

    def submit(self, request, *, role="main", index=0):  # every crossing (call, call_many) is one submit
        decoded = wire.decode(bytes(wire.encode(request)), expect=("request",))
        assert_same_request(decoded, request)
        seen.append(decoded)
        return RoundTrip(original(self, decoded, role=role, index=index), request)

    monkeypatch.setattr(Boundary, "submit", submit)
    return seen


def _train(protocol: str, model_name: str, steps: int = 2, **options) -> None:
    torch.manual_seed(0)
    model = build(model_name, (1, 8, 8), 10, hidden=(16,)) if model_name == "mlp" else build(model_name, (1, 8, 8), 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with bt.Session(protocol=protocol, device="cpu", **options) as session:
        wrapped, optimizer = session.prepare(model, optimizer)
        for _ in range(steps):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(wrapped(torch.randn(4, 1, 8, 8)), torch.randint(10, (4,))).backward()
            optimizer.step()


@pytest.mark.parametrize("protocol, model_name, options", [
    ("tempo", "mlp", {"workers": 2}),
    ("tempo", "lenet", {"fuse_activations": True}),
    ("tempo", "lenet", {"rotate_every": 1}),
    ("otp", "lenet", {"unmask": "mask-worker"}),
])
def test_training_requests_cross_the_wire_unchanged(wire_roundtrip, protocol, model_name, options):
    _train(protocol, model_name, **options)
    instrs = {r.instr for r in wire_roundtrip}
    assert instrs  # something crossed
    if protocol == "tempo" and options.get("workers") == 2:
        assert {"bilinear_products", "sgd_step", "store"} <= instrs
    if options.get("fuse_activations"):
        assert "bilinear_act" not in instrs and "bilinear" in instrs  # fused layers: only the checked product
    if protocol == "otp":
        assert "bilinear_mod" in instrs and any(r.tag.modulus for r in wire_roundtrip)
    if model_name == "lenet" and protocol == "otp":
        assert any(isinstance(r.params.get("stride"), tuple) for r in wire_roundtrip)


def test_slalom_inference_requests_cross_the_wire_unchanged(wire_roundtrip):
    torch.manual_seed(0)
    model = build("lenet", (1, 8, 8), 10).eval()
    with bt.Session(protocol="slalom", device="cpu") as session:
        wrapped, _ = session.prepare(model)
        with torch.no_grad():
            wrapped(torch.randn(4, 1, 8, 8))
    assert {"store", "bilinear_mod"} <= {r.instr for r in wire_roundtrip}


def test_params_keep_tuples_lists_dicts_and_special_floats():
    params = {"fn": "conv2d", "stride": (1, 2), "input_size": (4, 3, 8, 8), "handles": ["a", "b"],
              "products": [{"op": "grad_weight", "params": {"padding": (0, 0)}, "keep": None, "scale": None}],
              "terms": [("x", 0.5)], "lr": 0.1, "nesterov": False, "big": 2**61 - 1, "inf": float("inf"),
              "nan": float("nan"), "neg": float("-inf"), "empty": (), "nested": {"t": ((1,), [2])}}
    request = Request("bilinear", {"A": Sent(torch.randn(2, 3), "obfuscated")}, TAG, params=params)
    assert_same_request(wire.decode(wire.encode(request)), request)


@pytest.mark.parametrize("dtype", list(wire.DTYPES.values()))
def test_every_allowed_dtype_and_odd_shapes_round_trip(dtype):
    tensors = [torch.zeros(0, 5), torch.tensor(3.5), torch.randn(3, 1, 2, 5).transpose(0, 3), torch.randn(7)]
    args = {f"T{i}": Sent((t * 10).to(dtype), "masked") for i, t in enumerate(tensors)}
    args["R"] = Ref("held/w")
    request = Request("store", args, Tag(0, "x", "encrypt"), keep={"T0": "k"}, keep_result="r", return_result=False)
    decoded = wire.decode(bytes(wire.encode(request)))
    assert_same_request(decoded, request)
    for name, arg in decoded.args.items():  # tensors the worker keeps must be writable (in-place SGD)
        if isinstance(arg, Sent) and arg.tensor.numel():
            arg.tensor.view(-1)[0] = arg.tensor.view(-1)[-1]


def test_bilinear_products_request_round_trips():
    a, g = Sent(torch.randn(4, 6), "obfuscated"), Sent(torch.randn(4, 3), "obfuscated")
    request = bilinear_products(TAG, [
        {"op": "grad_input", "fn": "matmul", "A": g, "B": Ref("w"), "params": {}},
        {"op": "grad_weight", "fn": "matmul_tn", "A": g, "B": Ref("x"), "params": {}, "keep": "g",
         "scale": {"operand": "A", "rows": Sent(torch.ones(4), "public"), "cols": Sent(torch.ones(3), "public")}},
    ])
    assert_same_request(wire.decode(wire.encode(request)), request)


def test_params_that_are_not_plain_data_refuse_to_encode():
    for bad in ({"t": torch.ones(1)}, {"s": {1, 2}}, {"d": {1: "x"}}, {"o": object()}):
        with pytest.raises(TypeError, match="wire"):
            wire.encode(Request("bilinear", {}, TAG, params=bad))
    with pytest.raises(TypeError, match="dtype"):
        wire.encode(Request("store", {"X": Sent(torch.ones(2, dtype=torch.complex64), "clear")}, TAG))


# -- hostile bytes -------------------------------------------------------------------------

def _frame(header: dict, payload: bytes = b"", *, pad_end: bool = True) -> bytes:
    """A frame by hand: tensors start at an ALIGN boundary and (``pad_end``) the frame ends on one."""
    text = json.dumps(header).encode()
    start = 8 + len(text)
    pad = (-start) % wire.ALIGN
    tail = b"\0" * ((-len(payload)) % wire.ALIGN) if pad_end else b""
    return b"BTW1" + struct.pack("<I", len(text)) + text + b"\0" * pad + payload + tail


def _response_header(**changes) -> dict:
    header = {"type": "response", "result": True, "worker_seconds": 0.1,
              "tensors": [{"dtype": "float32", "shape": [2], "nbytes": 8}]}
    header.update(changes)
    return header


REQUEST = Request("fetch", {"X": Ref("h")}, TAG)


def test_a_well_formed_handmade_reply_decodes():  # (so the rejections below are about the one change each)
    reply = wire.read_reply(_frame(_response_header(), struct.pack("<2f", 1.0, 2.0)), request=REQUEST, worker="w")
    assert reply.result.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("data, reason", [
    (_frame(_response_header(tensors=[{"dtype": "object", "shape": [2], "nbytes": 8}]), b"\0" * 8), "not allowed"),
    (_frame(_response_header(tensors=[{"dtype": "float32", "shape": [2], "nbytes": 8000}]), b"\0" * 8), "does not match"),
    (_frame(_response_header(tensors=[{"dtype": "float32", "shape": [2000], "nbytes": 8000}]), b"\0" * 8), "past the end"),
    (_frame(_response_header(), b"\0" * 8 + b"extra" * 20), "length does not match"),
    (_frame(_response_header(), b"\0" * 4, pad_end=False), "past the end"),
    (_frame({**_response_header(), "evil": 1}, b"\0" * 8), "unexpected keys"),
    (_frame(_response_header(tensors=[{"dtype": "float32", "shape": [2], "nbytes": 8, "x": 0}]), b"\0" * 8),
     "unexpected keys"),
    (_frame(_response_header(tensors=[{"dtype": "float32", "shape": [-2], "nbytes": -8}]), b""), "below 0"),
    (_frame(_response_header(tensors=[{"dtype": "float32", "shape": [1] * 9, "nbytes": 4}]), b"\0" * 4), "shape"),
    (_frame(_response_header(worker_seconds=float("nan")), b"\0" * 8), "not JSON"),
    (_frame(_response_header(worker_seconds="1"), b"\0" * 8), "plausible"),
    (_frame(_response_header(result=False), b"\0" * 8), "count"),
    (_frame({"type": "configure", "name": "x", "adversary": {"dict": {}}, "threads": None, "tensors": []}),
     "expected a response or error"),
    (_frame({"type": "__reduce__", "tensors": []}), "unknown message type"),
    (b"BTW1" + struct.pack("<I", 10**9) + b"{}", "header length"),
    (b"BTW1" + struct.pack("<I", 3) + b"{x}", "not JSON"),
    (b"BTW1" + struct.pack("<I", 5) + b"\xff\xfe\xfd{}", "not JSON"),
    (b"XXXX" + b"\0" * 20, "bad magic"),
    (b"BT", "shorter than its prefix"),
])
def test_malformed_replies_are_integrity_errors_naming_layer_op_step(data, reason):
    with pytest.raises(bt.IntegrityError, match=rf"layer 'features.0', op 'grad_input', step 3: worker 'w' "
                                                rf"sent a malformed reply \(.*{reason}"):
        wire.read_reply(data, request=REQUEST, worker="w")


def test_a_result_where_none_was_asked_for_is_refused():
    data = _frame(_response_header(), b"\0" * 8)
    with pytest.raises(bt.IntegrityError, match="none was asked for"):
        wire.read_reply(data, request=Request("store", {}, TAG, return_result=False), worker="w")


class _Exploit:
    """Unpickling this runs code (what a malicious worker would send to a pickle-reading enclave)."""

    def __reduce__(self):
        return (exec, ("import blindtrain; blindtrain.PWNED = True",))


def test_a_pickle_payload_is_refused_and_never_run():
    data = pickle.dumps(("ok", _Exploit(), 0.1))
    with pytest.raises(bt.IntegrityError, match="bad magic"):
        wire.read_reply(data, request=REQUEST, worker="w")
    assert not hasattr(bt, "PWNED")


def test_process_transport_never_unpickles_what_its_worker_sends():
    """A hostile worker process writes a pickle bomb on the pipe: the trusted side refuses it unread."""
    context = mp.get_context("spawn")
    ours, theirs = context.Pipe()
    transport = ProcessTransport.__new__(ProcessTransport)  # the trusted end of the pipe, without a worker
    transport._conn, transport.name, transport.timeout = ours, "main0", 5.0
    transport._process = type("Alive", (), {"is_alive": lambda self: True, "exitcode": None})()
    theirs.send(("ok", _Exploit(), 0.1))  # what the pre-wire worker loop sent: a pickled tuple
    try:
        with pytest.raises(bt.IntegrityError, match="malformed reply"):
            transport.call(REQUEST)
        assert not hasattr(bt, "PWNED")
    finally:
        ours.close()
        theirs.close()


def test_worker_text_is_escaped_and_truncated():
    hostile = "boom\x1b[2J\r\n\u202eevil" + "x" * 5000
    data = wire.encode(wire.Failure(hostile))
    with pytest.raises(bt.WorkerError) as caught:
        wire.read_reply(bytes(data), request=REQUEST, worker="main0")
    text = str(caught.value)
    assert text.startswith(f"worker 'main0' failed serving layer {TAG.layer!r}, op {TAG.op!r}, step {TAG.step}: "
                           "boom\\x1b[2J\\r\\n\\u202eevil")
    assert all(ch.isprintable() for ch in text) and len(text) < 2200 and "more characters" in text


def test_requests_refuse_tensors_not_used_or_used_twice_and_unknown_kinds():
    request = Request("store", {"X": Sent(torch.ones(2), "clear")}, TAG)
    header_len = struct.unpack_from("<I", wire.encode(request), 4)[0]
    header = json.loads(bytes(wire.encode(request))[8:8 + header_len])
    payload = struct.pack("<2f", 1, 1)
    for args, reason in (({"X": {"sent": 0, "kind": "clear"}, "Y": {"sent": 0, "kind": "clear"}}, "exactly one"),
                         ({}, "exactly one"), ({"X": {"sent": 0, "kind": "secret"}}, "unknown kind"),
                         ({"X": {"sent": 1, "kind": "clear"}}, "names tensor"),
                         ({"X": {"ref": "h", "kind": "clear"}}, "unexpected keys")):
        with pytest.raises(wire.MalformedMessage, match=reason):
            wire.decode(_frame({**header, "args": args}, payload))
