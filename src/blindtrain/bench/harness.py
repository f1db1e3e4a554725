"""The bench harness: every protocol x model x batch size (x mode), measured and modelled.

A *cell* is one protocol on one model at one batch size, in ``train`` mode (training
steps: forward, backward, optimizer step) or ``infer`` mode (inference batches; how
inference-only protocols are benched).  Each cell gets a fresh :class:`~blindtrain.Session`
and a freshly built model with the same seed, runs ``warmup`` untimed steps, then times
``steps`` steps one by one, snapshotting the session's ledger around each so every figure
is per step.  A cell that raises (unsupported model, usage error, out of memory) is recorded
as failed with its reason and the run goes on.  Protocols come from the registry: a new
protocol module is benched without edits here.
"""

from __future__ import annotations

import math
import statistics
import time
import traceback
from dataclasses import asdict

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import data as datasets
from .. import models
from ..costs import trace_ops
from ..errors import UsageError
from ..ledger import CATEGORIES
from ..protocols import load_all
from ..session import Session
from ..train import evaluate
from . import projection
from .presets import ModelSpec, Preset

BASELINES = ("plain", "enclave")
ALL_CATEGORIES = CATEGORIES + ("other",)


def resolve_protocols(names=None) -> list[str]:
    """Registered protocols, baselines first; ``names`` (list or comma string) narrows them."""
    registry = load_all()
    known = sorted(registry, key=lambda n: (n not in BASELINES, BASELINES.index(n) if n in BASELINES else 0, n))
    if not names:
        return known
    if isinstance(names, str):
        names = names.split(",")
    chosen = [n.strip() for n in names if n.strip()]
    unknown = [n for n in chosen if n not in registry]
    if unknown:
        raise UsageError(f"unknown protocol(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return [n for n in known if n in chosen]


def plan(preset: Preset, protocol_names: list[str]) -> list[dict]:
    """The cells to run, in order (model by model, so a model's cells sit together)."""
    registry = load_all()
    trains = {name: registry[name].info.trains for name in protocol_names}
    needs_infer = [n for n in protocol_names if not trains[n]]
    cells = []
    for spec in preset.models:
        for batch in spec.batch_sizes:
            for name in protocol_names:
                if trains[name]:
                    cells.append({"protocol": name, "spec": spec, "batch": batch, "mode": "train"})
            for name in protocol_names:
                infer = (not trains[name] or preset.inference == "all"
                         or (preset.inference == "needed" and needs_infer and name in BASELINES))
                if infer:
                    cells.append({"protocol": name, "spec": spec, "batch": batch, "mode": "infer"})
    return cells


def _stats(values: list[float]) -> dict:
    if not values:
        return {"median": None, "min": None, "max": None, "mean": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "mean": statistics.fmean(values)}


def _snapshot(ledger, mode: str) -> dict:
    return {
        "enclave_seconds": ledger.enclave_seconds, "wait_seconds": ledger.wait_seconds,
        "worker_seconds": ledger.worker_seconds, "bytes_to_worker": ledger.bytes_to_worker,
        "bytes_from_worker": ledger.bytes_from_worker, "messages": ledger.messages,
        "integrity_checks": ledger.integrity_checks, "integrity_failures": ledger.integrity_failures,
        "weight_encryptions": ledger.weight_encryptions, "enclave_transitions": ledger.enclave_transitions,
        **{f"cat_{c}": ledger.category_seconds.get(c, 0.0) for c in ledger.category_seconds},
    }


def _delta(before: dict, after: dict, wall: float, mode: str) -> dict:
    d = {k: after[k] - before[k] for k in after}
    if mode == "infer":  # the ledger times training steps only: the trusted side's time is wall minus waits
        d["enclave_seconds"] = max(wall - d["wait_seconds"], 0.0)
    cats = {k[4:]: d.pop(k) for k in list(d) if k.startswith("cat_")}
    cats["other"] = max(d["enclave_seconds"] - sum(cats.values()), 0.0)
    d["by_category"] = cats
    d["wall_seconds"] = wall
    return d


class _Batches:
    """The same fixed sequence of training batches for every protocol of a model."""

    def __init__(self, dataset, batch: int, seed: int) -> None:
        self.dataset, self.batch, self.seed, self.epoch = dataset, batch, seed, 0
        self._it = iter(())

    def __next__(self):
        for _ in range(2):
            try:
                x, y = next(self._it)
                if len(y) == self.batch:
                    return x, y
            except StopIteration:
                self._it = self.dataset.batches(batch_size=self.batch, epoch=self.epoch, seed=self.seed)
                self.epoch += 1
        raise UsageError(f"batch size {self.batch} exceeds the {self.dataset.name} training set")


def run_cell(cell: dict, *, preset: Preset, dataset, ops, device: str, seed: int, profiles: dict,
             bar: tqdm | None = None, cell_budget_s: float | None = None) -> dict:
    """Run one cell; never raises for a failure of the protocol on the model (records it)."""
    spec: ModelSpec = cell["spec"]
    name, batch, mode = cell["protocol"], cell["batch"], cell["mode"]
    out = {"protocol": name, "model": spec.label, "model_name": spec.model, "model_kwargs": spec.kwargs,
           "dataset": spec.dataset, "batch": batch, "mode": mode, "status": "ok", "reason": None}
    session = None
    started = time.perf_counter()
    try:
        session = Session(protocol=name, device=device, seed=seed)
        torch.manual_seed(seed)
        model = models.build(spec.model, dataset.input_shape, dataset.num_classes, **spec.kwargs)
        out["params"] = sum(p.numel() for p in model.parameters())
        optimizer = torch.optim.SGD(model.parameters(), lr=preset.lr, momentum=0.9) if mode == "train" else None
        model, optimizer = session.prepare(model, optimizer)
        batches = _Batches(dataset, batch, seed)
        ledger = session.ledger

        def one_step():
            x, y = next(batches)
            if mode == "train":
                model.train()
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
            else:
                model.eval()
                with torch.no_grad():
                    loss = F.cross_entropy(model(x).cpu(), y)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return float(loss.detach())

        warm_times, warm_enclave = [], []
        for _ in range(preset.warmup):
            t0, e0 = time.perf_counter(), ledger.enclave_seconds
            one_step()
            warm_times.append(time.perf_counter() - t0)
            warm_enclave.append(ledger.enclave_seconds - e0)
        steps = preset.steps
        if cell_budget_s and warm_times and steps > 2:  # keep slow cells inside the preset's budget
            steps = max(2, min(steps, int(cell_budget_s / max(min(warm_times), 1e-6))))
        per_step, losses = [], []
        if bar is not None:
            bar.reset(total=steps)
            bar.set_description(f"{name:>8} {spec.label} b{batch} {mode}")
        for _ in range(steps):
            before = _snapshot(ledger, mode)
            t0 = time.perf_counter()
            losses.append(one_step())
            wall = time.perf_counter() - t0
            per_step.append(_delta(before, _snapshot(ledger, mode), wall, mode))
            if bar is not None:
                bar.update(1)
        out.update(_summarize(per_step, batch))
        out["warmup_steps"], out["timed_steps"], out["requested_steps"] = preset.warmup, steps, preset.steps
        out["warmup_seconds"], out["warmup_enclave_seconds"] = warm_times, warm_enclave
        # a protocol that encrypted weights in the warm-up does so again every key epoch (tempo: rotate_every)
        out["key_epoch_steps"] = (session.protocol.settings.get("rotate_every")
                                  if ledger.weight_encryptions and mode == "train" else None)
        out["final_loss"] = losses[-1] if losses else None
        if not all(math.isfinite(v) for v in losses):
            out["notes"] = ["the loss became non-finite during the bench's steps"]
        out["test_accuracy"] = None
        if mode == "train" and preset.eval_samples and spec.evaluate:
            n = preset.eval_samples
            out["test_accuracy"] = evaluate(model, dataset.x_test[:n], dataset.y_test[:n], batch_size=max(batch, 64))
            out["eval_samples"] = min(n, len(dataset.y_test))
        metrics = session.metrics()
        out["integrity_soundness_bits"] = metrics.get("integrity_soundness_bits")
        out["enclave_peak_bytes"] = metrics.get("enclave_peak_bytes")
        total_steps = preset.warmup + steps
        modelled = metrics.get("modelled", {})
        out["modelled_sgx"] = {"transitions_per_step": per_step[-1]["enclave_transitions"],
                               "transition_seconds_per_step": modelled.get("transition_seconds", 0.0) / total_steps,
                               "epc_overflow_bytes": modelled.get("epc_overflow_bytes"),
                               "paging_seconds_per_step": modelled.get("paging_seconds", 0.0) / max(total_steps, 1),
                               "note": "modelled from the ledger (emulated enclave), not measured"}
        out["protocol_summary"] = metrics.get("protocol_summary")
        out["ledger"] = metrics
        out["cost_model"] = _cost_model(session.protocol, ops, spec, dataset, batch, mode)
        out["checks"] = _checks(out, per_step)
        out["projections"] = _projections(out, profiles, batch, device)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a failing cell is a result, not a crash of the bench
        if isinstance(exc, SystemExit):
            raise
        out["status"] = "failed"
        first = (str(exc).strip().splitlines() or [""])[0]
        out["reason"] = f"{type(exc).__name__}: {first}"[:400]
        if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in first.lower():
            out["reason"] = "out of memory: " + out["reason"]
        out["traceback"] = traceback.format_exc(limit=6)
    finally:
        if session is not None:
            try:
                session.close()
            except Exception as exc:  # noqa: BLE001
                out.setdefault("notes", []).append(f"session.close failed: {exc}")
        if device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()
        out["cell_seconds"] = time.perf_counter() - started
    return out


def _summarize(per_step: list[dict], batch: int) -> dict:
    walls = [s["wall_seconds"] for s in per_step]
    keys = ("enclave_seconds", "worker_seconds", "wait_seconds")
    counts = ("bytes_to_worker", "bytes_from_worker", "messages", "integrity_checks", "integrity_failures",
              "weight_encryptions", "enclave_transitions")
    out = {
        "step_seconds": _stats(walls),
        "steps_per_second": _stats([1 / w for w in walls if w > 0]),
        "samples_per_second": _stats([batch / w for w in walls if w > 0]),
        "per_step": {k: _stats([s[k] for s in per_step]) for k in keys},
        "enclave_seconds_by_category": {c: statistics.fmean(s["by_category"].get(c, 0.0) for s in per_step)
                                        for c in ALL_CATEGORIES},
        "measured": {k: per_step[-1][k] for k in counts},
        "measured_all_steps": {k: sorted({s[k] for s in per_step}) for k in counts},
        "raw_steps": per_step,
    }
    return out


def _cost_model(protocol, ops, spec, dataset, batch, mode) -> dict:
    try:
        cost = protocol.cost_model(ops, batch=batch, input_numel=math.prod(dataset.input_shape),
                                   classes=dataset.num_classes, training=(mode == "train"))
    except NotImplementedError as exc:
        return {"available": False, "reason": f"no cost model ({exc})"}
    except Exception as exc:  # noqa: BLE001 - a broken cost model is reported, not fatal
        return {"available": False, "reason": f"cost model failed: {type(exc).__name__}: {exc}"}
    if cost is None:
        return {"available": False, "reason": "no cost model (returned None)"}
    return {"available": True, **cost.as_dict()}


def _checks(cell: dict, per_step: list[dict]) -> dict:
    cost = cell["cost_model"]
    if not cost.get("available"):
        return {"bytes": "no cost model", "bytes_ok": None}
    result = {}
    ok = True
    for key in ("bytes_to_worker", "bytes_from_worker"):
        measured = cell["measured_all_steps"][key]
        equal = measured == [cost[key]]
        ok &= equal
        result[key] = {"measured": measured, "modelled": cost[key], "equal": equal}
    result["bytes_ok"] = ok
    result["bytes"] = "equal" if ok else "DIFFERS"
    return result


def _projections(cell: dict, profiles: dict, batch: int, worker_device: str) -> dict:
    cost = cell["cost_model"]
    if not cost.get("available"):
        return {}
    # The measured peak is the trusted process's resident memory.  With an in-process CPU worker it
    # includes the worker's tensors (for plain: the whole model), so it is no estimate of the enclave's
    # footprint: the paging term is then reported but left out of the projected step time.
    trusted_peak = cell.get("enclave_peak_bytes") or 0
    include_paging = str(worker_device).startswith("cuda")
    out = {name: projection.project(cost, prof, enclave_peak_bytes=trusted_peak, batch=batch,
                                    include_paging=include_paging)
           for name, prof in profiles.items()}
    local = profiles.get("local")
    if local is not None:
        modelled = projection.modelled_enclave_seconds(cost, local)
        measured = cell["per_step"]["enclave_seconds"]["median"]
        out["enclave_tracking"] = {"modelled_local_seconds": modelled, "measured_seconds": measured,
                                   "measured_over_modelled": measured / modelled if modelled > 0 else None}
    return out


def add_ratios(cells: list[dict]) -> None:
    """Offload ratio against ``enclave`` (steady state, and amortized over a key epoch: the weight encryption
    of the warm-up recurs at every key rotation) and speed ratio against ``plain``, within this run, same
    model, batch size and mode; accuracy difference against ``plain``."""
    index = {(c["protocol"], c["model"], c["batch"], c["mode"]): c for c in cells if c["status"] == "ok"}
    for c in cells:
        if c["status"] != "ok":
            continue
        key = (c["model"], c["batch"], c["mode"])
        enclave, plain = index.get(("enclave", *key)), index.get(("plain", *key))
        c["offload_ratio"] = None
        c["speed_vs_plain"] = None
        c["accuracy_vs_plain"] = None
        c["offload_ratio_amortized"] = None
        if enclave is not None:
            denominator = enclave["per_step"]["enclave_seconds"]["median"]
            if denominator:
                steady = c["per_step"]["enclave_seconds"]["median"]
                c["offload_ratio"] = steady / denominator
                # over a key epoch: the first warm-up step's excess over a steady step (the weight encryption)
                # recurs every key_epoch_steps steps (upper bound: it includes PyTorch's first-call set-up)
                epoch, warm = c.get("key_epoch_steps"), c.get("warmup_enclave_seconds") or []
                excess = max(warm[0] - steady, 0.0) if epoch and warm else 0.0
                c["offload_ratio_amortized"] = (steady + (excess / epoch if epoch else 0.0)) / denominator
        if plain is not None:
            c["speed_vs_plain"] = c["steps_per_second"]["median"] / plain["steps_per_second"]["median"]
            if c.get("test_accuracy") is not None and plain.get("test_accuracy") is not None:
                c["accuracy_vs_plain"] = c["test_accuracy"] - plain["test_accuracy"]


def run(preset: Preset, protocol_names: list[str], *, device: str = "auto", seed: int = 0,
        profile: str = projection.DEFAULT_PROFILE, progress: bool = True, echo=print,
        cell_budget_s: float | None = None) -> dict:
    """Run every cell of ``preset`` for ``protocol_names``; returns the results dict (no files)."""
    from ..session import _validate_device

    worker_device = _validate_device(device)
    if profile not in projection.PROFILES:
        raise UsageError(f"unknown device profile {profile!r}; choose from {', '.join(projection.PROFILES)}")
    if not preset.models:
        raise UsageError("no models selected")
    cells = plan(preset, protocol_names)
    if not cells:
        raise UsageError("nothing to run: no protocol/model combination selected")
    started = time.time()
    local = projection.calibrate(worker_device)
    profiles = {"local": local, profile: projection.PROFILES[profile]}
    data_cache, ops_cache, results = {}, {}, []
    outer = tqdm(total=len(cells), desc="bench cells", unit="cell", disable=not progress, position=0,
                 dynamic_ncols=True)
    inner = tqdm(total=preset.steps, unit="step", disable=not progress, position=1, leave=False,
                 dynamic_ncols=True)
    try:
        for cell in cells:
            spec: ModelSpec = cell["spec"]
            if spec.dataset not in data_cache:
                data_cache[spec.dataset] = datasets.load(spec.dataset, seed=seed)
            dataset = data_cache[spec.dataset]
            key = (spec.label, cell["batch"])
            if key not in ops_cache:
                try:
                    torch.manual_seed(seed)
                    probe = models.build(spec.model, dataset.input_shape, dataset.num_classes, **spec.kwargs)
                    ops_cache[key] = trace_ops(probe, dataset.input_shape, batch=cell["batch"])
                    del probe
                except Exception as exc:  # noqa: BLE001
                    ops_cache[key] = exc
            ops = ops_cache[key]
            if isinstance(ops, Exception):
                result = {"protocol": cell["protocol"], "model": spec.label, "model_name": spec.model,
                          "model_kwargs": spec.kwargs, "dataset": spec.dataset, "batch": cell["batch"],
                          "mode": cell["mode"], "status": "failed",
                          "reason": f"model could not be built/traced: {type(ops).__name__}: {ops}"}
            else:
                result = run_cell(cell, preset=preset, dataset=dataset, ops=ops, device=worker_device, seed=seed,
                                  profiles=profiles, bar=inner if progress else None, cell_budget_s=cell_budget_s)
                result["modelled_training_flops"] = sum(op.flops for op in ops)
            results.append(result)
            if result["status"] != "ok":
                outer.write(f"  {cell['protocol']} on {spec.label} (batch {cell['batch']}, {cell['mode']}) "
                            f"failed: {result['reason']}")
            outer.update(1)
    finally:
        inner.close()
        outer.close()
    add_ratios(results)
    return {"preset": _preset_dict(preset), "protocols_requested": protocol_names, "worker_device": worker_device,
            "seed": seed, "profiles": {k: v.as_dict() for k, v in profiles.items()}, "profile": profile,
            "protocols": {n: vars(load_all()[n].info) for n in protocol_names},
            "cells": results, "started": started, "wall_seconds": time.time() - started}


def _preset_dict(preset: Preset) -> dict:
    d = asdict(preset)
    d["models"] = [asdict(m) for m in preset.models]
    return d
