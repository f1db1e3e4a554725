"""Tempo's session state for a sealed checkpoint: key epochs, weight keys and tracked projections."""

from __future__ import annotations

import torch

from ...errors import UsageError
from .keys import WeightKey


class Resume:
    """``state_dict`` / ``load_state_dict`` (a mixin of :class:`~.protocol.Tempo`)."""

    def state_dict(self) -> dict:
        """Per layer: key epoch and its start step, the weight key, whether the worker holds a momentum
        buffer, and the check vectors and tracked projections (SECRET: keys; for the sealed checkpoint only).
        With the runtime's CSPRNG state and the plaintext model / optimizer state, a resumed run sends the
        workers exactly the ``W′`` they held and draws exactly the keys the uninterrupted run draws."""
        layers = {}
        for name, layer in self.layers.items():
            if layer.pending is not None:
                raise UsageError("tempo: save the session state after optimizer.step(), not between a backward "
                                 "and its step")
            layers[name] = {
                "epoch": layer.epoch, "epoch_start": layer.epoch_start, "has_buf": layer.has_buf,
                # whether the key epoch covers the current weights (else the next forward starts a new one)
                "current": layer.key is not None and (layer.resident or layer.param._version == layer.encrypted_version),
                "key": None if layer.key is None else layer.key.state(),
                "trackers": {k: v.clone() for k, v in layer.t.items() if torch.is_tensor(v)},
            }
        return {"rotations": self.rotations, "layers": layers}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (after ``prepare`` and the plaintext model / optimizer state).
        A layer whose key epoch covered the saved weights sends ``W′`` (and the buffer) under the restored key
        at its next forward, without a new epoch; one whose weights changed since (enclave-side updates)
        starts its next epoch there, as the uninterrupted run does."""
        saved_layers = state.get("layers") if isinstance(state, dict) else None
        if not isinstance(saved_layers, dict) or set(saved_layers) != set(self.layers):
            raise UsageError("tempo: the checkpoint's session state does not match this model's layers")
        for name, saved in saved_layers.items():
            layer = self.layers[name]
            layer.epoch, layer.epoch_start = int(saved["epoch"]), int(saved["epoch_start"])
            layer.has_buf = bool(saved["has_buf"])
            layer.t = {k: v.clone() for k, v in saved["trackers"].items()}
            if saved["key"] is None:
                layer.key = None
                continue
            layer.key = WeightKey.from_state(saved["key"])
            layer.blocks = self._blocks(layer.m)
            layer.encrypted_version = None  # the loaded plaintext is what the next forward encrypts ...
            layer.restore = bool(saved["current"])  # ... under the restored key, or under a new epoch's
            if "qw" in layer.t:
                self._refresh_check_mats(layer)
        self.rotations = int(state.get("rotations", 0))
