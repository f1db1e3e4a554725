"""Per-layer tempo state, and the choice of the per-kind class (:class:`~.linear.LinearLayer`,
:class:`~.conv.ConvLayer`) that holds a kind's maths: check projections, tolerances, the encoding of its
operands and the worker products of its ops."""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass

import numpy as np


@dataclass(eq=False)
class TempoCall:
    """One training forward of a layer, kept by its autograd node for the backward (``site.state["call"]``,
    see :func:`blindtrain.glue._call_state`): its batch key ``(π_b, c_b)``, the worker's handle of its
    ``X′`` and what the forward's read of ``X`` saved for the weight-gradient projections.  A layer called
    twice in one forward, or two forwards before one backward, each backward gets its own forward's."""

    batch: tuple
    handle: str
    saved: object


class TempoLayer:
    """Per-layer tempo state (kept in ``site.state['tempo']``); subclasses add the kind's maths.

    Weight ``W``: ``m×n`` (Linear, out×in) or ``m×n×kh×kw`` (Conv2d: channels play n and m)."""

    #: whether a decoded result's rows' norms enter the check's tolerance (linear layers)
    result_norms = False
    #: which operand of the weight-gradient product the worker rescales from G₁ to G₂
    scaled_operand = "A"
    #: what the worker sees of the model's input when this is the first layer (the privacy report)
    input_privacy = ""
    #: whether a new key epoch takes W′ and the tracked projections from one read of W
    #: (:mod:`blindtrain.kernels.weight_epoch`; matrices only)
    epoch_in_one_read = False

    def __init__(self, site, param, key_prefix):
        self.site = site
        self.param = param
        self.h = key_prefix
        shape = tuple(site.weight_shape)
        self.m, self.n = shape[0], shape[1]
        self.kernel = shape[2:]
        self.ksz = int(np.prod(self.kernel)) if self.kernel else 1
        self.epoch = -1
        self.epoch_start = 0
        self.key = None           # the WeightKey of the current key epoch (keys.WeightKey)
        self.blocks = []
        self.resident = True
        self.encrypted_version = None
        self.has_buf = False
        self.pending = None       # projections of the weight gradient awaiting optimizer.step()
        self.batch = None         # forward batch key of this step (pb, cb)
        self.t = {}               # tracker tensors
        self.last_batch = 0
        self.saved = self.saved_g = None  # the kind's InputStats / GradStats of this step (see linear, conv)
        self.restore = False      # resumed from a checkpoint: W′ must be sent again under the restored key
        self.x_handle = f"{key_prefix}/x"  # the worker's handle of the X′ the current op uses
        self.live: set[int] = set()  # X′ slots whose forward's autograd node is alive
        self.accumulated = False  # a second weight gradient was added on the worker since the last step
        self.grad_guard = None    # the .grad placeholder set at the last backward (contract.WorkerHeldGrad)

    def open_call(self, batch, saved) -> TempoCall:
        """A training forward's :class:`TempoCall`, on the lowest X′ slot no live node holds (slot 0 is
        ``h/x``: one forward per backward needs no other); the slot is free again when the node is gone."""
        slot = next(i for i in itertools.count() if i not in self.live)
        self.live.add(slot)
        call = TempoCall(batch=batch, handle=f"{self.h}/x" if slot == 0 else f"{self.h}/x{slot}", saved=saved)
        weakref.finalize(call, self.live.discard, slot)
        return call

    def resume_call(self, call) -> None:
        """A backward: the per-call state of its forward (``None``: no training forward recorded one)."""
        if call is None:
            self.batch = self.saved = None
        else:
            self.batch, self.saved, self.x_handle = call.batch, call.saved, call.handle

    @property
    def conv(self) -> bool:
        """Whether this is a conv layer (for reports and tests; the maths dispatch on the class)."""
        return False


def make_layer(site, param, key_prefix) -> TempoLayer:
    """The per-kind layer of an offloaded ``site`` (``linear`` or ``conv2d``)."""
    from .conv import ConvLayer
    from .linear import LinearLayer

    kinds = {"linear": LinearLayer, "conv2d": ConvLayer}
    if site.kind not in kinds:
        raise ValueError(f"tempo: no layer class for site kind {site.kind!r}")
    return kinds[site.kind](site, param, key_prefix)
