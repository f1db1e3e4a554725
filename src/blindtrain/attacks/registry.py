"""Which attacks face which protocol.

Every protocol faces the generic attacks (:mod:`blindtrain.attacks.generic`, the baseline); protocols with
a known structure also face the attacks written for it.  Attacks are named ``module:function`` and imported
by name when run, so a protocol-specific module can live in its own file (and be absent: it is then skipped
with a note, never silently).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

TARGETS = ("labels", "inputs", "model", "gradients")

#: the simple attacks, one per target, run on every protocol
GENERIC = {
    "labels": "blindtrain.attacks.generic:labels",
    "inputs": "blindtrain.attacks.generic:inputs",
    "model": "blindtrain.attacks.generic:model",
    "gradients": "blindtrain.attacks.generic:gradients",
}

#: protocol -> attacks written for it (each may recover any of the targets)
SPECIFIC: dict[str, tuple[str, ...]] = {
    "tempo": ("blindtrain.attacks.tempo:recover",),
    "otp": ("blindtrain.attacks.visible:recover",),
    "slalom": ("blindtrain.attacks.visible:recover",),
}


@dataclass(frozen=True)
class PlannedAttack:
    name: str                 #: ``module:function``
    targets: tuple[str, ...]  #: what the scorer scores of its recovery


def plan(protocol: str, targets: tuple[str, ...] = TARGETS) -> list[PlannedAttack]:
    """The attacks to run against ``protocol`` for ``targets``: the generic ones, then the specific ones."""
    planned = [PlannedAttack(GENERIC[t], (t,)) for t in targets]
    planned += [PlannedAttack(name, targets) for name in SPECIFIC.get(protocol, ())]
    return planned


class AttackMissing(Exception):
    """A planned attack's module is not installed in this tree."""


def resolve(name: str) -> Callable:
    """The function ``module:function`` names (:class:`AttackMissing` if its module does not exist)."""
    module_name, _, function = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise AttackMissing(f"{name}: module {module_name} is not in this tree") from None
        raise
    try:
        return getattr(module, function)
    except AttributeError:
        raise AttackMissing(f"{name}: {module_name} has no {function}()") from None
