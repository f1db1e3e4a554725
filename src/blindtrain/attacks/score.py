"""Scoring: a :class:`~blindtrain.attacks.recovery.Recovery` against the ground truth, beside chance.

The only reader of ground truth.  Each ``score_*`` returns a flat dict of figures with its ``chance``
figures and a ``headline`` (the one number the tables show) — or ``None`` when the recovery claims nothing
for that target.

* labels: per-row accuracy in the row frame, resolved (if the attack claims true class indices) and up to
  a class permutation (the best one-to-one map of guessed to true classes over all scored rows, Hungarian);
  chance = the largest class prior; label-count error = mean L1 distance between estimated and true class
  histograms, per batch, divided by the batch size.
* inputs: the fraction of rows recovered exactly (max error ≤ 1e-3 of the row's range), PSNR and SSIM
  (data range = the public split's), and the accuracy of a classifier fitted on the public split
  (scikit-learn logistic regression) on the reconstructions vs on the true images; chance = the public mean
  image for every row.
* model: the stolen model's accuracy on the held-out split and its prediction agreement with the victim;
  chance = the same architecture trained on the public split only.
* gradients: cosine similarity and relative error ``‖ĝ − g‖ / ‖g‖`` against the true gradients recorded.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..groundtruth import GroundTruth
from .recovery import Knowledge, Recovery
from .view import Split

EXACT_TOLERANCE = 1e-3


def _headline(figures: dict, key: str, chance_key: str | None) -> dict:
    figures["headline"] = {"metric": key, "value": figures[key],
                           "chance": figures[chance_key] if chance_key else None}
    return figures


# ------------------------------------------------------------------------------------------ labels ----
def score_labels(recovery: Recovery, truth: GroundTruth, frame_layer: str, classes: int) -> dict | None:
    steps = [s for s in sorted(recovery.labels) if s in truth.batches]
    if not steps and not recovery.label_counts:
        return None
    figures: dict = {}
    if steps:
        guesses, trues = [], []
        for step in steps:
            _, y = truth.framed(step, frame_layer)
            guess = np.asarray(recovery.labels[step], dtype=np.int64)
            if guess.shape != y.shape:
                guess = np.full(y.shape, -1, dtype=np.int64)
            guesses.append(guess)
            trues.append(y)
        guess, true = np.concatenate(guesses), np.concatenate(trues)
        made = (guess >= 0) & (guess < classes)
        confusion = np.zeros((classes, classes), dtype=np.int64)
        np.add.at(confusion, (guess[made], true[made]), 1)
        rows, cols = linear_sum_assignment(-confusion)
        prior = np.bincount(true, minlength=classes) / len(true)
        figures.update({
            "steps": len(steps), "rows": int(len(true)), "coverage": float(made.mean()),
            "accuracy_up_to_permutation": float(confusion[rows, cols].sum() / len(true)),
            "accuracy": float((guess == true).mean()) if recovery.labels_resolved else None,
            "resolved": bool(recovery.labels_resolved),
            "per_step_accuracy_up_to_permutation_min": None,
            "chance": float(prior.max()),
            "chance_up_to_permutation": _random_matching(true, classes),
        })
        mapping = dict(zip(rows.tolist(), cols.tolist()))
        per_step = []
        for g, t in zip(guesses, trues):
            mapped = np.array([mapping.get(v, -1) if v >= 0 else -1 for v in g])
            per_step.append(float((mapped == t).mean()))
        figures["per_step_accuracy_up_to_permutation_min"] = min(per_step)
        figures["steps_fully_recovered"] = int(sum(a == 1.0 for a in per_step))
    count_steps = [s for s in sorted(recovery.label_counts) if s in truth.batches]
    if count_steps:
        errors = []
        for step in count_steps:
            y = truth.batches[step][1]
            true_counts = np.bincount(y, minlength=classes)
            estimate = np.asarray(recovery.label_counts[step], dtype=np.float64)[:classes]
            if not recovery.labels_resolved:  # classes up to a permutation: the map fitted on the rows, if any
                mapped = np.zeros(classes)
                for guessed, true_class in (mapping.items() if steps else enumerate(range(classes))):
                    mapped[true_class] += estimate[guessed]
                estimate = mapped
            errors.append(float(np.abs(estimate - true_counts).sum() / len(y)))
        figures["count_error_per_row"] = float(np.mean(errors))
    if "accuracy_up_to_permutation" not in figures:
        return _headline(figures, "count_error_per_row", None)
    if figures["accuracy"] is not None:
        return _headline(figures, "accuracy", "chance")
    return _headline(figures, "accuracy_up_to_permutation", "chance_up_to_permutation")


def _random_matching(true: np.ndarray, classes: int, *, seed: int = 0) -> float:
    """Chance of the up-to-permutation score, measured: uniformly random guesses on the same rows, matched
    to the true classes by the same best one-to-one map (above the largest prior on few rows)."""
    guess = np.random.default_rng(seed).integers(0, classes, size=len(true))
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (guess, true), 1)
    rows, cols = linear_sum_assignment(-confusion)
    return float(max(confusion[rows, cols].sum() / len(true), np.bincount(true, minlength=classes).max() / len(true)))


# ------------------------------------------------------------------------------------------ inputs ----
def ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> np.ndarray:
    """Mean SSIM per image of ``(n, C, H, W)`` arrays (Wang et al. 2004, uniform window of min(7, H, W))."""
    x, y = torch.from_numpy(np.asarray(a, np.float64)), torch.from_numpy(np.asarray(b, np.float64))
    window = min(7, x.shape[-1], x.shape[-2])
    pool = functools.partial(torch.nn.functional.avg_pool2d, kernel_size=window, stride=1)
    mx, my = pool(x), pool(y)
    vx, vy, cxy = pool(x * x) - mx * mx, pool(y * y) - my * my, pool(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).numpy()


def psnr(a: np.ndarray, b: np.ndarray, data_range: float) -> np.ndarray:
    mse = ((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).reshape(len(a), -1).mean(1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range ** 2 / mse)


@functools.lru_cache(maxsize=8)
def _public_classifier(key: tuple, x_bytes: bytes, y_bytes: bytes, shape: tuple):
    from sklearn.linear_model import LogisticRegression

    x = np.frombuffer(x_bytes, dtype=np.float32).reshape(shape)
    y = np.frombuffer(y_bytes, dtype=np.int64)
    return LogisticRegression(max_iter=2000).fit(x.reshape(len(x), -1), y)


def public_classifier(knowledge: Knowledge):
    x, y = np.ascontiguousarray(knowledge.public_x), np.ascontiguousarray(knowledge.public_y)
    return _public_classifier((knowledge.public_split,), x.tobytes(), y.tobytes(), x.shape)


def _as_image(x: np.ndarray) -> np.ndarray:
    return x if x.ndim == 4 else x.reshape(len(x), 1, 1, -1)


def score_inputs(recovery: Recovery, truth: GroundTruth, frame_layer: str, knowledge: Knowledge) -> dict | None:
    steps = [s for s in sorted(recovery.inputs) if s in truth.batches]
    if not steps:
        return None
    guesses, trues, labels = [], [], []
    for step in steps:
        x, y = truth.framed(step, frame_layer)
        guess = np.asarray(recovery.inputs[step], dtype=np.float32)
        if guess.shape != x.shape:
            guess = np.full(x.shape, np.nan, dtype=np.float32)
        guesses.append(guess)
        trues.append(x)
        labels.append(y)
    guess, true, label = np.concatenate(guesses), np.concatenate(trues), np.concatenate(labels)
    made = np.isfinite(guess.reshape(len(guess), -1)).all(1)
    data_range = float(knowledge.public_x.max() - knowledge.public_x.min())
    mean_image = np.broadcast_to(knowledge.public_x.mean(0, keepdims=True), true.shape)
    filled = np.where(np.isfinite(guess), guess, mean_image)  # no guess: the chance baseline
    flat_true, flat_guess = true.reshape(len(true), -1), filled.reshape(len(true), -1)
    row_range = np.maximum(flat_true.max(1) - flat_true.min(1), 1e-12)
    exact = (np.abs(flat_guess - flat_true).max(1) <= EXACT_TOLERANCE * row_range) & made
    classifier = public_classifier(knowledge)
    figures = {
        "steps": len(steps), "rows": int(len(true)), "coverage": float(made.mean()),
        "exact_fraction": float(exact.mean()),
        "psnr_median": float(np.median(psnr(filled, true, data_range))),
        "ssim_mean": float(ssim(_as_image(filled), _as_image(true), data_range).mean()),
        "correlation_mean": float(np.mean([_correlation(g, t) for g, t in zip(flat_guess, flat_true)])),
        "classifier_accuracy_reconstructed": float((classifier.predict(flat_guess) == label).mean()),
        "classifier_accuracy_true": float((classifier.predict(flat_true) == label).mean()),
        "chance_exact_fraction": 0.0,
        "chance_psnr_median": float(np.median(psnr(mean_image, true, data_range))),
        "chance_ssim_mean": float(ssim(_as_image(np.array(mean_image)), _as_image(true), data_range).mean()),
        "chance_classifier_accuracy": float((classifier.predict(mean_image.reshape(len(true), -1)) == label).mean()),
        "data_range": data_range,
    }
    return _headline(figures, "exact_fraction", "chance_exact_fraction")


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


# ------------------------------------------------------------------------------------------- model ----
def _predict(knowledge: Knowledge, state: dict, x: np.ndarray) -> np.ndarray:
    model = knowledge.build_model()
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).argmax(-1).numpy()


_PUBLIC_ONLY: dict[tuple, dict] = {}


def public_only_model(knowledge: Knowledge, *, epochs: int = 60, seed: int = 0) -> dict:
    """The victim's architecture trained on the public split only (the model-theft chance baseline)."""
    key = (repr(knowledge.model_spec), knowledge.public_split, epochs, seed)
    if key not in _PUBLIC_ONLY:
        torch.manual_seed(seed)
        model = knowledge.build_model()
        x, y = torch.from_numpy(knowledge.public_x), torch.from_numpy(knowledge.public_y)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            for index in torch.randperm(len(y), generator=generator).split(64):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x[index]), y[index]).backward()
                optimizer.step()
        _PUBLIC_ONLY[key] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return _PUBLIC_ONLY[key]


def score_model(recovery: Recovery, truth: GroundTruth, knowledge: Knowledge, held_out: Split) -> dict | None:
    if recovery.model_state is None:
        return None
    victim = _predict(knowledge, truth.model_state, held_out.x)
    try:
        stolen = _predict(knowledge, recovery.model_state, held_out.x)
    except (RuntimeError, KeyError) as exc:
        return {"error": f"the recovered state_dict does not fit the architecture: {str(exc).splitlines()[0]}",
                "headline": {"metric": "agreement", "value": 0.0, "chance": None}}
    baseline = _predict(knowledge, public_only_model(knowledge), held_out.x)
    figures = {
        "held_out_samples": int(len(held_out.y)),
        "test_accuracy": float((stolen == held_out.y).mean()),
        "agreement": float((stolen == victim).mean()),
        "victim_test_accuracy": float((victim == held_out.y).mean()),
        "chance_test_accuracy": float((baseline == held_out.y).mean()),
        "chance_agreement": float((baseline == victim).mean()),
        "max_abs_weight_error": _max_weight_error(recovery.model_state, truth.model_state),
    }
    return _headline(figures, "agreement", "chance_agreement")


def _max_weight_error(stolen: dict, victim: dict) -> float | None:
    errors = [float((stolen[k].float() - v.float()).abs().max()) for k, v in victim.items()
              if k in stolen and tuple(stolen[k].shape) == tuple(v.shape) and v.numel()]
    return max(errors) if errors else None


# --------------------------------------------------------------------------------------- gradients ----
def score_gradients(recovery: Recovery, truth: GroundTruth) -> dict | None:
    cosines, relative = [], []
    for step, grads in sorted(recovery.gradients.items()):
        for name, guess in grads.items():
            true = truth.gradients.get(step, {}).get(name)
            if true is None or np.shape(guess) != true.shape:
                continue
            g, t = np.asarray(guess, np.float64).ravel(), true.astype(np.float64).ravel()
            norm = np.linalg.norm(t)
            if norm == 0:
                continue
            cosines.append(float(g @ t / (np.linalg.norm(g) * norm)) if np.linalg.norm(g) > 0 else 0.0)
            relative.append(float(np.linalg.norm(g - t) / norm))
    if not cosines:
        if recovery.gradients and not truth.gradients:
            return {"note": "no true gradients recorded (the protocol updates the weights on the worker)",
                    "headline": {"metric": "cosine_mean", "value": None, "chance": 0.0}}
        return None
    figures = {"tensors": len(cosines), "cosine_mean": float(np.mean(cosines)),
               "relative_error_median": float(np.median(relative)), "chance_cosine_mean": 0.0,
               "chance_relative_error": 1.0}
    return _headline(figures, "cosine_mean", "chance_cosine_mean")


def score(recovery: Recovery, targets: tuple[str, ...], *, truth: GroundTruth, knowledge: Knowledge,
          held_out: Split, frame_layer: str | None) -> dict:
    """Every target of ``targets`` the recovery claims something for -> its figures."""
    out = {}
    for target in targets:
        if target == "labels" and frame_layer is not None:
            figures = score_labels(recovery, truth, frame_layer, knowledge.num_classes)
        elif target == "inputs" and frame_layer is not None:
            figures = score_inputs(recovery, truth, frame_layer, knowledge)
        elif target == "model":
            figures = score_model(recovery, truth, knowledge, held_out)
        elif target == "gradients":
            figures = score_gradients(recovery, truth)
        else:
            figures = None
        if figures is not None:
            out[target] = figures
    return out


def finite(value):
    """JSON-friendly: ``inf`` -> the string ``"inf"`` (PSNR of an exact reconstruction)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value
