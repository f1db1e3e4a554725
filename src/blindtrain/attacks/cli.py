"""``blindtrain attack``: load a worker view, run the attacks, score them if ground truth is given, print."""

from __future__ import annotations

import json
import shlex
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ..errors import UsageError
from . import registry
from .lab import AttackRun, best, run_attacks, score_runs
from .score import finite
from .view import load_knowledge, load_messages, read_metrics


def parse_targets(text: str) -> tuple[str, ...]:
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in targets if t not in registry.TARGETS]
    if unknown or not targets:
        raise UsageError(f"--attacks takes a comma-separated subset of {', '.join(registry.TARGETS)}; "
                         f"got {text!r}")
    return targets


def attack_view(*, transcript: str, roles: Sequence[str] = ("main",), metrics: str | dict,
                ground_truth: str | None = None, keystore: str | None = None,
                targets: tuple[str, ...] = registry.TARGETS, data_dir: str | None = None,
                command: Sequence[str] | None = None) -> dict:
    """The privacy lab on one worker view; returns the report as a JSON-ready dict."""
    roles = tuple(dict.fromkeys(roles))
    metrics_dict = metrics if isinstance(metrics, dict) else read_metrics(metrics)
    if ground_truth is not None and not Path(ground_truth).is_file():
        raise UsageError(f"--ground-truth {ground_truth} does not exist")
    messages = load_messages(transcript, roles)
    knowledge, held_out = load_knowledge(metrics_dict, data_dir=data_dir)
    if command is None:
        command = ["blindtrain", "attack", "--transcript", str(transcript), *sum((["--role", r] for r in roles), []),
                   "--metrics", "METRICS" if isinstance(metrics, dict) else str(metrics)]
        if ground_truth:
            command += ["--ground-truth", str(ground_truth)]
        if keystore:
            command += ["--keystore", str(keystore)]
        if tuple(targets) != registry.TARGETS:
            command += ["--attacks", ",".join(targets)]
    report = {
        "command": shlex.join(command), "transcript": str(transcript), "roles": list(roles),
        "protocol": knowledge.protocol, "messages": len(messages),
        "kinds": dict(sorted(Counter(m.kind for m in messages).items())),
        "knowledge": {"roles": f"transcript(s) of role(s) {', '.join(roles)}: {len(messages)} messages",
                      "architecture": knowledge.model_spec, "input_shape": list(knowledge.input_shape),
                      "classes": knowledge.num_classes, "hyper_parameters": knowledge.hyper,
                      "public_split": knowledge.public_split},
        "held_out_split": held_out.description, "scored": ground_truth is not None, "attacks": [], "best": {},
    }
    if not messages:
        report["nothing_to_attack"] = f"protocol {knowledge.protocol}: nothing crossed to role(s) {', '.join(roles)}"
        return report
    runs = run_attacks(messages, knowledge, targets=targets, sealed=[ground_truth] if ground_truth else [])
    if ground_truth is not None:
        from ..crypto import KeyStore
        from ..groundtruth import load as load_truth

        truth = load_truth(ground_truth, keystore=KeyStore(keystore))
        score_runs(runs, messages, knowledge, truth, held_out)
        report["best"] = best(runs)
    report["attacks"] = [_run_dict(run) for run in runs]
    return finite(report)


def _run_dict(run: AttackRun) -> dict:
    return {"attack": run.name, "targets": list(run.targets), "seconds": round(run.seconds, 3),
            "skipped": run.skipped, "error": run.error,
            "notes": list(run.recovery.notes) if run.recovery else [], "recovered": run.recovered(),
            "scores": run.scores}


# ------------------------------------------------------------------------------------------ printing ----
def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


_SHOWN = {
    "labels": ("accuracy", "accuracy_up_to_permutation", "chance", "count_error_per_row", "steps_fully_recovered",
               "steps", "rows"),
    "inputs": ("exact_fraction", "psnr_median", "ssim_mean", "classifier_accuracy_reconstructed",
               "classifier_accuracy_true", "chance_psnr_median", "chance_ssim_mean", "chance_classifier_accuracy",
               "rows"),
    "model": ("test_accuracy", "agreement", "victim_test_accuracy", "chance_test_accuracy", "chance_agreement",
              "max_abs_weight_error", "held_out_samples"),
    "gradients": ("cosine_mean", "relative_error_median", "chance_cosine_mean", "tensors", "note"),
}


def format_report(report: dict) -> str:
    lines = [f"privacy lab: protocol {report['protocol']}, role(s) {', '.join(report['roles'])}, "
             f"{report['messages']} messages",
             f"  attacker knows: {report['knowledge']['roles']}; the architecture "
             f"{report['knowledge']['architecture']}; the hyper-parameters; public split: "
             f"{report['knowledge']['public_split']}",
             f"  command: {report['command']}"]
    if report.get("nothing_to_attack"):
        return "\n".join(lines + [f"  nothing to attack: {report['nothing_to_attack']}"])
    if not report["scored"]:
        lines.append("  no --ground-truth: what was recovered is listed, not scored")
    for run in report["attacks"]:
        head = f"- {run['attack']} [{', '.join(run['targets'])}]"
        if run["skipped"]:
            lines.append(f"{head}: skipped: {run['skipped']}")
            continue
        if run["error"]:
            lines.append(f"{head}: FAILED: {run['error']}")
            continue
        lines.append(f"{head} ({run['seconds']:.2f} s)")
        for note in run["notes"]:
            lines.append(f"    how: {note}")
        if not report["scored"]:
            for target, what in run["recovered"].items():
                lines.append(f"    recovered {target}: {what}")
            if not run["recovered"]:
                lines.append("    recovered nothing")
            continue
        if not run["scores"]:
            lines.append("    claimed nothing")
        for target, figures in run["scores"].items():
            shown = ", ".join(f"{k} {_fmt(figures[k])}" for k in _SHOWN[target] if k in figures)
            lines.append(f"    {target}: {shown}")
    if report["best"]:
        lines.append("best per target (success vs chance):")
        for target, headline in report["best"].items():
            lines.append(f"  {target}: {headline['metric']} {_fmt(headline['value'])} "
                         f"(chance {_fmt(headline['chance'])}) by {headline['attack']}")
    return "\n".join(lines)


def run_attack(*, transcript, roles, metrics, ground_truth, keystore, targets, data_dir, json_out, command,
               echo=print) -> dict:
    """The ``blindtrain attack`` command."""
    if json_out is not None and Path(json_out).is_dir():
        raise UsageError(f"--json {json_out} is a directory; give a file path")
    report = attack_view(transcript=transcript, roles=roles, metrics=metrics, ground_truth=ground_truth,
                         keystore=keystore, targets=parse_targets(targets), data_dir=data_dir, command=command)
    echo(format_report(report))
    if json_out is not None:
        from ..files import atomic_write

        atomic_write(json_out, (json.dumps(report, indent=2, default=str) + "\n").encode())
    return report
