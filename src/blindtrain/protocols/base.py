"""The protocol interface and registry.

A protocol is a way to compute the bilinear ops of a training step with an
untrusted worker.  It is one module in :mod:`blindtrain.protocols` defining a
subclass of :class:`Protocol` decorated with :func:`register`; the package imports
every module in it, so adding a protocol touches no other file.

The layer glue (:mod:`blindtrain.glue`) calls, per offloaded layer and step:

* ``forward(site, x, weight)``        -> ``y`` (without bias)
* ``grad_input(site, grad_y, weight)`` -> ``grad_x``
* ``grad_weight(site, x, grad_y)``     -> ``grad_weight`` (in the weight's own layout)
* ``matmul(site, a, b)`` and ``matmul_grads(site, a, b, grad_y)`` for both-private products.

The defaults express each of these as one :meth:`Protocol.bilinear` call on
``(A, B)`` with each operand's *role* (``"data"`` — activations, gradients — or
``"weight"``), so a protocol that treats every op alike implements just
``bilinear``.  Protocols that need layer-level control (tempo keeps weights on
the worker) override the layer hooks and :meth:`wrap`.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from .. import bilinear
from ..errors import UsageError
from ..runtime import Runtime
from .options import ProtocolOptions


@dataclass(frozen=True)
class ProtocolInfo:
    """What a protocol is, for ``blindtrain protocols``, the report and the metrics."""

    name: str
    source: str
    trains: bool
    private: str
    integrity: str
    leaks: str
    summary: str


PROTOCOLS: dict[str, type["Protocol"]] = {}


def register(cls: type["Protocol"]) -> type["Protocol"]:
    """Class decorator: make ``cls`` available under ``cls.info.name``."""
    name = cls.info.name
    if name in PROTOCOLS and PROTOCOLS[name] is not cls:
        raise ValueError(f"protocol {name!r} registered twice")
    PROTOCOLS[name] = cls
    return cls


class Protocol(ABC):
    """Base class of every protocol (see the module docstring)."""

    info: ClassVar[ProtocolInfo]
    #: the protocol's typed options (a frozen dataclass; CLI: ``--unmask``, ``--option k=v`` ...)
    Options: ClassVar[type[ProtocolOptions]] = ProtocolOptions
    #: their defaults, read-only (derived from :attr:`Options`)
    options: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    #: whether the model's bilinear layers are replaced by offloaded ones (the default :meth:`wrap`)
    offloads_layers: ClassVar[bool] = True
    #: ``None``: a deep copy of the prepared model (``copy.deepcopy``, ``AveragedModel``) shares this
    #: protocol and session and computes with the copy's own weights.  Otherwise why it cannot: the copy
    #: is then refused with a :class:`UsageError` saying so.
    copy_refusal: ClassVar[str | None] = None
    #: whether each offloaded call's ``weight`` argument is what the protocol multiplies by (so a weight
    #: computed at each forward, e.g. by ``weight_norm``, can be offloaded); ``False`` for protocols that
    #: keep or encode a layer's weight parameter once (tempo, slalom): such layers stay in the enclave
    weights_per_call: ClassVar[bool] = True
    #: whether a protocol without ``weights_per_call`` can still take over a weight a model's ``forward``
    #: passes to ``F.linear`` directly (:meth:`adopt`; e.g. ``nn.MultiheadAttention``'s projections)
    adopts_weights: ClassVar[bool] = False
    #: how far this protocol's forward, input gradient and weight update may be from plain PyTorch's
    #: (max |error| / max |reference| per tensor, on the conformance suite's small models)
    tolerance: ClassVar[float] = 1e-5
    #: the transcript kinds each worker role receives (DESIGN.md: masked, public, obfuscated, pad, share, clear)
    transcript_kinds: ClassVar[Mapping[str, frozenset[str]]] = MappingProxyType({})
    #: whether every worker result is verified: every adversary must then be caught (exit 3)
    verifies_results: ClassVar[bool] = False
    #: the worker roles an adversary can be aimed at (``--adversary NAME:role=R``); the first is where a spec
    #: without ``role=`` lands (the conformance suite aims every adversary at each of them)
    adversary_roles: ClassVar[tuple[str, ...]] = ("main",)
    #: what the enclave's work per training step scales with: ``"products"`` (it computes products as large
    #: as the layers' own) or ``"activations"`` (it only encodes, decodes and checks; the step then runs on
    #: one thread: :mod:`blindtrain.threads`)
    enclave_work: ClassVar[str] = "products"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        info = cls.__dict__.get("info")
        if info is not None and cls.Options.protocol != info.name:  # no options of its own: none, by its name
            cls.Options = dataclass(frozen=True)(type(f"{cls.__name__}Options", (cls.Options,),
                                                      {"protocol": info.name, "__module__": cls.__module__}))
        cls.options = MappingProxyType(cls.Options.defaults())

    def __init__(self, runtime: Runtime, **options: Any) -> None:
        self.runtime = runtime
        #: the validated options, typed
        self.opts = self.Options.parse(options)
        #: the same as a dict (read by older code; changing it changes nothing)
        self.settings = self.opts.as_dict()
        self.sites: list = []

    def __deepcopy__(self, memo):
        """A copied model's layers share the protocol (keys, workers and ledger are the session's, not the
        model's), or the copy is refused (:attr:`copy_refusal`)."""
        if self.copy_refusal is not None:
            raise UsageError(f"a prepared model cannot be deep-copied under protocol {self.info.name!r}: "
                             f"{self.copy_refusal}; copy it before session.prepare() (e.g. build the "
                             f"AveragedModel first), or train under otp or enclave")
        return self

    # -- life cycle ------------------------------------------------------------------
    def wrap(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None):
        """Prepare ``model`` (and ``optimizer``) for training under this protocol.

        Default: replace Linear / Conv2d / MatMul layers in place by offloaded layers
        whose autograd functions call this protocol.  Returns ``(model, optimizer)``.
        """
        from ..glue import install

        self.sites = install(model, self)
        return model, optimizer

    def adopt(self, site, weight: torch.nn.Parameter) -> None:
        """Take over ``weight`` for a functional ``linear`` ``site`` found while the model ran (protocols with
        :attr:`adopts_weights`); called once, before the site's first product."""

    def materialize(self) -> None:
        """Make the enclave-side model hold the current plaintext weights (before a checkpoint)."""

    def close(self) -> None:
        """Release protocol resources (workers are closed by the session)."""

    def state_dict(self) -> dict:
        """The protocol's own state a resumed run needs to continue bit for bit (keys, epochs, check
        projections ...), beyond the model and optimizer state; default: none.  It goes into the sealed
        checkpoint only (it may hold secrets)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`, after :meth:`wrap` (``prepare``) and after the model and
        optimizer got the checkpoint's plaintext state."""

    def cost_model(self, ops: list, *, batch: int, input_numel: int, classes: int, training: bool = True):
        """Modelled :class:`~blindtrain.costs.StepCost` of one step given the traced ``ops``
        (:func:`blindtrain.costs.trace_ops`).  ``bytes_to_worker`` / ``bytes_from_worker`` must equal
        what the ledger measures for the same step exactly; the bench checks it."""
        raise NotImplementedError(f"protocol {self.info.name!r} has no cost model")

    def summary(self) -> dict:
        """Protocol-specific figures for the metrics (options in use, soundness, privacy, ...)."""
        return {"options": self.opts.as_dict()}

    # -- the bilinear ops ------------------------------------------------------------
    def bilinear(self, site, op: str, fn: str, a: torch.Tensor, b: torch.Tensor, *,
                 roles: tuple[str, str], params: dict) -> torch.Tensor:
        """Compute ``bilinear.apply(fn, a, b, **params)`` under this protocol.

        ``op`` is ``forward``, ``grad_input`` or ``grad_weight`` (or ``attention_*``);
        ``roles`` tells which operands are data and which a weight.
        """
        raise NotImplementedError(f"protocol {self.info.name!r} does not offload bilinear ops")

    def forward(self, site, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ops = bilinear.LAYER_OPS[site.kind]
        b = weight.t() if ops.transposed_weight else weight
        return self.bilinear(site, "forward", ops.forward, x, b, roles=("data", "weight"),
                             params=bilinear.layer_params(ops.forward, site.conv_params))

    def grad_input(self, site, grad_y: torch.Tensor, weight: torch.Tensor, input_shape) -> torch.Tensor:
        fn = bilinear.LAYER_OPS[site.kind].grad_input
        return self.bilinear(site, "grad_input", fn, grad_y, weight, roles=("data", "weight"),
                             params=bilinear.layer_params(fn, site.conv_params, input_shape))

    def grad_weight(self, site, x: torch.Tensor, grad_y: torch.Tensor, weight_shape) -> torch.Tensor:
        ops = bilinear.LAYER_OPS[site.kind]
        out = self.bilinear(site, "grad_weight", ops.grad_weight, x, grad_y, roles=("data", "data"),
                            params=bilinear.layer_params(ops.grad_weight, site.conv_params, weight_shape))
        return out.t() if ops.transposed_weight else out

    def weighted_grads(self, site, x: torch.Tensor, grad_y: torch.Tensor, weight: torch.Tensor, *,
                       needs: tuple[bool, bool], input_shape) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(grad_input, grad_weight)`` of a weighted layer, each only if ``needs`` says so.

        By default one :meth:`grad_input` and one :meth:`grad_weight`; a protocol may override it to
        compute both in one exchange with the worker."""
        grad_x = self.grad_input(site, grad_y, weight, input_shape) if needs[0] else None
        grad_w = self.grad_weight(site, x, grad_y, weight.shape) if needs[1] else None
        return grad_x, grad_w

    def matmul(self, site, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.bilinear(site, "forward", "bmm", a, b, roles=("data", "data"), params={})

    def matmul_grads(self, site, a, b, grad_y, needs: tuple[bool, bool]):
        grad_a = grad_b = None
        if needs[0]:
            grad_a = self.bilinear(site, "grad_input", "bmm", grad_y, b.transpose(-2, -1).contiguous(),
                                   roles=("data", "data"), params={})
        if needs[1]:
            grad_b = self.bilinear(site, "grad_weight", "bmm", a.transpose(-2, -1).contiguous(), grad_y,
                                   roles=("data", "data"), params={})
        return grad_a, grad_b


def get(name: str) -> type[Protocol]:
    from . import load_all

    load_all()
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise UsageError(f"unknown protocol {name!r}; choose from {', '.join(sorted(PROTOCOLS))}") from None
