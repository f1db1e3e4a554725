"""The attacker's view: the transcript(s) of the roles it controls, and what it knows besides.

* :func:`load_messages` reads ``FILE`` (role ``main``) and ``FILE.ROLE.npz`` (other roles) into
  :class:`~blindtrain.attacks.recovery.Message` lists, parsed without pickle.
* :func:`load_knowledge` builds the :class:`~blindtrain.attacks.recovery.Knowledge` from the run's
  metrics JSON (architecture, hyper-parameters) and the declared public split (:func:`public_split`).

The public split is the first half of the dataset's test split under the run's seed: disjoint from every
training sample.  The other half (the *held-out* split) is what the scorer measures models on.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .recovery import Knowledge, Message

ROLES = ("main", "mask", "s0", "s1", "dealer")
_META_FIELDS = ("key", "step", "layer", "op", "operand", "kind")


def role_path(transcript: str | Path, role: str) -> Path:
    """Where role ``role``'s transcript is: ``FILE`` for ``main``, ``FILE.ROLE.npz`` for the others."""
    path = Path(transcript)
    return path if role == "main" else path.with_name(f"{path.stem}.{role}{path.suffix or '.npz'}")


def load_messages(transcript: str | Path, roles: Sequence[str] = ("main",)) -> list[Message]:
    """Every message the given roles received, role by role, each in transcript order."""
    messages: list[Message] = []
    for role in roles:
        if role not in ROLES:
            raise UsageError(f"unknown role {role!r}; choose from {', '.join(ROLES)}")
        messages += _read_role(role_path(transcript, role), role)
    return messages


def _read_role(path: Path, role: str) -> list[Message]:
    if not path.is_file():
        raise UsageError(f"no transcript for role {role!r}: {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if not isinstance(meta, list):
                raise ValueError("meta is not a list")
            out = []
            for index, entry in enumerate(meta):
                if not isinstance(entry, dict) or any(f not in entry for f in _META_FIELDS):
                    raise ValueError(f"meta entry {index} lacks one of {', '.join(_META_FIELDS)}")
                array = data[entry["key"]]
                out.append(Message(index=index, key=str(entry["key"]), step=int(entry["step"]),
                                   layer=str(entry["layer"]), op=str(entry["op"]), operand=str(entry["operand"]),
                                   kind=str(entry["kind"]), dtype=str(array.dtype),
                                   modulus=None if entry.get("modulus") is None else int(entry["modulus"]),
                                   worker=str(entry.get("worker", f"{role}0")), role=role, array=array))
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} is not a blindtrain transcript: {exc}") from None
    return out


@dataclass(frozen=True)
class Split:
    """A named set of samples (inputs, labels) and how it was chosen, in words."""

    x: np.ndarray
    y: np.ndarray
    description: str


def public_split(dataset: str, *, seed: int, data_dir: str | None = None) -> tuple[Split, Split, int]:
    """``(public, held_out, num_classes)``: the two halves of ``dataset``'s test split under ``seed`` (the training run's),
    neither of which the victim trained on.  The attacker gets ``public``; the scorer uses ``held_out``."""
    from .. import data as datasets

    loaded = datasets.load(dataset, seed=seed, data_dir=data_dir)
    x, y = loaded.x_test.numpy(), loaded.y_test.numpy()
    half = len(y) // 2
    public = Split(x[:half], y[:half], f"{dataset} test split (seed {seed}), first half: {half} samples, "
                                       f"disjoint from the {len(loaded.y_train)} training samples")
    held_out = Split(x[half:], y[half:], f"{dataset} test split (seed {seed}), second half: {len(y) - half} "
                                         f"samples (scoring only)")
    return public, held_out, loaded.num_classes


def read_metrics(path: str | Path) -> dict:
    try:
        metrics = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read metrics {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"metrics {path} is not JSON: {exc}") from None
    if not isinstance(metrics, dict) or "protocol" not in metrics or "model" not in metrics:
        raise UsageError(f"metrics {path} is not a blindtrain metrics file (no protocol / model)")
    return metrics


def run_facts(metrics: dict) -> tuple[dict, dict, int]:
    """``(model_spec, hyper, seed)`` of a run from its metrics (train or predict)."""
    config = metrics.get("config") or {}
    spec = metrics.get("model_spec") or {"model": metrics["model"], "hidden": config.get("hidden"),
                                         "activation": config.get("activation", "relu"),
                                         "dataset": metrics.get("dataset", config.get("dataset", "digits"))}
    hyper = {key: config.get(key, default) for key, default in
             (("lr", 0.05), ("momentum", 0.9), ("weight_decay", 0.0), ("optimizer", "sgd"), ("loss", "ce"))}
    hyper["batch_size"] = config.get("batch_size", metrics.get("batch_size"))
    hyper["protocol_options"] = (metrics.get("protocol_summary") or {}).get("options", config.get("protocol_options", {}))
    hyper["training"] = bool(config)
    seed = int(config.get("seed", metrics.get("seed", 0)) or 0)
    return spec, hyper, seed


def load_knowledge(metrics: dict, *, data_dir: str | None = None) -> tuple[Knowledge, Split]:
    """The attacker's :class:`Knowledge` and the held-out split (for the scorer, not the attacker)."""
    spec, hyper, seed = run_facts(metrics)
    public, held_out, num_classes = public_split(spec["dataset"], seed=seed, data_dir=data_dir)
    knowledge = Knowledge(protocol=str(metrics["protocol"]), model_spec=spec, input_shape=tuple(public.x.shape[1:]),
                          num_classes=num_classes, hyper=hyper, public_x=public.x.astype(np.float32),
                          public_y=public.y.astype(np.int64), public_split=public.description)
    return knowledge, held_out
