"""Checks a training run makes before its first step, so that it fails early (exit 2) and writes nothing.

* :func:`check_outputs`: every output path writable (:func:`blindtrain.files.check_writable`), the key
  store readable or creatable;
* :func:`check_memory`: the model, built on PyTorch's ``meta`` device (shapes, no storage), with its
  gradients and optimizer state fits in the memory available (the estimate is in the message).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from . import models
from .crypto import KeyStore
from .errors import UsageError
from .files import check_writable
from .runtime import EnclaveConfig

if TYPE_CHECKING:
    from .train import TrainConfig

EPC_BYTES = EnclaveConfig().epc_bytes


def check_outputs(config: TrainConfig, keystore: KeyStore) -> None:
    """Before any step: every output path writable, the key store readable or creatable (exit 2)."""
    for flag, path in config.output_paths().items():
        check_writable(path, flag=flag)
    if config.checkpoint or config.resume or config.record_ground_truth:  # each is sealed with the key store
        keystore.check()


def estimated_training_bytes(model: torch.nn.Module, config: TrainConfig) -> int:
    """Bytes the trusted side needs for the weights, their gradients and the optimizer state
    (``model`` may live on the meta device: nothing is allocated)."""
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    states = 2 if config.optimizer == "adam" else (1 if config.momentum > 0 else 0)
    return parameters * (2 + states)


def _available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def check_memory(spec: dict, dataset, config: TrainConfig) -> int:
    """Exit 2 with the estimate when the model cannot fit in memory; built on the meta device first."""
    hidden = tuple(spec["hidden"]) if spec["hidden"] else None
    with torch.device("meta"):
        skeleton = models.build(spec["model"], dataset.input_shape, dataset.num_classes, hidden=hidden,
                                activation=spec["activation"])
    needed = estimated_training_bytes(skeleton, config)
    available = _available_memory_bytes()
    if available is not None and needed > available:
        raise UsageError(f"model too large: weights, gradients and optimizer state need about "
                         f"{needed / 2**30:.1f} GiB, {available / 2**30:.1f} GiB of memory is available "
                         f"(the emulated EPC is {EPC_BYTES / 2**20:.0f} MiB)")
    return needed
