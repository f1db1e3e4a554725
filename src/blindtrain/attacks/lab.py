"""Run the planned attacks on a worker view, then (separately) score them against the ground truth.

Attacks get ``(messages, knowledge)`` and nothing else.  While they run, the ground-truth file is sealed off:
an audit hook (:func:`sys.addaudithook`) refuses every ``open`` of it and the run fails with
:class:`GroundTruthRead` — an attack that reads ground truth is a bug, never a result.  The ground truth is
unsealed only after every attack has returned.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import BlindtrainError
from . import registry
from .frame import first_layer
from .recovery import Knowledge, Message, Recovery

_forbidden: set[str] = set()
_violations: list[str] = []
_hooked = False


class GroundTruthRead(BlindtrainError):
    """An attack opened the ground truth (exit 1: a bug in the attack, not a finding)."""

    exit_code = 1


def _audit(event: str, args: tuple) -> None:
    if event != "open" or not _forbidden or not args:
        return
    path = args[0]
    if isinstance(path, int) or path is None:
        return
    try:
        resolved = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return
    if resolved in _forbidden:
        _violations.append(resolved)
        raise GroundTruthRead(f"an attack opened the ground truth {resolved}: attacks may read only the transcript")


@contextlib.contextmanager
def sealed_off(paths: Sequence[str | os.PathLike]):
    """Within the block, opening any of ``paths`` raises :class:`GroundTruthRead` (and is remembered, so an
    attack that swallows the error still fails the run)."""
    global _hooked
    if not _hooked:
        sys.addaudithook(_audit)
        _hooked = True
    added = {os.path.realpath(os.fspath(p)) for p in paths} - _forbidden
    _forbidden.update(added)
    before = len(_violations)
    try:
        yield
    finally:
        _forbidden.difference_update(added)
    if len(_violations) > before:
        raise GroundTruthRead(f"an attack opened the ground truth {_violations[-1]}: attacks may read only "
                              "the transcript")


@dataclass
class AttackRun:
    """One attack's outcome: its recovery, its scores (with ground truth), or why it did not run."""

    name: str
    targets: tuple[str, ...]
    recovery: Recovery | None = None
    seconds: float = 0.0
    skipped: str | None = None
    error: str | None = None
    scores: dict = field(default_factory=dict)

    def recovered(self) -> dict:
        """What the recovery claims, in counts (printed when there is no ground truth to score it)."""
        r = self.recovery
        if r is None:
            return {}
        out = {}
        if r.labels and "labels" in self.targets:
            out["labels"] = f"{sum(len(v) for v in r.labels.values())} rows over {len(r.labels)} steps" + \
                            (" (true class indices)" if r.labels_resolved else " (up to a class permutation)")
        if r.label_counts and "labels" in self.targets:
            out["label_counts"] = f"{len(r.label_counts)} batches"
        if r.inputs and "inputs" in self.targets:
            out["inputs"] = f"{sum(len(v) for v in r.inputs.values())} rows over {len(r.inputs)} steps"
        if r.model_state is not None and "model" in self.targets:
            out["model"] = f"{len(r.model_state)} tensors"
        if r.gradients and "gradients" in self.targets:
            out["gradients"] = f"{sum(len(v) for v in r.gradients.values())} tensors over {len(r.gradients)} steps"
        return out


def run_attacks(messages: Sequence[Message], knowledge: Knowledge, *, targets: tuple[str, ...] = registry.TARGETS,
                sealed: Sequence[str | os.PathLike] = ()) -> list[AttackRun]:
    """Run every attack :func:`registry.plan` picks for the protocol, with ``sealed`` files off limits."""
    runs = []
    for planned in registry.plan(knowledge.protocol, targets):
        run = AttackRun(planned.name, planned.targets)
        try:
            attack = registry.resolve(planned.name)
        except registry.AttackMissing as exc:
            run.skipped = f"not in this tree ({exc})"
            runs.append(run)
            continue
        start = time.perf_counter()
        try:
            with sealed_off(sealed):
                run.recovery = attack(messages, knowledge)
        except GroundTruthRead:
            raise
        except Exception as exc:  # an attack's own bug is reported beside the others, never silently
            run.error = f"{type(exc).__name__}: {exc}"
        run.seconds = time.perf_counter() - start
        runs.append(run)
    return runs


def score_runs(runs: Sequence[AttackRun], messages: Sequence[Message], knowledge: Knowledge, truth, held_out) -> None:
    """Fill each run's ``scores`` from the ground truth (the scorer's side; attacks have returned)."""
    from .score import score

    layer = first_layer(messages)
    for run in runs:
        if run.recovery is not None:
            run.scores = score(run.recovery, run.targets, truth=truth, knowledge=knowledge, held_out=held_out,
                               frame_layer=layer)


def best(runs: Sequence[AttackRun]) -> dict:
    """target -> the strongest attack's headline ``{attack, metric, value, chance}``."""
    out: dict = {}
    for run in runs:
        for target, figures in run.scores.items():
            headline = figures.get("headline") or {}
            value = headline.get("value")
            if value is None:
                continue
            lower_is_better = headline.get("metric", "").endswith("error_per_row")
            current = out.get(target)
            better = current is None or (value < current["value"] if lower_is_better else value > current["value"])
            if better:
                out[target] = {"attack": run.name, **headline}
    return out
