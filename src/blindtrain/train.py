"""The training and evaluation driver behind ``blindtrain train`` and ``predict``.

It is an ordinary PyTorch loop around :class:`blindtrain.Session` — the same loop a
user writes — plus data, checkpoints, metrics and a progress bar.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint as ckpt
from . import data as datasets
from . import models
from .crypto import KeyStore
from .files import atomic_write
from .errors import IntegrityError, TrainingDiverged, UsageError, WorkerCrashed
from .preflight import check_memory, check_outputs
from .session import Session

LOSSES = ("ce", "mse")
_MLP_DEFAULT_HIDDEN = inspect.signature(models.mlp).parameters["hidden"].default
OPTIMIZERS = ("sgd", "adam")


@dataclass
class TrainConfig:
    model: str = "mlp"
    hidden: tuple[int, ...] | None = None
    activation: str = "relu"
    dataset: str = "digits"
    data_dir: str | None = None
    protocol: str = "tempo"
    epochs: int = 5
    steps: int | None = None
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    loss: str = "ce"
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    transport: str = "inproc"
    rendezvous: str | None = None
    adversary: str | None = None
    transcript: str | None = None
    metrics: str | None = None
    checkpoint: str | None = None
    checkpoint_every: int | None = None
    resume: str | None = None
    keystore: str | None = None
    record_ground_truth: str | None = None
    allow_rollback: bool = False
    worker_timeout: float = 600.0
    eval_batch_size: int = 256
    progress: bool = True
    protocol_options: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Reject bad input before anything is computed or written (exit 2)."""
        positive = {"--batch-size": self.batch_size, "--epochs": self.epochs, "--lr": self.lr}
        if self.steps is not None:
            positive["--steps"] = self.steps
        if self.checkpoint_every is not None:
            positive["--checkpoint-every"] = self.checkpoint_every
        positive["--worker-timeout"] = self.worker_timeout
        for flag, value in positive.items():
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise UsageError(f"{flag} must be positive, got {value}")
        for flag, value in (("--momentum", self.momentum), ("--weight-decay", self.weight_decay)):
            if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                raise UsageError(f"{flag} must be a finite number >= 0, got {value}")
        if self.optimizer == "sgd" and self.momentum >= 1:
            raise UsageError(f"--momentum must be below 1 (SGD diverges otherwise), got {self.momentum}")
        if not models.known(self.model):
            raise UsageError(f"unknown model {self.model!r}; choose from {', '.join(models.MODELS)} "
                             f"or give path/to/file.py:factory")
        if not datasets.known(self.dataset):
            raise UsageError(f"unknown dataset {self.dataset!r}; choose from {', '.join(datasets.DATASETS)} "
                             f"or give npz:FILE or folder:DIR")
        if self.activation not in models.ACTIVATIONS:
            raise UsageError(f"unknown activation {self.activation!r}; choose from {', '.join(models.ACTIVATIONS)}")
        if self.loss not in LOSSES:
            raise UsageError(f"unknown loss {self.loss!r}; choose from {', '.join(LOSSES)}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        for flag, target in (("--metrics", self.metrics), ("--transcript", self.transcript),
                             ("--checkpoint", self.checkpoint), ("--record-ground-truth", self.record_ground_truth)):
            if target is not None and Path(target).is_dir():
                raise UsageError(f"{flag} {target} is a directory; give a file path")

    def output_paths(self) -> dict[str, str]:
        """``{flag: path}`` of every file this run will write."""
        paths = {"--metrics": self.metrics, "--transcript": self.transcript, "--checkpoint": self.checkpoint,
                 "--record-ground-truth": getattr(self, "record_ground_truth", None)}
        return {flag: path for flag, path in paths.items() if path is not None}

    def binding(self) -> dict:
        """The configuration a checkpoint is bound to: resuming under another one is exit 2."""
        hidden = list(self.hidden) if self.hidden else None
        if self.model == "mlp" and hidden is None:
            hidden = list(_MLP_DEFAULT_HIDDEN)
        binding = {"protocol": self.protocol, "model": self.model, "hidden": hidden, "activation": self.activation,
                   "dataset": self.dataset, "optimizer": self.optimizer, "loss": self.loss,
                   "batch_size": self.batch_size, "seed": self.seed, "protocol_options": dict(self.protocol_options)}
        return json.loads(json.dumps(binding, sort_keys=True, default=str))  # as it reads back from a header

    def model_spec(self) -> dict:
        return {"model": self.model, "hidden": list(self.hidden) if self.hidden else None,
                "activation": self.activation, "dataset": self.dataset}


def loss_fn(name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if name == "ce":
        return F.cross_entropy(logits, labels)
    target = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    return F.mse_loss(torch.softmax(logits, dim=-1), target)


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (as wrapped by a session: inference runs under the protocol)."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start:start + batch_size])
        correct += int((logits.argmax(-1).cpu() == y[start:start + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(y), 1)


def write_json(path: str | Path, payload: dict) -> None:
    atomic_write(path, (json.dumps(payload, indent=2, default=str) + "\n").encode())


def _resolve_spec(config: TrainConfig, payload: dict | None) -> dict:
    """The model spec to build: this run's, which on resume must be the checkpoint's configuration."""
    if payload is not None:
        differences = ckpt.binding_differences(payload["header"].binding, config.binding())
        if differences:
            raise UsageError("cannot resume: the configuration differs from the checkpoint's: "
                             + "; ".join(differences) + " (give the checkpoint's settings)")
    return config.model_spec()


def _require_finite_weights(model: torch.nn.Module, step: int) -> None:
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter.detach()).all():
            raise TrainingDiverged(step=step, detail=f"parameter {name} is not finite")


def _status_of(exc: BaseException) -> str:
    for kind, status in ((IntegrityError, "integrity_violation"), (WorkerCrashed, "worker_crashed"),
                         (TrainingDiverged, "diverged")):
        if isinstance(exc, kind):
            return status
    return "error"


def run_training(config: TrainConfig, *, echo=print) -> dict:
    """Train as configured; returns the metrics dict (also written to ``--metrics``)."""
    config.validate()
    keystore = KeyStore(config.keystore)
    check_outputs(config, keystore)
    payload = ckpt.load(config.resume, keystore=keystore, allow_rollback=config.allow_rollback) \
        if config.resume else None
    spec = _resolve_spec(config, payload)
    run_id = payload["header"].run_id if payload is not None else ckpt.new_run_id()
    dataset = datasets.load(spec["dataset"], seed=config.seed, data_dir=config.data_dir)
    check_memory(spec, dataset, config)
    torch.manual_seed(config.seed)
    hidden = tuple(spec["hidden"]) if spec["hidden"] else None
    model = models.build(spec["model"], dataset.input_shape, dataset.num_classes, hidden=hidden,
                         activation=spec["activation"])
    optimizer = make_optimizer(config, model.parameters())
    start_step = 0
    if payload is not None:
        model.load_state_dict(payload["model_state"])
        if payload["optimizer_state"]:
            optimizer.load_state_dict(payload["optimizer_state"])
        torch.set_rng_state(payload["torch_rng"])
        start_step = payload["step"]

    session = Session(protocol=config.protocol, device=config.device, seed=None, transport=config.transport,
                      rendezvous=config.rendezvous, threads=config.threads, adversary=config.adversary,
                      transcript=config.transcript is not None, worker_timeout=config.worker_timeout,
                      **config.protocol_options)
    if config.transcript is not None:  # spool the transcript beside its destination, not in RAM
        session.boundary.transcript_spool_dir = Path(config.transcript).resolve().parent
    ground_truth = _ground_truth_recorder(config, session, model)
    info = session.protocol.info
    if not info.trains:
        session.close()
        raise UsageError(f"protocol {info.name!r} is for inference only ({info.summary}); train with another "
                         f"protocol and run `blindtrain predict --protocol {info.name} --checkpoint FILE`")
    echo(f"privacy [{info.name}]: private from the worker: {info.private}; leaks: {info.leaks}; "
         f"integrity: {info.integrity}")
    per_epoch = dataset.steps_per_epoch(config.batch_size)
    total = config.steps if config.steps is not None else config.epochs * per_epoch
    losses: list[float] = []
    status, error = "ok", None
    train_seconds, accuracy = 0.0, None
    wall_start = time.perf_counter()
    try:
        model, optimizer = session.prepare(model, optimizer, example_input=dataset.x_train[:2])
        echo(session.placement.table())
        session.step = start_step
        if payload is not None and "session_state" in payload["extra"]:
            session.load_state_dict(payload["extra"]["session_state"])  # keys, CSPRNG: bit-exact resume
        model.train()
        bar = tqdm(total=total, desc=f"train {info.name}", unit="step", disable=not config.progress,
                   dynamic_ncols=True, leave=False)
        step, samples, bar_start = start_step, 0, time.perf_counter()
        while step < start_step + total:
            epoch, skip = divmod(step, per_epoch)
            for index, (x, y) in enumerate(dataset.batches(batch_size=config.batch_size, epoch=epoch,
                                                           seed=config.seed)):
                if index < skip:
                    continue
                if step >= start_step + total:
                    break
                optimizer.zero_grad(set_to_none=True)
                if ground_truth is not None:
                    ground_truth.record_batch(session.step, x, y)
                loss = loss_fn(config.loss, model(x), y)
                if not torch.isfinite(loss.detach()).all():
                    raise TrainingDiverged(step=step, detail=f"the loss became {float(loss.detach())}")
                loss.backward()
                if ground_truth is not None:
                    ground_truth.record_gradients(session.step)
                optimizer.step()
                step += 1
                samples += len(y)
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(refresh=False, loss=f"{losses[-1]:.4f}",
                                samples_s=f"{samples / max(time.perf_counter() - bar_start, 1e-9):.0f}")
                if config.checkpoint and config.checkpoint_every and step % config.checkpoint_every == 0:
                    _save_checkpoint(config, keystore, session, optimizer, spec, step, run_id=run_id)
        bar.close()
        train_seconds = time.perf_counter() - wall_start
        accuracy = evaluate(model, dataset.x_test, dataset.y_test, batch_size=config.eval_batch_size)
        if config.checkpoint:
            _save_checkpoint(config, keystore, session, optimizer, spec, step, run_id=run_id)
        if ground_truth is not None:
            _save_ground_truth(config, keystore, session, ground_truth, spec)
    except BaseException as exc:
        status = _status_of(exc)
        error, train_seconds = str(exc), time.perf_counter() - wall_start
        raise
    finally:
        metrics = session.metrics()
        metrics.update({
            "status": status, "error": error, "model": spec["model"], "dataset": spec["dataset"],
            "steps": len(losses), "global_step": start_step + len(losses),
            "epochs": len(losses) / per_epoch, "batch_size": config.batch_size, "lr": config.lr,
            "seed": config.seed, "final_loss": losses[-1] if losses else None,
            "test_accuracy": accuracy if status == "ok" else None, "run_id": run_id,
            "wall_seconds": train_seconds, "samples_per_second": len(losses) * config.batch_size / train_seconds
            if train_seconds > 0 else None, "loss_curve": losses, "config": asdict(config),
        })
        if config.transcript is not None and status != "error":
            session.save_transcripts(config.transcript)
        if config.metrics is not None and status != "error":
            write_json(config.metrics, metrics)
        session.close()
    return metrics


def _save_checkpoint(config, keystore, session, optimizer, spec, step, *, run_id: str) -> None:
    """Seal the run's checkpoint: bound to its configuration and run identity, counted in the key
    store, and only from finite weights."""
    model = session.plaintext_model()
    _require_finite_weights(model, step)
    ckpt.save(config.checkpoint, keystore=keystore, model_spec=spec, model_state=model.state_dict(),
              optimizer_state=optimizer.state_dict(), step=step, binding=config.binding(), run_id=run_id,
              extra={"session_state": session.state_dict()})


def _ground_truth_recorder(config, session, model):
    """With ``--record-ground-truth``: a recorder watching ``model`` (the caller's, unwrapped), installed as
    ``runtime.ground_truth`` so protocols that permute rows report the order (scoring only)."""
    if config.record_ground_truth is None:
        return None
    from .groundtruth import GroundTruthRecorder

    session.runtime.ground_truth = GroundTruthRecorder(model)
    return session.runtime.ground_truth


def _save_ground_truth(config, keystore, session, recorder, spec) -> None:
    model = session.plaintext_model()
    recorder.save(config.record_ground_truth, keystore=keystore, model_spec=spec, model_state=model.state_dict(),
                  extra={"protocol": config.protocol, "protocol_options": config.protocol_options,
                         "batch_size": config.batch_size, "seed": config.seed})


def run_predict(*, checkpoint: str, protocol: str = "enclave", dataset: str | None = None,
                data_dir: str | None = None, device: str = "auto", seed: int = 0, keystore: str | None = None,
                transport: str = "inproc", adversary: str | None = None, batch_size: int = 256,
                protocol_options: dict | None = None, transcript: str | None = None,
                record_ground_truth: str | None = None, allow_rollback: bool = False,
                worker_timeout: float = 600.0) -> dict:
    """Test accuracy of a checkpointed model, with inference run under ``protocol``."""
    if batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    if not (worker_timeout > 0 and math.isfinite(worker_timeout)):
        raise UsageError(f"--worker-timeout must be positive, got {worker_timeout}")
    payload = ckpt.load(checkpoint, keystore=KeyStore(keystore), allow_rollback=allow_rollback)
    spec = payload["model_spec"]
    data = datasets.load(dataset or spec["dataset"], seed=seed, data_dir=data_dir)
    model = models.build(spec["model"], data.input_shape, data.num_classes,
                         hidden=tuple(spec["hidden"]) if spec["hidden"] else None, activation=spec["activation"])
    try:
        model.load_state_dict(payload["model_state"])
    except RuntimeError as exc:
        raise UsageError(f"checkpoint does not fit dataset {data.name}: {str(exc).splitlines()[0]}") from None
    start = time.perf_counter()
    with Session(protocol=protocol, device=device, seed=seed, transport=transport, adversary=adversary,
                 transcript=transcript is not None, worker_timeout=worker_timeout,
                 **(protocol_options or {})) as session:
        wrapped, _ = session.prepare(model, None)
        accuracy = evaluate(wrapped, data.x_test, data.y_test, batch_size=batch_size)
        metrics = session.metrics()
        if transcript is not None:
            session.save_transcripts(transcript)
    if record_ground_truth is not None:
        from .groundtruth import save_inference

        save_inference(record_ground_truth, keystore=KeyStore(keystore), model_spec=spec,
                       model_state=payload["model_state"], x=data.x_test, y=data.y_test, batch_size=batch_size,
                       extra={"protocol": protocol, "seed": seed})
    metrics.update({"model": spec["model"], "dataset": data.name, "test_accuracy": accuracy,
                    "test_samples": len(data.y_test), "wall_seconds": time.perf_counter() - start,
                    "checkpoint_step": payload["step"], "model_spec": spec, "batch_size": batch_size,
                    "seed": seed})
    return metrics
