"""``results.json`` and ``report.md`` from a bench run, plus the generated ordering check.

Nothing in the report is hand-written about the numbers: the tables, the caveats that depend
on the run (CPU or GPU, which protocols), and the explanation of every ordering disagreement
between the cost model and the measurement are generated from the results.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from ..ledger import CATEGORIES
from . import concurrency, field_engine, plots, transports
from .harness import ALL_CATEGORIES

NOISE_TIE = 0.20  # projected step times within 20% count as a modelled tie
TRACKS_RHO = 0.8  # rank correlation from which measured enclave time is said to track the model


# -- metadata --------------------------------------------------------------------------------
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def metadata(worker_device: str, command: list[str] | None) -> dict:
    import numpy

    try:
        from importlib.metadata import version

        own = version("blindtrain")
    except Exception:  # noqa: BLE001 - run from a source tree
        own = "source tree"
    gpu = torch.cuda.get_device_name(0) if worker_device.startswith("cuda") and torch.cuda.is_available() else None
    cpu = _cpu_name()
    label = f"{gpu} (worker) + {cpu} (enclave side)" if gpu else f"CPU only: {cpu}, {os.cpu_count()} cores"
    return {
        "command": " ".join(command) if command else None, "argv": command,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "device_label": label, "worker_device": worker_device, "gpu": gpu, "cpu": cpu,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__,
                     "blindtrain": own, "git_commit": _git_commit()},
    }


# -- formatting ------------------------------------------------------------------------------
def _si(value, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "-"
    value = float(value)
    if value == 0:
        return f"0 {unit}".strip()
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"), (1e-6, "µ")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g} {prefix}{unit}".strip()
    return f"{value:.{digits}g} {unit}".strip()


def _bytes(value) -> str:
    if value is None:
        return "-"
    for factor, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= factor:
            return f"{value / factor:.3g} {unit}"
    return f"{int(value)} B"


def _x(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}g}×"


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines)


# -- the ordering check ----------------------------------------------------------------------
def _groups(cells):
    groups = {}
    for c in cells:
        if c["status"] == "ok":
            groups.setdefault((c["model"], c["batch"], c["mode"]), []).append(c)
    return groups


def _explain(a: dict, b: dict, profile: str, worker_device: str) -> str:
    """Why the measurement puts ``a`` ahead of ``b`` while the projection on ``profile`` does not."""
    sa, sb = a["step_seconds"], b["step_seconds"]
    pa, pb = a["projections"][profile], b["projections"][profile]
    if profile != "local" and not worker_device.startswith("cuda"):
        return (f"measured on CPU, where the worker is this same CPU and no faster than the enclave; the "
                f"{profile} projection assumes a {a['_profiles'][profile]['worker_tflops']:g} TFLOP/s GPU worker "
                f"and SGX costs (projected {a['protocol']} {_ms(pa['step_seconds'])} ms/step, {b['protocol']} "
                f"{_ms(pb['step_seconds'])} ms/step)")
    if sa["min"] <= sb["max"] and sb["min"] <= sa["max"]:
        return (f"within measurement noise: the step-time ranges overlap ({a['protocol']} "
                f"{_ms(sa['min'])}–{_ms(sa['max'])} ms, {b['protocol']} {_ms(sb['min'])}–{_ms(sb['max'])} ms)")
    ta, tb = pa["step_seconds"], pb["step_seconds"]
    if max(ta, tb) <= (1 + NOISE_TIE) * min(ta, tb):
        return (f"the cost model nearly ties them ({_ms(ta)} vs {_ms(tb)} ms/step projected, within "
                f"{NOISE_TIE:.0%}); costs it leaves out decide the order")
    ra, rb = sa["median"] / ta, sb["median"] / tb
    sgx = ""
    if profile != "local":
        sa_t = pa["terms"]["transitions"] + pa["terms"].get("paging", 0.0)
        sb_t = pb["terms"]["transitions"] + pb["terms"].get("paging", 0.0)
        sgx = (f"; the projection adds modelled SGX transition/paging costs the emulation does not incur "
               f"({_ms(sa_t)} vs {_ms(sb_t)} ms)")
    return (f"the cost model leaves out costs that dominate here: measured/projected step time is "
            f"{ra:.3g}× for {a['protocol']} and {rb:.3g}× for {b['protocol']} (unmodelled: per-message overhead — "
            f"{a['measured']['messages']} vs {b['measured']['messages']} messages/step — Python dispatch, and the "
            f"non-bilinear layers, which the cost models do not count){sgx}")


def ordering_check(results: dict) -> list[dict]:
    """Per (model, batch, mode): measured order of protocols by steps/s vs the cost model's projected
    order on each profile; every inverted pair carries a generated explanation."""
    out = []
    profiles = results["profiles"]
    for (model, batch, mode), group in _groups(results["cells"]).items():
        modelled = [c for c in group if c.get("projections")]
        missing = sorted(c["protocol"] for c in group if not c.get("projections"))
        if len(modelled) < 2:
            continue
        for c in modelled:
            c["_profiles"] = profiles
        measured_order = sorted(modelled, key=lambda c: -c["steps_per_second"]["median"])
        for profile in profiles:
            theory = sorted(modelled, key=lambda c: c["projections"][profile]["step_seconds"])
            rank = {c["protocol"]: i for i, c in enumerate(theory)}
            inversions = []
            for i, a in enumerate(measured_order):
                for b in measured_order[i + 1:]:
                    if rank[a["protocol"]] > rank[b["protocol"]]:
                        inversions.append({"measured_faster": a["protocol"], "modelled_faster": b["protocol"],
                                           "explanation": _explain(a, b, profile, results["worker_device"])})
            out.append({"model": model, "batch": batch, "mode": mode, "profile": profile,
                        "measured_order": [c["protocol"] for c in measured_order],
                        "modelled_order": [c["protocol"] for c in theory], "agree": not inversions,
                        "inversions": inversions, "not_modelled": missing})
        for c in modelled:
            c.pop("_profiles", None)
    return out


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    for rank, i in enumerate(order):
        ranks[i] = float(rank)
    return ranks


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Rank correlation (ties broken by order; enough for a tracking summary)."""
    if len(xs) < 3:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    n = len(xs)
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx) ** 0.5
    vy = sum((b - my) ** 2 for b in ry) ** 0.5
    return cov / (vx * vy) if vx and vy else None


def tracking_summary(results: dict) -> list[dict]:
    """Per protocol: measured enclave seconds against the cost model's enclave work at the local rates."""
    out = []
    for name in results["protocols_requested"]:
        pts = [c["projections"]["enclave_tracking"] for c in results["cells"]
               if c["protocol"] == name and c["status"] == "ok" and c.get("projections", {}).get("enclave_tracking")]
        pts = [p for p in pts if p["modelled_local_seconds"] > 0 and p["measured_seconds"] is not None]
        if not pts:
            out.append({"protocol": name, "cells": 0})
            continue
        ratios = sorted(p["measured_over_modelled"] for p in pts)
        out.append({"protocol": name, "cells": len(pts), "ratio_median": ratios[len(ratios) // 2],
                    "ratio_min": ratios[0], "ratio_max": ratios[-1],
                    "spearman": spearman([p["modelled_local_seconds"] for p in pts],
                                         [p["measured_seconds"] for p in pts])})
    return out


# -- report ----------------------------------------------------------------------------------
def _caveats(results: dict) -> list[str]:
    meta, infos = results["meta"], results["protocols"]
    cpu_only = not results["worker_device"].startswith("cuda")
    notes = []
    if cpu_only:
        notes.append("**CPU timings are not GPU timings.** This run had no GPU: the untrusted worker ran on the "
                     "same CPU cores as the emulated enclave, so offloading cannot speed anything up here. "
                     "Absolute throughput and the speed ratio to `plain` say nothing about a GPU deployment; the "
                     "offload ratio (enclave seconds against `enclave`) does hold on CPU (DESIGN.md, Measuring "
                     "performance).")
    else:
        notes.append(f"Worker on {meta['gpu']}; the trusted side is an ordinary process on {meta['cpu']} "
                     f"with {meta['torch_threads']} threads.")
    notes.append("The enclave is emulated (an ordinary process). SGX enclave transitions and EPC paging are not "
                 "incurred; they are *modelled* from the ledger and shown separately, never added to measured time.")
    notes.append(f"Timings are medians of {results['preset']['steps']} timed steps after {results['preset']['warmup']} "
                 f"warm-up step(s) (fewer where a cell's step was too slow for the preset's budget: see "
                 f"`timed_steps` in results.json) on a possibly shared machine; compare ratios inside this run.")
    cut = [f"{c['protocol']}/{c['model']}/b{c['batch']}/{c['mode']} ({c['timed_steps']})" for c in results["cells"]
           if c["status"] == "ok" and c["timed_steps"] < c["requested_steps"]]
    if cut:
        notes.append(f"Cells whose timed steps were cut to fit the per-cell budget: {', '.join(cut)}.")
    slow_start = [f"{c['protocol']}/{c['model']}/b{c['batch']}/{c['mode']} ({max(c['warmup_seconds']):.3g} s vs "
                  f"{c['step_seconds']['median']:.3g} s)" for c in results["cells"]
                  if c["status"] == "ok" and c.get("warmup_seconds")
                  and max(c["warmup_seconds"]) > 3 * c["step_seconds"]["median"] + 0.05]
    if slow_start:
        notes.append("Warm-up steps are excluded from the timings; these cells' first step took far longer than "
                     "their median step (one-time setup such as precomputation, key generation or allocation): "
                     f"{', '.join(slow_start)}.")
    if results["preset"]["eval_samples"]:
        notes.append("Test accuracy is measured after only the bench's few steps on synthetic data: a sanity check "
                     "that a protocol trains like `plain` (same seed, same batches), not a trained accuracy.")
    notes.append("Enclave peak memory is the trusted process's resident-memory growth during the cell. With an "
                 "in-process CPU worker it includes the worker's tensors (for `plain`, the whole model), and memory "
                 "freed by an earlier cell may be reused; so on CPU runs the modelled EPC paging is shown as an upper "
                 "bound and left out of projected step times." if cpu_only else
                 "Enclave peak memory is the trusted process's resident-memory growth during the cell; the worker's "
                 "tensors live in GPU memory and are not counted. The modelled EPC paging uses it.")
    notes.append("Bytes are the tensor payloads that cross the boundary (what the ledger counts), without message "
                 "framing or transport encryption.")
    notes.append("Cost models count the bilinear ops (and what each protocol adds around them); the non-bilinear "
                 "layers, the loss and the optimizer run in the enclave for every protocol but `plain` and are not "
                 "counted, so small models show measured/modelled enclave time far above 1.")
    for name, info in infos.items():
        if name not in ("plain", "enclave"):
            notes.append(f"`{name}` leaks to its worker: {info['leaks']}.")
    if "otp" in infos:
        notes.append("`otp`'s worker sees the weights in the clear: it protects the data and labels, not the model.")
    inference_only = [n for n, i in infos.items() if not i["trains"]]
    if inference_only:
        notes.append(f"{', '.join(f'`{n}`' for n in inference_only)} cannot train: benched on inference batches "
                     f"(mode `infer`) against `plain` and `enclave` on the same batches.")
    return notes


def _theory_table(results: dict) -> str:
    cells = [c for c in results["cells"] if c["status"] == "ok"]
    profile = results["profile"]
    rows = []
    for name, info in results["protocols"].items():
        mine = [c for c in cells if c["protocol"] == name and c["cost_model"].get("available")]
        trust = mine[0]["cost_model"]["trust"] if mine else "-"
        workers = mine[0]["cost_model"]["workers"] if mine else "-"
        offload = []
        speed = []
        for c in mine:
            base = next((e for e in cells if e["protocol"] == "enclave" and e["model"] == c["model"]
                         and e["batch"] == c["batch"] and e["mode"] == c["mode"]), None)
            if base is None:
                continue
            work = c["cost_model"]["enclave_flops"] + c["cost_model"]["enclave_elementwise"]
            base_work = base["cost_model"]["enclave_flops"] + base["cost_model"]["enclave_elementwise"]
            if base_work:
                offload.append(work / base_work)
            if c["projections"].get(profile) and base["projections"].get(profile):
                speed.append(base["projections"][profile]["step_seconds"] / c["projections"][profile]["step_seconds"])

        def rng(v, f):
            if not v:
                return "-"
            return f(min(v)) if abs(max(v) - min(v)) < 1e-12 else f"{f(min(v))}–{f(max(v))}"

        rows.append([f"`{name}`", "yes" if info["trains"] else "inference only", info["private"], trust,
                     str(workers), info["integrity"], rng(offload, lambda v: f"{v:.3g}"),
                     rng(speed, lambda v: f"{v:.3g}×") + ("" if mine else " (no cost model)")])
    return _table(["protocol", "trains", "private from the worker", "trust assumption", "workers", "integrity",
                   "modelled enclave work vs `enclave`", f"projected speed vs `enclave` ({profile})"], rows)


def _paging(projected: dict) -> str:
    if projected.get("terms_excluded", {}).get("paging"):
        return f"{_ms(projected['terms_excluded']['paging'])} (upper bound, not in the projection)"
    return _ms(projected["terms"].get("paging"))


def _model_section(results: dict, model: str, cells: list[dict], order: list[str]) -> list[str]:
    from ..attacks.report import measured, privacy_cell

    lab = measured()  # the privacy lab's figures per protocol (mlp/digits; commands in the privacy section)
    profile = results["profile"]
    first = cells[0]
    params = next((c["params"] for c in cells if c.get("params")), None)
    flops = next((c["modelled_training_flops"] for c in cells if c.get("modelled_training_flops")), None)
    out = [f"### {model}", "",
           f"`{first['model_name']}` {json.dumps(first['model_kwargs']) if first['model_kwargs'] else ''} on "
           f"`{first['dataset']}`, {_si(params)} parameters, "
           f"{_si(flops, 'FLOP')}"
           f" of bilinear ops per training step at the first batch size.", ""]
    keyed = sorted(cells, key=lambda c: (c["batch"], c["mode"] != "train", order.index(c["protocol"])))
    groups = {}
    for c in keyed:
        groups.setdefault((c["batch"], c["mode"]), []).append(c)
    for (batch, mode), group in groups.items():
        ok = [c for c in group if c["status"] == "ok"]
        out += [f"**batch {batch}, {'training steps' if mode == 'train' else 'inference batches'}** — measured", ""]
        rows = []
        for c in ok:
            sps = c["steps_per_second"]
            acc = "-" if c.get("test_accuracy") is None else f"{c['test_accuracy']:.3f}" + (
                "" if c.get("accuracy_vs_plain") is None else f" ({c['accuracy_vs_plain']:+.3f})")
            check = c["checks"]["bytes"]
            rows.append([f"`{c['protocol']}`", f"{sps['median']:.3g} [{sps['min']:.3g}–{sps['max']:.3g}]",
                         f"{c['samples_per_second']['median']:.4g}",
                         _ms(c["per_step"]["enclave_seconds"]["median"]), _x(c.get("offload_ratio")) + (
                             "" if c.get("offload_ratio_amortized") in (None, c.get("offload_ratio"))
                             else f" ({_x(c['offload_ratio_amortized'])} over a key epoch)"),
                         _x(c.get("speed_vs_plain")), _ms(c["per_step"]["worker_seconds"]["median"]),
                         f"{_bytes(c['measured']['bytes_to_worker'])} / {_bytes(c['measured']['bytes_from_worker'])}",
                         check, str(c["measured"]["messages"]), _bytes(c.get("enclave_peak_bytes")),
                         "-" if c.get("integrity_soundness_bits") is None else f"{c['integrity_soundness_bits']:.3g}",
                         acc, privacy_cell(c["protocol"], lab)])
        if rows:
            out += [_table(["protocol", "steps/s median [min–max]", "samples/s", "enclave ms/step",
                            "offload ratio (vs enclave; steady, and amortized over a key epoch)", "speed vs plain", "worker ms/step",
                            "bytes to / from worker per step", "bytes = modelled?", "messages/step",
                            "enclave peak mem", "integrity bits", "test acc (Δ vs plain)",
                            "attack success label / input / model (privacy lab)"], rows), ""]
        rows = []
        for c in ok:
            cats = c["enclave_seconds_by_category"]
            rows.append([f"`{c['protocol']}`"] + [_ms(cats.get(k, 0.0)) for k in ALL_CATEGORIES])
        if rows:
            out += ["Enclave ms per step by category (mean of timed steps):", "",
                    _table(["protocol", *ALL_CATEGORIES], rows), ""]
        rows = []
        for c in ok:
            cm = c["cost_model"]
            if not cm.get("available"):
                rows.append([f"`{c['protocol']}`", cm.get("reason", "no cost model")] + ["-"] * 8)
                continue
            track = c["projections"].get("enclave_tracking", {})
            loc, dev = c["projections"]["local"], c["projections"][profile]
            sgx = c["modelled_sgx"]
            rows.append([f"`{c['protocol']}`", _si(cm["enclave_flops"], "FLOP"), _si(cm["enclave_elementwise"]),
                         _si(cm["worker_flops"], "FLOP"), str(cm["round_trips"]),
                         _x(track.get("measured_over_modelled")),
                         f"{loc['steps_per_second']:.3g}" if loc["steps_per_second"] else "-",
                         f"{dev['steps_per_second']:.3g}" if dev["steps_per_second"] else "-",
                         f"{sgx['transitions_per_step']} / {_ms(sgx['transition_seconds_per_step'])} ms",
                         _paging(dev)])
        if rows:
            out += ["Cost model per step beside the measurement (projections are **projections**, not measurements):",
                    "", _table(["protocol", "enclave FLOPs", "enclave elementwise", "worker FLOPs", "round trips",
                                "measured / modelled enclave time", "projected steps/s (local)",
                                f"projected steps/s ({profile})", "SGX transitions / modelled cost per step (this run)",
                                f"modelled EPC paging ms/step ({profile})"], rows), ""]
        for c in group:
            if c["status"] != "ok":
                out += [f"- **`{c['protocol']}` failed**: {c['reason']}"]
        if any(c["status"] != "ok" for c in group):
            out.append("")
    return out


def render(results: dict) -> str:
    meta = results["meta"]
    cells = results["cells"]
    order = results["protocols_requested"]
    ok = sum(c["status"] == "ok" for c in cells)
    profile = results["protocols"] and results["profile"]
    prof = results["profiles"][profile]
    local = results["profiles"]["local"]
    lines = [f"# blindtrain bench — preset `{results['preset']['name']}`", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date_utc']}",
             f"- device: {meta['device_label']} (worker device `{results['worker_device']}`, "
             f"{meta['torch_threads']} torch threads)",
             f"- versions: python {meta['versions']['python']}, torch {meta['versions']['torch']}, "
             f"blindtrain {meta['versions']['blindtrain']} (commit {meta['versions']['git_commit'] or '-'})",
             f"- cells: {ok} ok, {len(cells) - ok} failed, {results['wall_seconds']:.0f} s in all",
             f"- protocols: {', '.join(f'`{p}`' for p in order)}", "",
             "## Caveats", ""] + [f"- {n}" for n in _caveats(results)] + [
             "", "## Protocols compared (theory)", "",
             f"Costs from each protocol's analytic cost model over the models of this run; the speed column is a "
             f"**projection** on the device profile `{profile}` ({prof['description']}).", "",
             _theory_table(results), "",
             "Device profiles used for projections (the `local` one is calibrated at start-up; the other is assumed):",
             "", _table(["profile", "enclave cores", "enclave GFLOP/s", "enclave Gelem/s", "worker TFLOP/s",
                         "link GB/s",
                         "transition cycles", "EPC page cycles", "EPC"],
                        [[p["name"], str(p.get("enclave_cores", "-")), f"{p['enclave_gflops']:.3g}",
                          f"{p['enclave_gelems']:.3g}",
                          f"{p['worker_tflops']:.3g}", f"{p['link_gbps']:.3g}", str(p["transition_cycles"]),
                          str(p["page_cycles"]), _bytes(p["epc_bytes"]) if p["epc_bytes"] < 2**60 else "unbounded"]
                         for p in (local, prof)]), "",
             "## Measured, per model", ""]
    for model in dict.fromkeys(c["model"] for c in cells):
        lines += _model_section(results, model, [c for c in cells if c["model"] == model], order)
    lines += ["## Does the cost model order the protocols as the measurement does?", "",
              "Generated: for each model, batch and mode, protocols ranked by measured median steps/s and by the "
              "cost model's projected step time. Every pair ranked differently is listed with the reason.", ""]
    checks = results["ordering"]
    for profile_name in results["profiles"]:
        mine = [c for c in checks if c["profile"] == profile_name]
        agree = sum(c["agree"] for c in mine)
        lines += [f"**against the `{profile_name}` projection**: {agree} of {len(mine)} groups agree.", ""]
        for c in mine:
            head = (f"- {c['model']}, batch {c['batch']}, {c['mode']}: measured {' > '.join(c['measured_order'])}; "
                    f"modelled {' > '.join(c['modelled_order'])}")
            lines.append(head + (" — agree" if c["agree"] else ""))
            for inv in c["inversions"]:
                lines.append(f"  - `{inv['measured_faster']}` measured faster than `{inv['modelled_faster']}`: "
                             f"{inv['explanation']}")
            if c["not_modelled"]:
                lines.append(f"  - not ranked (no cost model): {', '.join(c['not_modelled'])}")
        lines.append("")
    lines += ["## Does measured enclave time track modelled enclave work?", "",
              "Measured enclave seconds per step against the cost model's enclave FLOPs and elementwise operations at "
              "the calibrated local rates, over every cell of a protocol (see `enclave_tracking.png`). A ratio near 1 "
              "means the cost model accounts for the enclave's time; a rank correlation near 1 means it orders the "
              "cells correctly even where unmodelled work (non-bilinear layers, optimizer, Python overhead) adds a "
              "constant.", ""]
    rows = []
    for t in results.get("tracking", []):
        if not t["cells"]:
            rows.append([f"`{t['protocol']}`", "0", "- (no modelled enclave work or no cost model)", "-", "-"])
            continue
        rho = t["spearman"]
        verdict = ("too few cells" if rho is None else "tracks" if rho >= TRACKS_RHO else
                   "weak: uniform per-FLOP and per-element rates miss per-op efficiency (convolutions vs matmuls, "
                   "CSPRNG and mod-p elementwise work) and fixed per-step overheads; CPU noise adds to it")
        rows.append([f"`{t['protocol']}`", str(t["cells"]),
                     f"{t['ratio_median']:.3g} [{t['ratio_min']:.3g}–{t['ratio_max']:.3g}]",
                     "-" if rho is None else f"{rho:.2f}", verdict])
    lines += [_table(["protocol", "cells", "measured / modelled enclave time, median [min–max]",
                      "rank correlation (Spearman)", "verdict"], rows), ""]
    lines += field_engine.markdown(results.get("field_engine"))
    lines += concurrency.markdown(results.get("concurrency"))
    lines += transports.markdown(results.get("transports"))
    lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots.PLOTS] + [""]
    lines += ["## Privacy and integrity, per protocol", ""]
    from ..attacks.report import measured, protocol_lines

    lab = measured()
    lines += ["Measured by the privacy lab (`make privacy`; attack success against chance, the lab's commands "
              "beside each figure), then what each protocol asserts:", ""]
    for name in results["protocols"]:
        lines += ["```", name, *protocol_lines(name, lab), "```"]
    lines.append("")
    for name, info in results["protocols"].items():
        summary = next((c.get("protocol_summary") for c in cells
                        if c["protocol"] == name and c["status"] == "ok"), None)
        lines.append(f"- `{name}` ({info['source']}): private: {info['private']}; leaks: {info['leaks']}; "
                     f"integrity: {info['integrity']}." + (f" Summary: `{json.dumps(summary, default=str)}`"
                                                           if summary else ""))
    lines.append("")
    return "\n".join(lines)


def _jsonable(results: dict) -> dict:
    return json.loads(json.dumps(results, default=str))


def write(results: dict, out_dir: str | os.PathLike, *, command: list[str] | None = None) -> dict:
    """Write ``results.json``, the PNG plots and ``report.md`` to ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results.setdefault("meta", metadata(results["worker_device"], command))
    results["ordering"] = ordering_check(results)
    results["tracking"] = tracking_summary(results)
    written = {"plots": [str(p) for p in plots.write_all(results, out)]}
    (out / "results.json").write_text(json.dumps(_jsonable(results), indent=1) + "\n")
    (out / "report.md").write_text(render(results))
    written["results"] = str(out / "results.json")
    written["report"] = str(out / "report.md")
    return written


__all__ = ["write", "render", "ordering_check", "metadata", "CATEGORIES"]
