"""Bilinear products a model's ``forward`` calls as functions, offloaded like its modules.

While a prepared model runs its forward, :class:`FunctionalOffload` (a ``TorchFunctionMode``) looks at
every torch function called outside an offloaded layer, and hands the bilinear ones to the protocol
through the same autograd functions as the offloaded modules (:mod:`blindtrain.glue`):

* ``F.linear(x, W, b)`` and ``x @ W`` / ``torch.matmul(x, W)`` where ``W`` is a parameter of the model:
  a weighted product (roles data, weight; ``x·Wᵀ`` resp. ``x·W``), its site named after the parameter
  (``head.weight@linear``).  Under protocols that read the weight per call
  (``Protocol.weights_per_call``), or, for ``F.linear``, that adopt the weight (``Protocol.adopt``:
  tempo keeps it in the enclave and offloads the products); elsewhere these products stay in the enclave.
* ``torch.matmul`` / ``@`` / ``torch.bmm`` / ``torch.mm`` and ``F.linear`` on two non-parameter tensors
  of at least two dimensions: a product of two data operands (the protocol's ``matmul``), batch
  dimensions broadcast first (``…×p×q @ …×q×r``).
* ``F.scaled_dot_product_attention(q, k, v, …)``: its two products (``q·kᵀ`` and ``P·v``) offloaded,
  the scaling, mask, softmax and dropout in the enclave (the math reference of PyTorch's docs).
* ``F.multi_head_attention_forward`` (what ``nn.MultiheadAttention`` and ``nn.Transformer*`` call): run
  with the mode active, so the products inside it are offloaded by the rules above.

Everything else runs as called.  Protocol code never sees the mode: inside an offloaded op it is
suspended (:func:`suspended`), so a protocol's own products run as written.  What runs where is what
:func:`decide` says, which :mod:`blindtrain.placement` reports.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode, _get_current_function_mode, _pop_mode_temporarily

#: functions whose bilinear work is offloaded (name used in site names and the placement)
PRODUCTS = {F.linear: "linear", torch.matmul: "matmul", torch.Tensor.matmul: "matmul",
            torch.Tensor.__matmul__: "matmul", torch.bmm: "bmm", torch.Tensor.bmm: "bmm", torch.mm: "mm",
            torch.Tensor.mm: "mm", F.scaled_dot_product_attention: "sdpa"}
#: composite functions run with the mode active so that their inner products are seen
COMPOSITES = (F.multi_head_attention_forward,)

_local = threading.local()


@contextlib.contextmanager
def suspended():
    """Protocol code runs without the functional mode (its own products are not offloaded again)."""
    mode = getattr(_local, "active", None)
    if mode is not None and _get_current_function_mode() is mode:
        with _pop_mode_temporarily():
            _local.active = None
            try:
                yield
            finally:
                _local.active = mode
    else:
        yield


@dataclass(frozen=True)
class Decision:
    """What happens to one functional call: ``kind`` (``weighted``, ``data``, ``attention`` or ``None``
    for a call that stays in the enclave) and why."""

    kind: str | None
    reason: str


def _is_parameter(t) -> bool:
    return isinstance(t, nn.Parameter)


def decide(func, args, kwargs, protocol_cls) -> Decision | None:
    """How :class:`FunctionalOffload` treats ``func(*args, **kwargs)`` under ``protocol_cls``; ``None`` when
    ``func`` is not a bilinear product."""
    name = PRODUCTS.get(func)
    if name is None:
        return None
    if name == "sdpa":
        return Decision("attention", "attention's products (q·kᵀ, P·v) offloaded; scaling, mask, softmax and "
                                     "dropout in the enclave")
    a = args[0] if args else kwargs.get("input")
    b = args[1] if len(args) > 1 else kwargs.get("weight", kwargs.get("other", kwargs.get("mat2")))
    if not (torch.is_tensor(a) and torch.is_tensor(b)):
        return Decision(None, "operands are not two tensors")
    if _is_parameter(b) and not _is_parameter(a):
        adopted = protocol_cls.adopts_weights and name == "linear"
        if not (protocol_cls.weights_per_call or adopted):
            return Decision(None, f"a product with the parameter used directly; {protocol_cls.info.name} keys "
                                  f"each offloaded weight to its module (use nn.Linear or F.linear)")
        if b.dim() != 2 or a.dim() < 1:
            return Decision(None, "a weight that is not a matrix")
        return Decision("weighted", "bilinear with a parameter: x·W and both gradients")
    if _is_parameter(a) or _is_parameter(b):
        return Decision(None, "the parameter is the left operand")
    if a.dim() < 2 or b.dim() < 2:
        return Decision(None, "a vector operand (a matrix-vector product)")
    if name == "linear" and len(args) > 2 and args[2] is not None:
        return Decision(None, "F.linear of two data operands with a bias")
    return Decision("data", "both-private product (two data operands)")


class FunctionalLayer:
    """What the glue's autograd functions need of a layer: its site and its protocol."""

    def __init__(self, site, protocol) -> None:
        self.site, self.protocol = site, protocol
        self.adopted = False  # the protocol took over the weight (Protocol.adopt)


class FunctionalOffload(TorchFunctionMode):
    """The mode (see the module docstring).  ``sites`` holds a :class:`~blindtrain.glue.LayerSite` per
    parameter product and per position of a data product in the forward (``matmul#0`` …)."""

    def __init__(self, model: nn.Module, protocol) -> None:
        super().__init__()
        self.model, self.protocol = model, protocol
        self.parameter_names = {id(p): name for name, p in model.named_parameters()}
        self.layers: dict[str, FunctionalLayer] = {}
        self.position = 0

    # -- entering and leaving with the model's forward ------------------------------------------
    def begin(self, module, args) -> None:
        self.position = 0
        self.__enter__()
        _local.active = self
        self.entered = True

    def end(self, module, args, output) -> None:
        if not getattr(self, "entered", False):  # a pre-hook before ours raised: the mode was never entered
            return
        self.entered = False
        _local.active = None
        self.__exit__(None, None, None)

    # -- the sites ------------------------------------------------------------------------------
    def _layer(self, name: str, kind: str, weight_shape=None) -> FunctionalLayer:
        from .glue import LayerSite

        layer = self.layers.get(name)
        if layer is None:
            site = LayerSite(name, kind, weight_shape)
            site.module = self.model  # its training flag
            layer = self.layers[name] = FunctionalLayer(site, self.protocol)
        return layer

    def _data_layer(self, what: str) -> FunctionalLayer:
        name = f"{what}#{self.position}"
        self.position += 1
        return self._layer(name, "matmul")

    # -- the products ---------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in COMPOSITES:
            with self:  # the mode is off inside its own handler: back on for the products inside
                return torch.overrides.redispatch_function(func, types, args, kwargs)
        decision = decide(func, args, kwargs, type(self.protocol))
        if decision is None or decision.kind is None:
            return func(*args, **kwargs)
        if decision.kind == "attention":
            return self._attention(*args, **kwargs)
        name = PRODUCTS[func]
        a = args[0] if args else kwargs["input"]
        b = args[1] if len(args) > 1 else kwargs.get("weight", kwargs.get("other", kwargs.get("mat2")))
        if decision.kind == "weighted":
            from .glue import _WeightedFn

            bias = (args[2] if len(args) > 2 else kwargs.get("bias")) if name == "linear" else None
            weight = b if name == "linear" else b.t()  # Linear's layout: out × in
            site_name = f"{self.parameter_names.get(id(b), 'parameter')}@{name}"
            layer = self._layer(site_name, "linear", tuple(weight.shape))
            if not self.protocol.weights_per_call and not layer.adopted:
                self.protocol.adopt(layer.site, b)
                layer.adopted = True
            lead = a.shape[:-1]
            y = _WeightedFn.apply(a.reshape(-1, a.shape[-1]), weight, bias, layer)
            return y.reshape(*lead, y.shape[-1])
        if name == "linear":
            b = b.transpose(-2, -1)
        return self._product(a, b, self._data_layer(name))

    def _product(self, a: torch.Tensor, b: torch.Tensor, layer: FunctionalLayer) -> torch.Tensor:
        """``a @ b`` of two data operands (``…×p×q``, ``…×q×r``; batch dims broadcast) by the protocol."""
        from .glue import _MatMulFn

        batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        a = a.expand(*batch, *a.shape[-2:])
        b = b.expand(*batch, *b.shape[-2:])
        if not batch:  # the protocols' products take a batch dimension
            return _MatMulFn.apply(a.unsqueeze(0), b.unsqueeze(0), layer).squeeze(0)
        return _MatMulFn.apply(a.contiguous(), b.contiguous(), layer)

    def _attention(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False):
        """``softmax(q·kᵀ·scale + mask)·v`` with the two products offloaded (PyTorch's math reference)."""
        if enable_gqa:
            repeat = query.size(-3) // key.size(-3)
            key = key.repeat_interleave(repeat, -3)
            value = value.repeat_interleave(repeat, -3)
        length, source = query.size(-2), key.size(-2)
        factor = 1 / query.size(-1) ** 0.5 if scale is None else scale
        scores = self._product(query, key.transpose(-2, -1), self._data_layer("sdpa.scores")) * factor
        if is_causal:
            causal = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
        if attn_mask is not None:
            scores = (scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                      else scores + attn_mask)
        weights = torch.softmax(scores, dim=-1)
        if dropout_p > 0.0:
            weights = F.dropout(weights, p=dropout_p)
        return self._product(weights, value, self._data_layer("sdpa.values"))


def install_functional(model: nn.Module, protocol) -> FunctionalOffload:
    """Offload ``model``'s functional products while it runs its forward (hooks on the model)."""
    mode = FunctionalOffload(model, protocol)
    model.register_forward_pre_hook(mode.begin)
    model.register_forward_hook(mode.end, always_call=True)
    return mode
