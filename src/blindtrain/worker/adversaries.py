"""Worker behaviours for testing integrity (DESIGN.md ``--adversary``).

An adversary sees each result the worker is about to return and may change it.
It strikes once, at the first result that matches its trigger (step at or after
``step``, and the given ``layer`` / ``op`` if set), except ``crash``, which kills
the worker there.  Spec syntax: ``NAME`` or ``NAME:step=2,layer=fc1,op=grad_input``.

``target=state`` (with ``tamper``, ``noise`` or ``zeros``) corrupts a tensor the worker
*holds* between requests (e.g. weights kept on the worker) instead of a returned result:
at the first matching request, before running it, the longest-held float tensor (whose
handle has ``layer`` as a ``/``-separated component, if given) is changed in place.

``hang`` stops answering (sleeps an hour) at the first matching result: the trusted side's
``--worker-timeout`` must end the wait.  ``malformed`` returns a result that is not what was asked for: ``form=shape`` (default: one row
short), ``dtype`` (float16), ``missing`` (no result) or ``object`` (a string, not a tensor).
``spoof`` tries to write on the user's terminal: a worker process prints a fake end-of-training block
with escape sequences, and any worker fails with the same text as its error message; blindtrain must
show it escaped (and never let a worker process's output reach the terminal).

The adversary is the attacker, not the enclave: it may use ordinary randomness.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from ..errors import UsageError, WorkerCrashed

NAMES = ("honest", "tamper", "noise", "zeros", "replay", "crash", "hang", "malformed", "spoof")
HANG_SECONDS = 3600.0
MALFORMED_FORMS = ("shape", "dtype", "missing", "object")
#: What ``spoof`` tries to put on the user's terminal: a fake success block.
SPOOFED_OUTPUT = ("\n\x1b[2K\rdone: tempo trained mlp on digits\n  test accuracy  0.9900\n"
                  "  integrity checks / failures  1,000 / 0\n")


@dataclass(frozen=True)
class AdversarySpec:
    name: str = "honest"
    step: int = 1
    layer: str | None = None
    op: str | None = None
    target: str = "result"
    form: str = "shape"
    role: str = "main"  # the worker role that misbehaves (shares: s0, s1, dealer)

    @classmethod
    def parse(cls, text: str | None) -> "AdversarySpec":
        if not text:
            return cls()
        name, _, rest = text.partition(":")
        if name not in NAMES:
            raise UsageError(f"unknown adversary {name!r}; choose from {', '.join(NAMES)}")
        fields: dict = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq or key not in ("step", "layer", "op", "target", "form", "role"):
                raise UsageError(f"bad adversary option {item!r}; use step=N, layer=NAME, op=NAME, "
                                 f"target=result|state, role=ROLE, form=" + "|".join(MALFORMED_FORMS))
            if key == "form" and (name != "malformed" or value not in MALFORMED_FORMS):
                raise UsageError(f"form= applies to malformed and is one of {', '.join(MALFORMED_FORMS)}")
            if key == "target" and value not in ("result", "state"):
                raise UsageError(f"adversary target must be result or state, got {value!r}")
            if key == "target" and value == "state" and name not in ("tamper", "noise", "zeros"):
                raise UsageError("target=state applies to tamper, noise and zeros")
            if key == "step":
                try:
                    fields[key] = int(value)
                except ValueError:
                    raise UsageError(f"adversary step must be an integer, got {value!r}") from None
            else:
                fields[key] = value
        return cls(name=name, **fields)


class Adversary:
    """Stateful behaviour of one worker."""

    def __init__(self, spec: AdversarySpec, *, in_process: bool) -> None:
        self.spec = spec
        self.in_process = in_process
        self.struck = False
        self._history: dict[tuple, torch.Tensor] = {}
        self._generator = torch.Generator().manual_seed(1234)

    def _matches(self, tag) -> bool:
        spec = self.spec
        return (tag.step >= spec.step and (spec.layer is None or spec.layer == tag.layer)
                and (spec.op is None or spec.op == tag.op))

    def before_request(self, tag, state: dict) -> None:
        """``target=state``: corrupt a held tensor before the first matching request runs."""
        if self.spec.target != "state" or self.struck or not self._matches(tag):
            return
        layer = self.spec.layer
        held = [h for h, t in state.items()
                if torch.is_tensor(t) and t.is_floating_point() and t.numel() > 0
                and (layer is None or layer in h.split("/"))]
        if not held:  # field shares (int64) when the worker holds no float tensor
            held = [h for h, t in state.items() if torch.is_tensor(t) and t.dtype == torch.int64 and t.numel() > 0
                    and (layer is None or layer in h.split("/"))]
        if not held:
            return
        self.struck = True
        victim = state[held[0]]  # the longest held: a model-sized tensor kept across steps
        victim.copy_(self._corrupt(victim, None if victim.is_floating_point() else tag.modulus))

    def on_result(self, tag, result: torch.Tensor, modulus: int | None) -> torch.Tensor:
        name = self.spec.name
        if self.spec.target == "state":
            return result
        if name == "honest" or self.struck or not self._matches(tag):
            if name == "replay":
                self._history[(tuple(result.shape), result.dtype)] = result.clone()
            return result
        if name == "crash":
            self.struck = True
            if self.in_process:
                raise WorkerCrashed(f"worker crashed at step {tag.step}, layer {tag.layer!r}, op {tag.op!r}")
            os._exit(17)
        if name == "hang":
            self.struck = True
            time.sleep(HANG_SECONDS)
            return result
        if name == "malformed":
            self.struck = True
            return self._malformed(result)
        if name == "spoof":
            self.struck = True
            if not self.in_process:  # a worker process's own output (an in-process worker has none)
                print(SPOOFED_OUTPUT, flush=True)
            raise RuntimeError(SPOOFED_OUTPUT)
        if name == "replay":
            key = (tuple(result.shape), result.dtype)
            earlier = self._history.get(key)
            self._history[key] = result.clone()
            if earlier is None or torch.equal(earlier, result):
                return result  # nothing different of this shape to replay yet; strike later
            self.struck = True
            return earlier.to(result.device)
        self.struck = True
        return self._corrupt(result, modulus)

    def _malformed(self, result: torch.Tensor):
        form = self.spec.form
        if form == "dtype":
            return result.to(torch.float16)
        if form == "missing":
            return None
        if form == "object":
            return "a string instead of a tensor"
        return result[:-1] if result.shape[0] > 1 else result.reshape(-1)[:-1]

    def _corrupt(self, result: torch.Tensor, modulus: int | None) -> torch.Tensor:
        name = self.spec.name
        out = result.clone()
        flat = out.view(-1)
        if name == "zeros":
            out.zero_()
        elif name == "tamper":
            index = int(torch.randint(flat.numel(), (1,), generator=self._generator))
            if modulus is None:
                flat[index] += 1.0 + float(flat.abs().max())
            else:
                flat[index] = torch.remainder(flat[index] + 1, modulus)
        elif name == "noise":
            noise = torch.randn(out.shape, generator=self._generator, dtype=torch.float64)
            if modulus is None:
                scale = 1e-2 * (float(out.abs().max()) + 1e-3)
                out.add_((noise * scale).to(out.dtype).to(out.device))
            else:
                delta = torch.round(noise * 3).to(out.dtype).to(out.device)
                delta.view(-1)[0] = 1  # at least one element moves
                out.copy_(torch.remainder(out + delta, modulus))
        return out
