"""The body of ``blindtrain bench`` (the click command in :mod:`blindtrain.cli` only parses)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..errors import UsageError
from . import harness, presets, projection, report


def run_bench(*, preset: str = "quick", models=None, protocols=None, batch_sizes=None, steps: int | None = None,
              device: str = "auto", out: str | Path = "bench-out", seed: int = 0,
              profile: str = projection.DEFAULT_PROFILE, cell_budget: float | None = None, progress: bool = True,
              command: list[str] | None = None, echo=print) -> dict:
    """Validate everything, run the cells, write the outputs; returns the results dict."""
    chosen = presets.select(presets.get(preset), models=models, batch_sizes=batch_sizes, steps=steps)
    names = harness.resolve_protocols(protocols)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if cell_budget is not None and cell_budget <= 0:
        raise UsageError(f"--cell-budget must be positive, got {cell_budget}")
    if profile not in projection.PROFILES:
        raise UsageError(f"unknown --profile {profile!r}; choose from {', '.join(projection.PROFILES)}")
    budget = cell_budget if cell_budget is not None else chosen.cell_budget_s
    cells = harness.plan(chosen, names)
    echo(f"bench {chosen.name}: {len(chosen.models)} model(s) x {len(names)} protocol(s) = {len(cells)} cells "
         f"({chosen.warmup} warm-up + {chosen.steps} timed steps each); protocols: {', '.join(names)}")
    start = time.perf_counter()
    results = harness.run(chosen, names, device=device, seed=seed, profile=profile, progress=progress,
                          echo=echo, cell_budget_s=budget)
    if {"otp", "slalom"} & set(names):  # the field engine's ratio to float32 (issue 12)
        from . import field_engine
        results["field_engine"] = field_engine.measure(
            device=results["worker_device"], echo=echo,
            shapes=field_engine.TINY_SHAPES if chosen.name == "tiny" else field_engine.SHAPES)
    if "tempo" in names and chosen.name != "tiny":  # concurrent workers: --workers 2 against 1 (issue 15)
        from . import concurrency
        results["concurrency"] = concurrency.measure(echo=echo)
    from . import transports  # per-message cost of each transport (issue 15); tiny: inproc only, no processes
    results["transports"] = transports.measure(
        settings=transports.FULL if chosen.name == "full" else transports.QUICK, echo=echo,
        transports=("inproc",) if chosen.name == "tiny" else transports.TRANSPORT_NAMES)
    written = report.write(results, out, command=command or sys.argv)
    failed = [c for c in results["cells"] if c["status"] != "ok"]
    bad_bytes = [c for c in results["cells"] if c["status"] == "ok" and c["checks"].get("bytes_ok") is False]
    echo(f"done in {time.perf_counter() - start:.0f} s: {len(results['cells']) - len(failed)} cells ok, "
         f"{len(failed)} failed; bytes measured = modelled in every cell with a cost model: "
         f"{'yes' if not bad_bytes else 'NO (' + ', '.join(c['protocol'] + '/' + c['model'] for c in bad_bytes) + ')'}")
    echo(f"wrote {written['report']}, {written['results']} and {len(written['plots'])} plots in {out}")
    return results
