"""Bench presets: which models, sizes and batch sizes a ``blindtrain bench`` run covers.

A preset is a list of :class:`ModelSpec` (a model at one size, with the batch sizes to
run it at) plus the step counts.  ``--models`` picks specs by label (``mlp-1024``) or by
model name (``mlp`` = every mlp width of the preset); ``--batch-sizes`` overrides the
batch sizes of every selected spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import UsageError
from ..models import MODELS


@dataclass(frozen=True)
class ModelSpec:
    """One model at one size.

    Attributes:
        label: unique name in the report (``mlp-1024``, ``resnet18``).
        model: the :func:`blindtrain.models.build` name.
        kwargs: extra build arguments (``hidden``, ``depth``, ``dim`` ...).
        batch_sizes: training batch sizes to run.
        dataset: ``synthetic`` (CIFAR-shaped) or ``digits``.
        evaluate: measure test accuracy after the bench's steps (off where a few steps of a big
            model say nothing and the evaluation would cost more than the timed steps).
    """

    label: str
    model: str
    kwargs: dict = field(default_factory=dict)
    batch_sizes: tuple[int, ...] = (64,)
    dataset: str = "synthetic"
    evaluate: bool = True


@dataclass(frozen=True)
class Preset:
    """A bench configuration.

    Attributes:
        warmup: untimed steps per cell before the timed ones.
        steps: timed steps per cell (the median, min and max are reported).
        eval_samples: test samples used for the accuracy after the bench's steps (0: none).
        inference: which protocols are also benched on inference batches: ``"needed"`` (the
            baselines plain and enclave plus every inference-only protocol, so their ratios
            have a denominator), ``"all"`` or ``"none"`` (inference-only protocols still are).
        lr: SGD learning rate of the bench's steps.
        cell_budget_s: if set, a cell whose warm-up step shows it would take longer times fewer steps
            (at least 2), so a slow protocol cannot blow the preset's time budget.
    """

    name: str
    models: tuple[ModelSpec, ...]
    warmup: int = 1
    steps: int = 5
    eval_samples: int = 256
    inference: str = "needed"
    lr: float = 0.01
    description: str = ""
    cell_budget_s: float | None = None  # cap a cell's timed steps at ~this many seconds (>= 2 steps)


def _mlp(width: int, batches=(64,)) -> ModelSpec:
    return ModelSpec(f"mlp-{width}", "mlp", {"hidden": (width, width)}, tuple(batches))


#: Measured on a shared 2-core CPU with all five protocols (plain, enclave, otp, tempo, slalom):
#: 9 minutes at batch 8 for resnet18/vit-tiny under load, hence batch 4 there; otp/slalom/tempo
#: steps on vit-tiny take 10-30 s each on such a machine, and the cell budget cuts them to 2 steps.
QUICK = Preset(
    name="quick",
    description="2-core CPU, under 10 minutes for five protocols: mlp widths 256-4096, lenet, "
                "resnet18 and vit-tiny at small batches",
    models=(
        _mlp(256), _mlp(1024), _mlp(4096),
        ModelSpec("lenet", "lenet", {}, (64,)),
        ModelSpec("resnet18", "resnet18", {}, (4,), evaluate=False),
        ModelSpec("vit-tiny", "vit-tiny", {}, (4,), evaluate=False),
    ),
    warmup=1, steps=4, eval_samples=128, inference="needed", cell_budget_s=12.0,
)

FULL = Preset(
    name="full",
    description="GPU machine: mlp widths 256-8192, lenet, resnet18, resnet50, vit-tiny, larger batches",
    models=(
        _mlp(256, (64, 256)), _mlp(1024, (64, 256)), _mlp(4096, (64, 256)), _mlp(8192, (64, 256)),
        ModelSpec("lenet", "lenet", {}, (64, 256)),
        ModelSpec("resnet18", "resnet18", {}, (32, 128)),
        ModelSpec("resnet50", "resnet50", {}, (32, 128)),
        ModelSpec("vit-tiny", "vit-tiny", {}, (32, 128)),
    ),
    warmup=2, steps=10, eval_samples=512, inference="all", cell_budget_s=60.0,
)

#: seconds-long preset for tests and smoke runs (8x8 digits, tiny models)
TINY = Preset(
    name="tiny",
    description="smoke test: tiny mlps and a 2-block vit on 8x8 digits, seconds on a CPU",
    models=(
        ModelSpec("mlp-16", "mlp", {"hidden": (16,)}, (16,), "digits"),
        ModelSpec("mlp-64", "mlp", {"hidden": (64, 64)}, (16,), "digits"),
        ModelSpec("vit-micro", "vit-tiny", {"depth": 1, "dim": 24, "heads": 2, "patch": 4}, (8,), "digits"),
    ),
    warmup=1, steps=2, eval_samples=64, inference="needed",
)

PRESETS = {p.name: p for p in (QUICK, FULL, TINY)}


def get(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None


def _parse_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    return [v.strip() for v in value if v and v.strip()]


def parse_batch_sizes(value) -> tuple[int, ...] | None:
    items = _parse_list(value)
    if not items:
        return None
    try:
        sizes = tuple(int(v) for v in items)
    except ValueError:
        raise UsageError(f"--batch-sizes takes comma-separated positive integers, got {value!r}") from None
    if min(sizes) < 1:
        raise UsageError(f"--batch-sizes must be positive, got {value!r}")
    return sizes


def _spec_from_name(token: str) -> ModelSpec | None:
    """A model not in the preset: ``mlp-W`` (two hidden layers of width W) or a bare model name."""
    if token.startswith("mlp-"):
        try:
            width = int(token[4:])
        except ValueError:
            return None
        return _mlp(width) if width > 0 else None
    if token in MODELS and token != "mlp":
        batch = 8 if token in ("resnet18", "resnet50", "vit-tiny") else 64
        return ModelSpec(token, token, {}, (batch,))
    return None


def select(preset: Preset, *, models=None, batch_sizes=None, steps: int | None = None) -> Preset:
    """The preset narrowed to ``models`` (labels or model names), with batch sizes/steps overridden."""
    chosen = list(preset.models)
    names = _parse_list(models)
    if names:
        chosen = []
        for token in names:
            matches = [s for s in preset.models if s.label == token or s.model == token]
            if not matches:
                extra = _spec_from_name(token)
                if extra is None:
                    labels = ", ".join(s.label for s in preset.models)
                    raise UsageError(f"unknown bench model {token!r}; preset {preset.name} has {labels} "
                                     f"(or give mlp-WIDTH or one of {', '.join(MODELS)})")
                matches = [extra]
            chosen += [m for m in matches if m not in chosen]
    sizes = parse_batch_sizes(batch_sizes)
    if sizes:
        chosen = [replace(s, batch_sizes=sizes) for s in chosen]
    if steps is not None and steps < 1:
        raise UsageError(f"--steps must be a positive integer, got {steps}")
    return replace(preset, models=tuple(chosen), steps=steps or preset.steps)
