"""Tempo's report: per-layer privacy (key entropy and what the worker's view fixes), the summary for the
metrics, and the cost model of a steady-state step."""

from __future__ import annotations

import math

import torch

from ...kernels.gather import backend as gather_backend


#: What ``--fuse-activations`` verifies (the summary's ``fused_integrity``).
FUSED_INTEGRITY = (
    "the forward product of a fused layer is Freivalds-checked like every forward result (miss probability <= "
    "(tol/|error|)^k per row for any change of the result: zeros, scaling, tampering, noise, replay); bias, "
    "ReLU / LeakyReLU and max-pool run in the enclave on the verified product, because a worker-applied ReLU or "
    "max-pool is not invertible and cannot be checked against the operands more cheaply than applying it")


def _log2_factorial(n: int) -> float:
    return math.lgamma(n + 1) / math.log(2)


class Report:
    """Privacy, summary and cost model (a mixin of :class:`~.protocol.Tempo`)."""

    def privacy(self) -> dict:
        """Per-layer key entropy and what the worker's view fixes of it (bits)."""
        e = self.settings["scale_range"]
        scale_bits = math.log2(2 * e + 1)
        out = {}
        first = next(iter(self.layers), None)
        for name, layer in self.layers.items():
            perm = _log2_factorial(layer.n) + _log2_factorial(layer.m)
            signs = float(layer.n)
            scales = layer.m * scale_bits
            out[name] = {
                "key_entropy_bits": perm + signs + scales,
                "permutation_bits": perm, "sign_bits": signs, "scale_bits": scales,
                "fixed_by_view_bits": scales,
                "effective_bits": perm + signs,
                "fixed_by_view": "output scales (row-norm ratios of W′ against the known init distribution, and "
                                 "the factor c² that rescales G₁ into G₂, sent in the clear); "
                                 "the multiset of |W| per row up to its scale; shapes",
                "batch_key_bits_per_step": (_log2_factorial(layer.last_batch) + layer.last_batch * scale_bits)
                if layer.last_batch else None,
            }
            if name == first:
                out[name]["model_input"] = layer.input_privacy
        return out

    def summary(self) -> dict:
        layers = {}
        for name, layer in self.layers.items():
            held = [v for v in layer.t.values() if torch.is_tensor(v)]
            held += layer.key.tensors() if layer.key is not None else []
            state = sum(v.numel() * v.element_size() for v in held)
            plain = layer.param.numel() * layer.param.element_size()
            layers[name] = {"epoch": layer.epoch, "resident_on_worker": layer.resident,
                            "enclave_state_bytes": state, "enclave_plaintext_weight_bytes": plain,
                            "weight_bytes": layer.m * layer.n * layer.ksz * 4}
        self.runtime.ledger.integrity_soundness_bits = self.detection()["soundness_bits_at_that_error"]
        return {"options": dict(self.settings),
                "rotate_every": self.settings["rotate_every"], "rotations": self.rotations,
                "fused_activations": self.settings["fuse_activations"],
                "fused_layers": list(getattr(self, "fused", [])),
                "fused_integrity": FUSED_INTEGRITY if self.settings["fuse_activations"] else None,
                "optimizer_update": "worker (SGD on W′ in place)" if any(l.resident for l in self.layers.values())
                else "enclave (decode gradient, re-encrypt each step)",
                "encode_decode_pass": gather_backend(),
                "integrity": self.detection(), "tolerance": self.tolerance_report(),
                "privacy": self.privacy(), "layers": layers}

    # -------------------------------------------------------------- cost model ------
    def cost_model(self, ops, *, batch, input_numel, classes, training=True):
        """Bytes and messages of one steady-state step (between key rotations), as the ledger counts them.

        A key rotation adds, per weighted layer, once every ``rotate_every`` steps: W′ (and the momentum
        buffer) fetched and sent again (``2 × weight bytes`` each way in total), ``2N`` messages
        (``3N`` with a buffer).  With a non-SGD optimizer (enclave-side update) the weight gradient comes back
        and W′ is re-sent every step; that is included when no optimizer state says otherwise.
        """
        from ...costs import FLOAT32, StepCost

        workers = self.settings["workers"]
        k = self.settings["check_vectors"]
        resident = all(layer.resident for layer in self.layers.values()) if self.layers else \
            self.settings["update"] != "enclave"
        cost = StepCost(workers=workers, trust="worker sees obfuscated (permuted, signed, scaled) operands")
        used = ops if training else [op for op in ops if op.op == "forward"]
        messages = sgd_workers = 0
        with_grad_input = {op.layer for op in used if op.op == "grad_input" and op.kind != "matmul"}
        for op in used:
            a, b, out = op.numel("A"), op.numel("B"), op.numel("out")
            if op.kind == "matmul":
                n = min(workers, op.a_shape[-2])
                cost.bytes_to_worker += (a + n * b) * FLOAT32
                cost.bytes_from_worker += out * FLOAT32
                cost.worker_flops += op.flops
                cost.enclave_elementwise += 2 * (a + b + out)
                cost.enclave_flops += 2 * k * (a + b + 2 * out)
                messages += n
                continue
            m = op.b_shape[0] if op.op != "grad_weight" else op.out_shape[0]
            if op.kind == "linear" and op.op == "forward":
                m = op.b_shape[1]
            elif op.kind == "linear" and op.op == "grad_input":
                m = op.b_shape[0]
            elif op.kind == "linear":
                m = op.out_shape[1]
            n = min(workers, m)
            cost.worker_flops += op.flops
            if op.op == "forward":
                cost.bytes_to_worker += n * a * FLOAT32
                cost.bytes_from_worker += out * FLOAT32
                cost.enclave_elementwise += 3 * (a + out)
                cost.enclave_flops += 4 * k * (a + out)
                messages += n
            elif op.op == "grad_input":
                cost.bytes_to_worker += a * FLOAT32
                cost.bytes_from_worker += n * out * FLOAT32
                cost.enclave_elementwise += 3 * (a + out)
                cost.enclave_flops += 4 * k * (a + out)
                messages += n
            else:
                if resident and op.layer in with_grad_input:  # G₁ crossed already: its rank-one rescaling to G₂
                    cost.bytes_to_worker += (n * op.b_shape[0] + op.b_shape[1]) * FLOAT32
                else:
                    cost.bytes_to_worker += b * FLOAT32
                    cost.enclave_elementwise += 3 * b
                cost.enclave_flops += 8 * k * (a + b)
                if resident:
                    if op.layer not in with_grad_input:
                        messages += n  # the gradient, kept on the worker (else it rides with grad_input's)
                    sgd_workers = max(sgd_workers, n)  # then one SGD message per worker for all layers
                else:
                    cost.bytes_from_worker += out * FLOAT32
                    cost.bytes_to_worker += out * FLOAT32  # re-encryption of the updated weights
                    messages += 3 * n  # gradient back, store, free (no momentum buffer on the worker)
        cost.round_trips = messages + sgd_workers
        cost.notes = [f"steady state between key rotations (every {self.settings['rotate_every']} steps); a rotation "
                      "adds 2x the layer's weight bytes (x2 with a momentum buffer), fetched then re-sent",
                      "no weight-sized tensor crosses in a steady-state step with SGD (weights stay on the worker)",
                      f"enclave per step: encode/decode passes and Freivalds checks with k={k} vectors, "
                      "O(activations), independent of the number of weights"]
        return cost
