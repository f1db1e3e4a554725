"""Per-layer tempo state."""

from __future__ import annotations

import numpy as np


class _Layer:
    """Per-layer tempo state (kept in ``site.state['tempo']``)."""

    def __init__(self, site, param, key_prefix):
        self.site = site
        self.param = param
        self.h = key_prefix
        self.conv = site.kind == "conv2d"
        shape = tuple(site.weight_shape)
        self.m, self.n = shape[0], shape[1]
        self.kernel = shape[2:]
        self.ksz = int(np.prod(self.kernel)) if self.kernel else 1
        self.epoch = -1
        self.epoch_start = 0
        self.key = None
        self.blocks = []
        self.resident = True
        self.encrypted_version = None
        self.has_buf = False
        self.pending = None       # projections of the weight gradient awaiting optimizer.step()
        self.batch = None         # forward batch key of this step (pb, cb)
        self.t = {}               # tracker tensors
        self.last_batch = 0
        self.saved = self.saved_g = None
        self.restore = False      # resumed from a checkpoint: W′ must be sent again under the restored key
