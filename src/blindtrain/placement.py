"""What runs where: the per-op placement of a model under a protocol (``bt.validate``, ``prepare``).

Every module or functional call that does bilinear work (a matmul, a convolution, attention's products,
an embedding lookup, a recurrent cell) is listed with where it runs — offloaded to the protocol's
workers, or kept in the enclave — and why, with its share of the step's multiply-accumulates when an
example input is given.  Like Opacus's ``ModuleValidator``: ``validate(model, protocol)`` checks a model
without training it, and ``strict=True`` turns "an offloadable kind of op stays in the enclave" into a
:class:`~blindtrain.errors.UsageError`.

MACs per forward (b: batch, out: the output's element count):

* ``Linear``: ``out · in_features``; ``Conv*d`` / ``ConvTranspose*d``: ``out · (C_in / groups) · ∏kernel``
  (transpose: input elements instead of output);
* ``MultiheadAttention``: the four projections ``4 · b·L·E²`` (approximately) plus ``2 · b·L²·E`` for QKᵀ and AV;
* ``RNN`` / ``LSTM`` / ``GRU``: ``gates · b·T·(in + hidden)·hidden`` per layer and direction;
* functional calls (``F.linear``, ``torch.matmul`` / ``@`` / ``bmm``, ``einsum``,
  ``F.scaled_dot_product_attention``, ``F.conv*d``) made inside ``forward`` outside any offloaded module.

The training step costs about three times the forward (forward, input gradient, weight gradient); the
shares are of the forward and hold for the step in that proportion.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import UsageError
from .functional import Decision, decide
from .glue import ConvPadding, computed_weight, stays_in_enclave
from .nn import MatMul

#: where an op runs
WORKER, ENCLAVE = "worker", "enclave"

_RECURRENT_GATES = {nn.RNN: 1, nn.LSTM: 4, nn.GRU: 3}

#: functional bilinear calls and what they are
_FUNCTIONAL = {
    F.linear: "F.linear", torch.matmul: "torch.matmul", torch.Tensor.matmul: "Tensor.matmul",
    torch.Tensor.__matmul__: "@", torch.bmm: "torch.bmm", torch.mm: "torch.mm", torch.einsum: "torch.einsum",
    F.scaled_dot_product_attention: "F.scaled_dot_product_attention", F.conv1d: "F.conv1d",
    F.conv2d: "F.conv2d", F.conv3d: "F.conv3d",
}


@dataclass(frozen=True)
class PlacedOp:
    """One bilinear module or call, and where it runs.

    Attributes:
        name: the module's qualified name (``features.0``), or ``<parent>:<call>`` for a functional call.
        kind: what it is (``Linear``, ``Conv2d``, ``MultiheadAttention``, ``F.linear`` ...).
        where: ``worker`` (offloaded to the protocol) or ``enclave``.
        reason: why it runs there, in words.
        macs: multiply-accumulates of one forward on the example input (``None`` without one).
        offloadable_kind: whether this kind of op is one a protocol could offload (a bilinear product);
            ``strict=True`` rejects such ops when they stay in the enclave.
    """

    name: str
    kind: str
    where: str
    reason: str
    macs: int | None = None
    offloadable_kind: bool = True


@dataclass
class Placement:
    """The placement of every bilinear op of a model under one protocol."""

    protocol: str
    ops: list[PlacedOp] = field(default_factory=list)

    @property
    def total_macs(self) -> int | None:
        counted = [op.macs for op in self.ops if op.macs is not None]
        return sum(counted) if counted else None

    def share(self, op: PlacedOp) -> float | None:
        """``op``'s fraction of the forward's multiply-accumulates."""
        total = self.total_macs
        return None if op.macs is None or not total else op.macs / total

    @property
    def enclave_ops(self) -> list[PlacedOp]:
        return [op for op in self.ops if op.where == ENCLAVE]

    @property
    def offloaded_share(self) -> float | None:
        """Fraction of the forward's MACs that the protocol offloads."""
        total = self.total_macs
        if not total:
            return None
        return sum(op.macs or 0 for op in self.ops if op.where == WORKER) / total

    def table(self) -> str:
        """A text table: op, kind, where, share of MACs, why."""
        rows = [("op", "kind", "runs on", "MACs", "why")]
        for op in self.ops:
            share = self.share(op)
            rows.append((op.name, op.kind, op.where, "-" if share is None else f"{share:6.1%}", op.reason))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
        offloaded = self.offloaded_share
        if offloaded is not None:
            lines.append(f"offloaded under {self.protocol}: {offloaded:.1%} of the forward's multiply-accumulates")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"protocol": self.protocol, "offloaded_share": self.offloaded_share,
                "ops": [{**vars(op), "share": self.share(op)} for op in self.ops]}


def _module_reason(module: nn.Module, protocol_cls) -> tuple[bool, str, bool]:
    """``(offloaded, why, offloadable_kind)`` for a bilinear module under a protocol that offloads layers
    (what :func:`blindtrain.glue.install` does: :func:`blindtrain.glue.stays_in_enclave`)."""
    if isinstance(module, (MatMul, nn.Linear, nn.Conv2d)):
        refusal = stays_in_enclave(module, protocol_cls)
        if refusal is not None:
            return False, refusal, True
    if isinstance(module, MatMul):
        return True, "both-private product (attention)", True
    computed = computed_weight(module)
    computed = f" ({computed}: recomputed in the enclave at each forward)" if computed else ""
    if isinstance(module, nn.Linear):
        return True, "bilinear: x·Wᵀ and both gradients" + computed, True
    if isinstance(module, nn.Conv2d):
        return True, "bilinear: conv2d and both gradients" + ConvPadding.of(module).describe() + computed, True
    if isinstance(module, (nn.Conv1d, nn.Conv3d)):
        return False, (f"{type(module).__name__}: the protocols' per-layer keys, encodings and checks are built for "
                       f"2-D convolutions, so it stays in the enclave (an nn.Conv2d with a size-1 dimension is "
                       f"offloaded)"), True
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return False, (f"{type(module).__name__}: its forward is a conv's input gradient with the roles swapped, "
                       f"and the protocols' per-layer keys and checks are built for a conv forward, so it stays "
                       f"in the enclave"), True
    if isinstance(module, nn.MultiheadAttention):
        if protocol_cls.weights_per_call:
            return True, "its projections (functional F.linear) and attention products offloaded", True
        if protocol_cls.adopts_weights:
            return True, ("its projections (functional F.linear; the weights kept and updated in the enclave) and "
                          "attention products offloaded"), True
        return False, (f"its projections (most of its MACs) stay in the enclave ({protocol_cls.info.name} keys each "
                       f"offloaded weight to its module); its attention products (q·kᵀ, P·v) are offloaded"), True
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return False, "a table lookup (gather), not a product: stays in the enclave", False
    if isinstance(module, (nn.RNN, nn.LSTM, nn.GRU)):
        return False, "recurrent cells (sequential small products) stay in the enclave", False
    return False, "", False


def _is_bilinear_module(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                               nn.ConvTranspose3d, nn.MultiheadAttention, nn.Embedding, nn.EmbeddingBag, nn.RNN,
                               nn.LSTM, nn.GRU, MatMul))


def _module_macs(module: nn.Module, inputs: tuple, output) -> int | None:
    out = output[0] if isinstance(output, tuple) else output
    if not torch.is_tensor(out):
        return None
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return inputs[0].numel() * module.out_channels // module.groups * math.prod(module.kernel_size)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return out.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
    if isinstance(module, MatMul):
        a = inputs[0]
        return out.numel() * a.shape[-1]
    if isinstance(module, nn.MultiheadAttention):
        query = inputs[0]
        tokens = query.numel() // module.embed_dim
        length = query.shape[1] if module.batch_first else query.shape[0]
        return 4 * tokens * module.embed_dim ** 2 + 2 * tokens * length * module.embed_dim
    if isinstance(module, (nn.RNN, nn.LSTM, nn.GRU)):
        gates = _RECURRENT_GATES[type(module)]
        x = inputs[0]
        steps = x.numel() // module.input_size
        dirs = 2 if module.bidirectional else 1
        total = 0
        for layer in range(module.num_layers):
            width = module.input_size if layer == 0 else module.hidden_size * dirs
            total += gates * steps * (width + module.hidden_size) * module.hidden_size * dirs
        return total
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return 0
    return None


def _call_macs(func, args, kwargs, result) -> int | None:
    """MACs of a functional bilinear call from its operands and result."""
    out = result[0] if isinstance(result, tuple) else result
    if not torch.is_tensor(out):
        return None
    if func is F.linear:
        return out.numel() * args[0].shape[-1]
    if func in (F.conv1d, F.conv2d, F.conv3d):
        weight = args[1] if len(args) > 1 else kwargs["weight"]
        return out.numel() * math.prod(weight.shape[1:])
    if func is F.scaled_dot_product_attention:
        query = args[0]
        keys = args[1].shape[-2]
        return 2 * query.numel() * keys
    if func is torch.einsum:
        return _einsum_macs(args)
    tensors = [a for a in args if torch.is_tensor(a)]
    if len(tensors) >= 2 and tensors[0].dim() >= 1:
        return out.numel() * tensors[0].shape[-1]
    return None


def _einsum_macs(args) -> int | None:
    """MACs of ``einsum(equation, *operands)``: the product of every index's size (None with ``...``)."""
    equation = args[0] if args and isinstance(args[0], str) else None
    operands = [a for a in args[1:] if torch.is_tensor(a)]
    if equation is None or "..." in equation:
        return None
    inputs = equation.replace(" ", "").split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for letters, operand in zip(inputs, operands):
        sizes.update(zip(letters, operand.shape))
    return math.prod(sizes.values())


class _CallRecorder(TorchFunctionMode):
    """Records functional bilinear calls made while the module ``stack`` is not inside a bilinear module."""

    def __init__(self, stack: list[str], inside: list[int], protocol_cls) -> None:
        super().__init__()
        self.stack, self.inside, self.protocol_cls = stack, inside, protocol_cls
        self.calls: list[tuple[str, str, int | None, Decision | None]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        kind = _FUNCTIONAL.get(func)
        if kind is not None and not self.inside[0]:
            self.calls.append((self.stack[-1] if self.stack else "", kind, _call_macs(func, args, kwargs, result),
                               decide(func, args, kwargs, self.protocol_cls)))
        return result


def plan(model: nn.Module, protocol: str, *, example_input=None) -> Placement:
    """Where each bilinear op of ``model`` runs under ``protocol`` (see the module docstring).

    Args:
        model: an ordinary (not yet prepared) ``nn.Module``.
        protocol: a registered protocol name.
        example_input: a batch (tensor, or tuple of positional arguments) to measure MACs and find
            functional calls; the model is run once on a deep copy under ``no_grad``.
    """
    from .protocols import get

    protocol_cls = get(protocol)
    offloads = protocol_cls.offloads_layers
    placement = Placement(protocol)
    macs: dict[str, int | None] = {}
    calls: list[tuple[str, str, int | None]] = []
    if example_input is not None:
        macs, calls = _trace(model, example_input, protocol_cls)
    inside_attention = {f"{name}.{child}" for name, module in model.named_modules()
                        if isinstance(module, nn.MultiheadAttention) for child, _ in module.named_children()}
    for name, module in model.named_modules():
        if not _is_bilinear_module(module):
            continue
        if offloads and name in inside_attention:
            offloaded = protocol_cls.weights_per_call or protocol_cls.adopts_weights
            why = ("offloaded as the functional F.linear of nn.MultiheadAttention" if offloaded else
                   f"nn.MultiheadAttention reads this weight directly, and {protocol} keys each offloaded "
                   f"weight to its module")
            placement.ops.append(PlacedOp(name, type(module).__name__, WORKER if offloaded else ENCLAVE, why,
                                          macs.get(name)))
            continue
        if not offloads:
            where, reason = _whole_model_placement(protocol)
            placement.ops.append(PlacedOp(name, type(module).__name__, where, reason, macs.get(name)))
            continue
        offloaded, reason, kind_ok = _module_reason(module, protocol_cls)
        placement.ops.append(PlacedOp(name, type(module).__name__, WORKER if offloaded else ENCLAVE, reason,
                                      macs.get(name), kind_ok))
    for index, (parent, kind, call_macs, decision) in enumerate(calls):
        if not offloads:
            where, reason = _whole_model_placement(protocol)
        elif decision is None:
            where, reason = ENCLAVE, f"{kind} in forward() is not intercepted; use the nn module (nn.Conv2d ...) " \
                                     f"or a matmul"
        else:
            where = WORKER if decision.kind else ENCLAVE
            reason = f"functional call: {decision.reason}"
        placement.ops.append(PlacedOp(f"{parent or '<model>'}:{kind}#{index}", kind, where, reason, call_macs))
    return placement


def _whole_model_placement(protocol: str) -> tuple[str, str]:
    if protocol == "enclave":
        return ENCLAVE, "the enclave baseline offloads nothing"
    return WORKER, f"{protocol} runs the whole model on the worker, in the clear"


def _trace(model: nn.Module, example_input, protocol_cls) -> tuple[dict[str, int | None], list]:
    replica = copy.deepcopy(model).eval()
    names = {module: name for name, module in replica.named_modules()}
    macs: dict[str, int | None] = {}
    stack: list[str] = []
    inside = [0]
    handles = []

    def before(module, args):
        stack.append(names[module])
        if _is_bilinear_module(module):
            inside[0] += 1

    def after(module, args, output):
        stack.pop()
        if _is_bilinear_module(module):
            inside[0] -= 1
            macs[names[module]] = _module_macs(module, args, output)

    for module in replica.modules():
        handles.append(module.register_forward_pre_hook(before))
        handles.append(module.register_forward_hook(after))
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    recorder = _CallRecorder(stack, inside, protocol_cls)
    try:
        with torch.no_grad(), recorder:
            replica(*args)
    finally:
        for handle in handles:
            handle.remove()
    return macs, recorder.calls


def validate(model: nn.Module, protocol: str, *, example_input=None, strict: bool = False) -> Placement:
    """Check ``model`` against ``protocol`` without training it (like Opacus's ``ModuleValidator``).

    Returns the :class:`Placement`; with ``strict=True`` raises :class:`UsageError` if a product that a
    protocol could offload (a Linear, a convolution, attention, a functional matmul) would stay in the
    enclave, naming each one and why.  Functional calls are found only when ``example_input`` is given
    (the model must run to show them).
    """
    placement = plan(model, protocol, example_input=example_input)
    if strict:
        stuck = [op for op in placement.enclave_ops if op.offloadable_kind and protocol != "enclave"]
        if stuck:
            listed = "; ".join(f"{op.name} ({op.kind}): {op.reason}" for op in stuck)
            raise UsageError(f"strict: {len(stuck)} bilinear op(s) would stay in the enclave under {protocol}: "
                             f"{listed}. Replace them with offloadable layers (nn.Linear, nn.Conv2d with groups=1, "
                             f"blindtrain.nn.MatMul) or pass strict=False")
    return placement
