"""Synthetic worker views with a known secret, and the knowledge/ground truth to score them."""

from __future__ import annotations

import numpy as np
import torch

from blindtrain.attacks.recovery import Message
from blindtrain.attacks.view import load_knowledge
from blindtrain.groundtruth import GroundTruth

P = 2**24 - 3
CONFIG = {"hidden": [32], "activation": "relu", "dataset": "digits", "seed": 0, "lr": 0.05, "momentum": 0.9,
          "weight_decay": 0.0, "optimizer": "sgd", "loss": "ce", "batch_size": 64}


def knowledge(protocol: str = "otp"):
    return load_knowledge({"protocol": protocol, "model": "mlp", "config": CONFIG})[0]


def message(index, step, layer, op, operand, kind, array, modulus=None, role="main") -> Message:
    array = np.asarray(array, dtype=np.float32)
    return Message(index=index, key=f"m{index:06d}", step=step, layer=layer, op=op, operand=operand, kind=kind,
                   dtype=str(array.dtype), modulus=modulus, worker=f"{role}0", role=role, array=array)


def truth(batches, *, model_state=None, gradients=None, orders=None) -> GroundTruth:
    return GroundTruth(model_spec={"model": "mlp", "hidden": [32], "activation": "relu", "dataset": "digits"},
                       batches=batches, orders=orders or {}, gradients=gradients or {},
                       model_state=model_state or {}, extra={})


def secret_batches(known, steps=30, b=64, seed=1):
    """Batches of held-out-like digits (the public images stand in; they are the secret here)."""
    rng = np.random.default_rng(seed)
    out = {}
    for step in range(steps):
        index = rng.choice(len(known.public_y), size=b, replace=False)
        out[step] = (known.public_x[index].copy(), known.public_y[index].copy())
    return out


def output_gradient(y, classes=10, seed=0):
    """Cross-entropy's logits gradient (softmax − onehot) / b for random logits."""
    logits = torch.from_numpy(np.random.default_rng(seed).normal(size=(len(y), classes)).astype(np.float32))
    logits.requires_grad_(True)
    torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).backward()
    return logits.grad.numpy()


def uniform(shape, seed):
    return np.random.default_rng(seed).integers(0, P, size=shape).astype(np.float32)
