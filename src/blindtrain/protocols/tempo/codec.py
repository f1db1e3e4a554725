"""Tempo's codec: encoding operands under the keys (with the checks' operand side taken from the same read),
decoding results (with their result side), and the worker products of the backward."""

from __future__ import annotations

from ...boundary import Ref, Request, Sent, Tag
from ...errors import UsageError
from ...kernels.gather import gather


class Codec:
    """Encode / decode of forward, input-gradient and weight-gradient operands (a mixin of
    :class:`~.protocol.Tempo`)."""

    @classmethod
    def _enc(cls, x, p0, p1, s0, s1):
        """``(s0 ⊗ s1 · x)[p0][:, p1]`` for a 2-D or 4-D tensor (s0, s1 in *original* order), one pass
        (:func:`~blindtrain.kernels.gather.gather`)."""
        return gather(x, p0, p1, s0[p0], s1[p1]).out

    @classmethod
    def _dec(cls, y, p0, p1, s0, s1):
        """Inverse of :meth:`_enc` given the same keys (x = dec(enc(x))), exact: the scales are powers of two
        and signs, so ``(1/s0) ⊗ (1/s1)`` equals ``1 / (s0 ⊗ s1)`` exactly."""
        return gather(y, cls._inverse(p0), cls._inverse(p1), cls._reciprocal(s0), cls._reciprocal(s1)).out

    # Every check is split in two: its operand side (``X q`` and the tolerance's activation terms) is computed
    # before the worker is called, from the plaintext the enclave has just encoded (still in its caches), and
    # its result side (``Y ρ``) from the result as it is decoded.  The encode and decode passes (gather: one
    # read per row) also take the contractions and norms the checks need; a conv layer's ``X q`` (3×3 taps) is
    # a thin product of its own (kernels.thin).
    def _encode_forward(self, layer, x, pb, cb):
        """``X′ = (c_b X s)[π_b][:, π_n]`` and the forward check's operand side: ``X q`` and the tolerance's
        ``X`` terms (in training also what the weight-gradient projections need from this read of ``X``:
        ``X σ``, the rows' norms, and ``X |σ|`` when X ≥ 0, as after a ReLU)."""
        key = layer.key
        scales = self._epoch_const(key, "s_pn", lambda: key.s[key.pn])
        return layer.encode_forward(x, pb, cb, scales, self.runtime.ledger)

    def _decode_result(self, layer, encoded, batch_key, vectors):
        """Decode a result the worker returned, ``R′ = (c_b R c)[π_b][:, π]`` (``vectors = "rho"``: Y, on the
        outputs (π_m, c); ``"sigma"``: dX, on the inputs (π_n, s)), and take its check's result side.

        Returns ``(R, R V, ‖r_b‖)`` from one pass (``R V`` per row, or per pixel of a conv result; the rows'
        norms, for a linear layer's tolerance, else None)."""
        pb, cb = batch_key
        key = layer.key
        perm, scales = (key.pm, key.c) if vectors == "rho" else (key.pn, key.s)
        g = gather(encoded, self._inverse(pb), self._inverse(perm), self._reciprocal(cb), self._reciprocal(scales),
                   out_vecs=layer.t[vectors + "_t"], out_norm=layer.result_norms)
        return g.out, g.out_dot, g.out_norm

    # The backward of a weighted layer (DESIGN.md): G₁ (the forward's batch permutation, fresh batch scales)
    # gives the input gradient, G₂ (the forward's batch key) the weight gradient.  G₂ is G₁ rescaled by a
    # rank-one factor of powers of two; with worker-held weights both products go in one message per worker,
    # G₁ crosses once and the worker rescales it (see _g2_factors).
    def _encode_grad_input(self, layer, gy, input_shape):
        """``G₁ = (c′_b dY / c)[π_b][:, π_m]``: the forward's batch permutation π_b (a fresh one if this
        layer ran no training forward of this batch size) and fresh scales c′_b; and the input-gradient
        check's operand side: ``dY v`` and the tolerance's ``dY`` terms (and ``dY ρ`` and the norms the
        weight-gradient projections need, from this read of ``dY``).  Returns G₁, its batch key
        ``(π_b, c′_b)`` and the operand side."""
        b = gy.shape[0]
        key = layer.key
        ledger = self.runtime.ledger
        with ledger.timed("encode"):
            forward = layer.batch
            pb = forward[0] if forward is not None and forward[0].numel() == b else self._fresh("perm", b)
            cb = self._fresh("scales", b)
            scales = self._epoch_const(key, "rc_pm", lambda: self._reciprocal(key.c)[key.pm])
        return layer.encode_grad_input(gy, pb, cb, scales, input_shape, ledger)

    def _encode_grad_weight(self, layer, grad_y):
        """``G₂ = (dY c / c_b)[π_b][:, π_m]`` under the forward's batch key ``(π_b, c_b)``, by its own gather."""
        if layer.batch is None:
            raise UsageError(f"tempo: layer {layer.site.name!r}: a weight gradient through a forward run in eval "
                             f"mode; call model.train() before a forward you backpropagate through (tempo's worker "
                             f"keeps a training forward's operand for the weight gradient)")
        pb, cb = layer.batch
        with self.runtime.ledger.timed("encode"):
            return self._enc(grad_y.float(), pb, layer.key.pm, 1.0 / cb, layer.key.c)

    def _g2_factors(self, layer, g1_scales):
        """The rank-one factor of ``G₂ = G₁ ⊙ (rows ⊗ cols)`` when G₁ (batch key ``(π_b, c′_b)``) shares
        the forward's batch permutation: ``rows = (1/(c_b c′_b))[π_b]``, ``cols = (c²)[π_m]`` (powers of two,
        exact).  They cross in the clear: the worker that holds G₁ and G₂ learns the quotient G₂/G₁ = rows ⊗
        cols anyway; what the factors add is how a common factor splits between them, and their entries
        for rows or columns of G₁ that are entirely zero."""
        pb, cb = layer.batch
        key = layer.key
        return (1.0 / (cb * g1_scales))[pb], self._epoch_const(key, "c2_pm", lambda: (key.c ** 2)[key.pm])

    @staticmethod
    def _block(layer, g, lo, hi):
        """The operand worker block ``[lo, hi)`` of the output channels gets: ``g[:, lo:hi]``, as sent."""
        return Sent(g if len(layer.blocks) == 1 else g[:, lo:hi].contiguous(), "obfuscated")

    def _grad_input_product(self, layer, g1, lo, hi, input_shape):
        """Worker block ``[lo, hi)`` of the output channels: ``G₁[:, lo:hi] W′[lo:hi]`` (a partial sum)."""
        product = {"op": "grad_input", "A": self._block(layer, g1, lo, hi), "B": Ref(f"{layer.h}/w")}
        return layer.grad_input_product(product, input_shape)

    def _grad_weight_product(self, layer, g, lo, hi, *, keep, factors=None):
        """Worker block ``[lo, hi)``: ``G₂[:, lo:hi]ᵀ X′`` — already in the weight's key; ``keep``: it stays
        on the worker for the SGD step, under that handle.  ``g``: the block's G₂ operand (see :meth:`_block`), or with
        ``factors = (rows, cols)`` its G₁ operand, which the worker rescales to G₂ (see :meth:`_g2_factors`)."""
        product = {"op": "grad_weight", "keep": keep or None}
        if factors is not None:
            rows, cols = factors
            product["scale"] = {"operand": layer.scaled_operand, "rows": Sent(rows, "public"),
                                "cols": Sent(cols[lo:hi].contiguous(), "public")}
        return layer.grad_weight_product(product, g, lo, hi)

    def _request(self, layer, product):
        """One product as a plain ``bilinear`` request."""
        extra = {"keep_result": product["keep"], "return_result": False} if product.get("keep") else {}
        return Request("bilinear", {"A": product["A"], "B": product["B"]},
                       Tag(self.runtime.step, layer.site.name, product["op"]),
                       params={"fn": product["fn"], **product["params"]}, **extra)
