"""Weight residency: W′ (and the momentum buffer) encrypted under a key epoch and held by the workers,
sent, fetched and checked, rotated every ``rotate_every`` steps, and materialized for a read-out."""

from __future__ import annotations

import torch

from ...boundary import Ref, Request, Sent, Tag
from ...threads import parallel_if
from .keys import WeightKey
from .layers import TempoLayer


class Residency:
    """Worker-held weights and key epochs (a mixin of :class:`~.protocol.Tempo`)."""

    def _ensure(self, layer: TempoLayer, weight, training: bool):
        """Encrypt the layer's weights if needed (first use, rotation, or a changed enclave copy)."""
        param = layer.param
        if layer.restore:  # resumed (load_state_dict): the workers hold nothing; W′ under the restored key
            layer.restore = False
            self._send(layer, param.detach(), self._plain_buffer(layer))
        if layer.key is None or (param.numel() > 0 and param._version != layer.encrypted_version):
            self._encrypt(layer, param.detach(), self._plain_buffer(layer), fetch_old=False)
        elif training and layer.resident and self.runtime.step - layer.epoch_start >= self.settings["rotate_every"]:
            w, buf = self._fetch(layer)
            self._encrypt(layer, w, buf, fetch_old=True)
        elif layer.resident and param.numel() > 0:
            self._release(layer)  # a read-out (checkpoint) left a copy in the enclave: drop it

    def _release(self, layer):
        """The enclave no longer needs the plaintext weights: they live (encrypted) on the worker."""
        layer.param.data = torch.empty(0, dtype=layer.param.dtype)
        state = self.optimizer.state.get(layer.param) if self.optimizer is not None else None
        if state:
            state.pop("momentum_buffer", None)
        layer.encrypted_version = layer.param._version

    def _plain_buffer(self, layer):
        if self.optimizer is None or not layer.resident:
            return None
        state = self.optimizer.state.get(layer.param, {})
        buf = state.get("momentum_buffer")
        return None if buf is None or buf.numel() == 0 else buf.detach()

    def _encrypt(self, layer: TempoLayer, w, buf, *, fetch_old: bool):
        """New key epoch for ``layer``: draw keys, send W′ (and the momentum buffer) to the workers.  A large
        pass: on the configured threads even inside a serial step (:func:`blindtrain.threads.parallel_if`)."""
        rt = self.runtime
        with parallel_if(w.numel()):
            with rt.ledger.timed("encode"):
                layer.epoch += 1
                layer.epoch_start = rt.step
                keys = self._stream("weight-key", layer.site.name, layer.epoch)
                layer.key = WeightKey(pn=self._perm(layer.n, keys), pm=self._perm(layer.m, keys),
                                      s=self._signs(layer.n, keys), c=self._pow2(layer.m, keys))
                layer.blocks = self._blocks(layer.m)
                encrypted = self._new_epoch_tracker(layer, w, buf)
            self._send(layer, w, buf, encrypted=encrypted)
        if fetch_old:
            self.rotations += 1

    def _send(self, layer: TempoLayer, w, buf, *, encrypted=None):
        """``W′`` (and the momentum buffer) under the layer's current key to its workers; the enclave then
        drops its plaintext copy (worker-held weights).  ``encrypted``: ``(W′, buffer′)`` if already made."""
        rt = self.runtime
        key = layer.key
        with rt.ledger.timed("encode"):
            if encrypted is not None:
                enc_w, enc_b = encrypted
            else:
                enc_w = self._enc(w.float(), key.pm, key.pn, key.c, key.s)
                enc_b = None if buf is None else self._enc(buf.float(), key.pm, key.pn, key.c, key.s)
        stores, frees = [], []
        for k, (lo, hi) in enumerate(layer.blocks):
            args = {"W": Sent(enc_w[lo:hi].contiguous(), "obfuscated")}
            keep = {"W": f"{layer.h}/w"}
            if enc_b is not None:
                args["M"] = Sent(enc_b[lo:hi].contiguous(), "obfuscated")
                keep["M"] = f"{layer.h}/buf"
            stores.append((k, Request("store", args, Tag(rt.step, layer.site.name, "encrypt"), keep=keep,
                                      return_result=False)))
            if enc_b is None:
                frees.append((k, Request("free", {}, Tag(rt.step, layer.site.name, "encrypt"),
                                         params={"handles": [f"{layer.h}/buf"]}, return_result=False)))
        self._call_each(stores + frees)
        layer.has_buf = enc_b is not None
        rt.ledger.weight_encryptions += 1
        layer.encrypted_version = layer.param._version
        if layer.resident and layer.param.numel() > 0:
            self._release(layer)
        del enc_w, enc_b

    def _fetch(self, layer: TempoLayer):
        """Fetch W′ (and buffer) from the workers, decode, and check them against the projections."""
        rt = self.runtime
        handles = [f"{layer.h}/w"] + ([f"{layer.h}/buf"] if layer.has_buf else [])
        replies = self._call_each([(k, Request("fetch", {"X": Ref(handle)}, Tag(rt.step, layer.site.name, "fetch")))
                                   for handle in handles for k in range(len(layer.blocks))])
        parts = [reply.result for reply in replies]
        parts_w, parts_b = parts[:len(layer.blocks)], parts[len(layer.blocks):]
        key = layer.key
        with rt.ledger.timed("decode_verify"):
            w = self._dec(torch.cat(parts_w), key.pm, key.pn, key.c, key.s)
            buf = self._dec(torch.cat(parts_b), key.pm, key.pn, key.c, key.s) if layer.has_buf else None
            self._verify_held(layer, w, "w", "fetch")
            if buf is not None:
                self._verify_held(layer, buf, "b", "fetch")
        return w, buf

    def materialize(self) -> None:
        """Bring the current plaintext weights (and momentum buffers) back into the enclave model."""
        for layer in self.layers.values():
            if layer.key is None or not layer.resident or layer.param.numel() > 0:
                continue  # never encrypted, enclave-updated, or already in the enclave
            w, buf = self._fetch(layer)
            with torch.no_grad():
                layer.param.data = w.reshape(layer.site.weight_shape).to(layer.param.dtype)
            if buf is not None and self.optimizer is not None:
                self.optimizer.state[layer.param]["momentum_buffer"] = buf.reshape(layer.site.weight_shape)
            layer.encrypted_version = layer.param._version
