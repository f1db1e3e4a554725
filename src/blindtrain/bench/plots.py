"""The bench's PNG plots (matplotlib, Agg backend): throughput and bytes per step against model
size, the enclave-time breakdown per protocol, and measured against modelled enclave time."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .harness import ALL_CATEGORIES  # noqa: E402

COLORS = {"plain": "#7f7f7f", "enclave": "#d62728", "otp": "#1f77b4", "slalom": "#2ca02c", "tempo": "#9467bd"}
EXTRA = ["#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
CAT_COLORS = dict(zip(ALL_CATEGORIES, ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#c7c7c7"]))


def _color(protocol: str, order: list[str]) -> str:
    if protocol in COLORS:
        return COLORS[protocol]
    others = [p for p in order if p not in COLORS]
    return EXTRA[others.index(protocol) % len(EXTRA)] if protocol in others else "#000000"


def _ok(cells):
    return [c for c in cells if c["status"] == "ok"]


def _smallest_batch(cells):
    """For each (protocol, model, mode): the cell with the smallest batch (one point per model)."""
    best = {}
    for c in _ok(cells):
        key = (c["protocol"], c["model"], c["mode"])
        if key not in best or c["batch"] < best[key]["batch"]:
            best[key] = c
    return list(best.values())


def size(cell) -> float:
    """Model size on the x axis: bilinear FLOPs of one training step, per sample (from the cost tracer)."""
    flops = cell.get("modelled_training_flops")
    return flops / cell["batch"] if flops else float(cell.get("params") or 1)


SIZE_LABEL = "model size: bilinear FLOPs per sample per training step (log)"


def _modes(cells):
    return [m for m in ("train", "infer") if any(c["mode"] == m for c in cells)]


def throughput(results: dict, path: Path) -> Path:
    cells = _smallest_batch(results["cells"])
    protocols = results["protocols_requested"]
    modes = _modes(cells) or ["train"]
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.8), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        labelled = {}
        for p in protocols:
            pts = sorted((size(c), c["samples_per_second"]["median"], c["samples_per_second"]["min"],
                          c["samples_per_second"]["max"], c["model"]) for c in cells
                         if c["protocol"] == p and c["mode"] == mode)
            if not pts:
                continue
            xs = [q[0] for q in pts]
            ys = [q[1] for q in pts]
            err = [[q[1] - q[2] for q in pts], [q[3] - q[1] for q in pts]]
            ax.errorbar(xs, ys, yerr=err, marker="o", ms=4, capsize=2, label=p, color=_color(p, protocols))
            for q in pts:
                labelled[q[4]] = q[0]
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(SIZE_LABEL)
        ax.set_ylabel("samples / s (median, bars: min-max; log)")
        ax.set_title(f"{'training' if mode == 'train' else 'inference'} throughput vs model size")
        ax.grid(True, which="both", alpha=0.3)
        ymin = ax.get_ylim()[0]
        for label, x in labelled.items():
            ax.annotate(label, (x, ymin), xytext=(0, 4), textcoords="offset points", rotation=90, fontsize=7,
                        ha="center", va="bottom", color="#555555")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no successful cells", transform=ax.transAxes, ha="center")
    fig.suptitle(f"measured on {results['meta']['device_label']}  (smallest batch per model)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def breakdown(results: dict, path: Path) -> Path:
    cells = _smallest_batch(results["cells"])
    protocols = results["protocols_requested"]
    models = list(dict.fromkeys(c["model"] for c in results["cells"]))
    panels = []
    for model in models:
        for mode in ("train", "infer"):
            group = [c for c in cells if c["model"] == model and c["mode"] == mode]
            if group:
                panels.append((model, mode, sorted(group, key=lambda c: protocols.index(c["protocol"]))))
    ncols = min(3, max(len(panels), 1))
    nrows = max(1, -(-len(panels) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (model, mode, group) in zip(axes.flat, panels):
        names = [c["protocol"] for c in group]
        bottom = [0.0] * len(group)
        for cat in ALL_CATEGORIES:
            vals = [1e3 * c["enclave_seconds_by_category"].get(cat, 0.0) for c in group]
            if any(v > 0 for v in vals):
                ax.bar(names, vals, bottom=bottom, color=CAT_COLORS[cat], label=cat)
                bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_title(f"{model}, batch {group[0]['batch']}, {mode}", fontsize=9)
        ax.set_ylabel("enclave ms / step")
        ax.tick_params(axis="x", labelsize=8, rotation=30)
        ax.grid(True, axis="y", alpha=0.3)
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="upper right", fontsize=8, ncol=len(handles))
    fig.suptitle("enclave time per step by category (mean of the timed steps)", fontsize=10, x=0.3)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bytes_per_step(results: dict, path: Path) -> Path:
    cells = _smallest_batch(results["cells"])
    protocols = results["protocols_requested"]
    modes = _modes(cells) or ["train"]
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.8), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        zero = []
        for p in protocols:
            pts = sorted((size(c), c["measured"]["bytes_to_worker"], c["measured"]["bytes_from_worker"])
                         for c in cells if c["protocol"] == p and c["mode"] == mode)
            if not pts:
                continue
            if all(q[1] + q[2] == 0 for q in pts):
                zero.append(p)
                continue
            color = _color(p, protocols)
            ax.plot([q[0] for q in pts], [max(q[1], 1) for q in pts], marker="o", ms=4, color=color,
                    label=f"{p} to worker")
            ax.plot([q[0] for q in pts], [max(q[2], 1) for q in pts], marker="s", ms=4, ls="--", color=color,
                    label=f"{p} from worker")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(SIZE_LABEL)
        ax.set_ylabel("bytes per step (log)")
        title = f"bytes crossing per {'training step' if mode == 'train' else 'inference batch'}"
        if zero:
            title += f"\n(0 bytes, not drawn: {', '.join(zero)})"
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def tracking(results: dict, path: Path) -> Path:
    """Measured enclave seconds per step against the cost model's enclave work at the local rates."""
    protocols = results["protocols_requested"]
    fig, ax = plt.subplots(figsize=(5.8, 5))
    lo, hi = float("inf"), 0.0
    for p in protocols:
        pts = [(c["projections"]["enclave_tracking"]["modelled_local_seconds"],
                c["projections"]["enclave_tracking"]["measured_seconds"]) for c in _ok(results["cells"])
               if c["protocol"] == p and c.get("projections", {}).get("enclave_tracking")]
        pts = [q for q in pts if q[0] > 0 and q[1] > 0]
        if not pts:
            continue
        ax.scatter([q[0] for q in pts], [q[1] for q in pts], s=16, label=p, color=_color(p, protocols))
        lo = min(lo, *(min(q) for q in pts))
        hi = max(hi, *(max(q) for q in pts))
    if hi > 0:
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls=":", label="measured = modelled")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("modelled enclave seconds / step (cost model at calibrated local rates)")
    ax.set_ylabel("measured enclave seconds / step (median)")
    ax.set_title("does measured enclave time track modelled enclave work?", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no cell with modelled enclave work", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def privacy(results: dict, path: Path) -> Path:
    """Offload ratio against the privacy lab's attack success (docs/privacy/results.json)."""
    from ..attacks.report import plot_bench_offload_vs_attack

    return plot_bench_offload_vs_attack(results["cells"], path)


PLOTS = {"throughput.png": throughput, "enclave_breakdown.png": breakdown, "bytes_per_step.png": bytes_per_step,
         "enclave_tracking.png": tracking, "offload_vs_attack.png": privacy}


def write_all(results: dict, out_dir: Path) -> list[Path]:
    written = []
    for name, fn in PLOTS.items():
        written.append(fn(results, out_dir / name))
    return written
