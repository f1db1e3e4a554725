"""Enclave-time attribution of the layers that are not offloaded (activations, norms, pooling).

:func:`time_nonlinear_layers` hooks the forward of every leaf module that is not a
bilinear layer and adds its time within training steps, less any worker waits
inside it, to the ledger's ``nonlinear`` category.  Their *backward* is not
attributed: autograd interleaves branches (a ResNet shortcut runs between a
layer's backward hooks), so module backward spans overlap and would double count;
that time stays in ``other``.  Protocol-agnostic: the session installs it for
every protocol whose model runs on the trusted side.
"""

from __future__ import annotations

from torch import nn

from .glue import OffloadedConv2d, OffloadedLinear, OffloadedMatMul
from .ledger import Ledger
from .nn import MatMul

_BILINEAR = (nn.Linear, nn.Conv2d, MatMul, OffloadedLinear, OffloadedConv2d, OffloadedMatMul)
_SKIP = (nn.Flatten, nn.Identity, nn.Dropout)


class _SpanTimer:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._open: dict[int, tuple[float, float]] = {}

    def start(self, key: int) -> None:
        if self.ledger.in_step:
            self._open[key] = self.ledger.span_mark()

    def stop(self, key: int) -> None:
        mark = self._open.pop(key, None)
        if mark is not None:
            self.ledger.category_seconds["nonlinear"] += self.ledger.own_seconds(mark)


def time_nonlinear_layers(model: nn.Module, ledger: Ledger) -> int:
    """Install the timing hooks; returns how many modules are timed."""
    timer = _SpanTimer(ledger)
    count = 0
    for module in model.modules():
        if next(module.children(), None) is not None or isinstance(module, _BILINEAR + _SKIP):
            continue
        key = id(module)
        module.register_forward_pre_hook(lambda m, a, k=key: timer.start(k))
        module.register_forward_hook(lambda m, a, o, k=key: timer.stop(k))
        count += 1
    return count
