"""Per-layer tempo state, and the choice of the per-kind class (:class:`~.linear.LinearLayer`,
:class:`~.conv.ConvLayer`) that holds a kind's maths: check projections, tolerances, the encoding of its
operands and the worker products of its ops."""

from __future__ import annotations

import numpy as np


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
