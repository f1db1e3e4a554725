"""A weight's ``.grad`` under SGD on the shares: sealed.

With ``update=auto`` and plain SGD, a weight's gradient never exists in the enclave: S0 and S1 compute
shares of ``η·dW`` and apply them to their weight shares (:mod:`.shares`).  Leaving ``.grad`` at ``None``
would make ``clip_grad_norm_`` and friends silently use the other parameters only (a wrong result), so the
weight gets a :class:`SealedGrad` instead: a storage-less tensor on which **any** use raises the
documented :class:`~blindtrain.errors.UsageError` at the point of use.  The optimizer never sees it (the
protocol removes it in a step pre-hook, before SGD reads ``.grad``).
"""

from __future__ import annotations

import torch

from ..errors import UsageError


class SealedGrad(torch.Tensor):
    """A gradient held as shares on S0 / S1: shape, dtype and device of the weight, no storage, no use."""

    sealed = True

    @staticmethod
    def __new__(cls, like: torch.Tensor, layer: str):
        grad = torch.Tensor._make_wrapper_subclass(cls, like.shape, dtype=like.dtype, device=like.device)
        grad.layer = layer
        return grad

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        layer = next((a.layer for a in args if isinstance(a, SealedGrad)), "?")
        raise UsageError(
            f"shares: the gradient of layer {layer!r}'s weight stays as shares on S0 and S1 (SGD on the shares, "
            "update=auto), so its .grad cannot be read or changed (clip_grad_norm_, gradient inspection, "
            "zero_grad(set_to_none=False)); use Session(..., update='enclave') (or --update enclave) to get "
            "PyTorch's .grad, at O(weights) enclave cost per step")

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return cls.__torch_function__(func, types, args, kwargs)


def is_sealed(grad) -> bool:
    """Whether ``grad`` is a :class:`SealedGrad` (plain attribute lookup: no tensor op runs)."""
    return getattr(grad, "sealed", False) is True
