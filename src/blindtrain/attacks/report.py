"""The privacy lab's report: a table of attack × protocol (each cell with its command) and the plot users
choose from — enclave time (offload ratio) against attack success, per protocol.

Also the reader :func:`measured` that ``blindtrain protocols`` and ``blindtrain bench`` use to show these
figures beside what each protocol asserts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .registry import TARGETS

#: the headline per target, in words, for the table's header
HEADLINES = {
    "labels": "labels: per-row accuracy (resolved, else up to class permutation)",
    "inputs": "inputs: fraction of images recovered exactly",
    "model": "model: stolen model's prediction agreement with the victim",
    "gradients": "gradients: mean cosine with the true gradients",
}
RESULTS_ENV = "BLINDTRAIN_PRIVACY_RESULTS"


def cell_text(report: dict, target: str) -> str:
    """One table cell: the best attack's headline against chance, or why there is none."""
    if report.get("nothing_to_attack"):
        return "nothing crosses"
    if report.get("error"):
        return "run failed"
    headline = report.get("best", {}).get(target)
    if headline is None:
        planned = [a for a in report.get("attacks", []) if target in a["targets"]]
        if planned and all(a.get("skipped") for a in planned):
            return "not run"
        return "no claim"
    value, chance = headline["value"], headline.get("chance")
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    return text + (f" (chance {chance:.3f})" if isinstance(chance, float) else "")


def _details(report: dict) -> list[str]:
    lines = []
    for attack in report.get("attacks", []):
        if attack.get("skipped"):
            lines.append(f"  - `{attack['attack']}`: skipped ({attack['skipped']})")
            continue
        if attack.get("error"):
            lines.append(f"  - `{attack['attack']}`: FAILED ({attack['error']})")
            continue
        for target, figures in attack.get("scores", {}).items():
            shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in figures.items() if k != "headline")
            lines.append(f"  - `{attack['attack']}` {target}: {shown}")
    return lines


#: why a view of this kind of message can hold an attack to chance (the report's argument, per kind)
KIND_REASONS = {
    "masked": "one-time pads uniform in F_p hide every masked operand, information-theoretically, per message",
    "pad": "the pads are uniform and independent of the data",
    "share": "each additive share alone is uniform in F_p",
    "obfuscated": "permutations, signs and power-of-two scales hide the obfuscated operands from the attacks "
                  "in this tree",
}
MARGIN = 0.05


def arguments(cells: list[dict]) -> list[str]:
    """One line per cell and target where the best attack stays within ``MARGIN`` of chance: why, from the kinds
    of message the view holds — or a flag where the view holds clear data and nothing explains it."""
    lines = []
    for cell in cells:
        report = cell["report"]
        if report.get("nothing_to_attack") or report.get("error"):
            continue
        hidden = [k for k in report.get("kinds", {}) if k in KIND_REASONS]
        skipped = [a["attack"] for a in report.get("attacks", []) if a.get("skipped")]
        for target in TARGETS:
            headline = report.get("best", {}).get(target)
            if headline is None or not isinstance(headline.get("value"), float) or headline.get("chance") is None:
                continue
            if headline["value"] > headline["chance"] + MARGIN:
                continue
            visible = [k for k in ("public", "clear") if k in report.get("kinds", {})]
            if target in ("model", "gradients") and visible:
                why = f"NOT EXPLAINED: weights cross in {'/'.join(visible)} messages, so a stronger attack exists"
            else:
                why = "; ".join(KIND_REASONS[k] for k in hidden) or "NOT EXPLAINED: the view holds only public or clear data"
            if skipped:
                why += f" (not run here: {', '.join(skipped)})"
            lines.append(f"- {cell['config']} [{cell['role']}], {target} at chance "
                         f"({headline['value']:.3f} vs {headline['chance']:.3f}): {why}.")
    return lines


def write_report(results: dict, out: Path) -> dict:
    """``report.md`` and ``offload_vs_attack.png`` in ``out`` from the lab's ``results``."""
    out = Path(out)
    plot = plot_offload_vs_attack(results["cells"], out / "offload_vs_attack.png")
    cells = results["cells"]
    first = next((c["report"] for c in cells if c["report"].get("knowledge")), {})
    knowledge = first.get("knowledge", {})
    lines = [
        "# Privacy lab: what each protocol leaks, measured",
        "",
        f"Preset `{results['preset']}` ({results['settings']}), {len(cells)} cells, {results['seconds']:.0f} s wall, "
        f"{results.get('cpu_seconds', float('nan')):.0f} s of CPU (wall time grows with other load on the machine). "
        f"Regenerate: `{results['command']}` (or `make privacy`).",
        "",
        "The attacker is one untrusted worker role, honest but curious. It knows the transcript of its role "
        "(every tensor it received), the architecture and hyper-parameters, and a public split: "
        f"{knowledge.get('public_split', '-')}. Models are scored on the other half "
        "of the test split. Ground truth (sealed by the trusted side) is read only by the scorer.",
        "",
        "Each cell: the strongest attack's success, with the chance level in brackets (labels: the largest "
        "class prior; inputs: 0 exact with the public mean image; model: a same-architecture model trained on "
        "the public split only; gradients: cosine 0). `[n]` points to the commands that measured the row.",
        "",
        "| protocol | role | offload ratio | " + " | ".join(HEADLINES[t] for t in TARGETS) + " | commands |",
        "|---|---|---|" + "---|" * len(TARGETS) + "---|",
    ]
    for n, cell in enumerate(cells, 1):
        ratio = f"{cell['offload_ratio']:.3f}" if cell.get("offload_ratio") is not None else "-"
        lines.append(f"| {cell['config']} | {cell['role']} | {ratio} | "
                     + " | ".join(cell_text(cell["report"], t) for t in TARGETS) + f" | [{n}] |")
    lines += ["", "Offload ratio: enclave_seconds(protocol) / enclave_seconds(enclave) of the same runs (lower: "
              "more of the trusted side's work moved to the worker); slalom's against `predict --protocol enclave` "
              "on the same checkpoint (wall minus waits on the worker, as the bench times inference). These come "
              "from one short run per protocol on a model this small (an MLP on 8x8 digits), so they are noisy on a "
              "shared machine and a ratio above 1 (the protocol costs the trusted side more than doing all the work "
              "itself) is common; `blindtrain bench` measures offload ratios with steps interleaved on models where "
              "offloading pays. This lab measures what leaks.", "",
              "A cell reads *no claim* when no attack in this tree recovers that secret from the view (the "
              "protocol-specific attacks are listed per row below, with *skipped* where their module is absent).",
              "", f"![offload ratio vs attack success]({plot.name})", "",
              "## Why a figure is at chance", "",
              "Where no attack does better than chance, the argument from what the view holds "
              "(a protocol below what a simple attack reaches elsewhere needs one):", "", *arguments(cells), "",
              "## Commands and every figure", ""]
    for n, cell in enumerate(cells, 1):
        lines.append(f"[{n}] **{cell['config']}**, role `{cell['role']}`")
        lines.append(f"  - run: `{cell['run_command']}`")
        if cell.get("baseline_command"):
            lines.append(f"  - offload baseline: `{cell['baseline_command']}`")
        lines.append(f"  - attack: `{cell['attack_command']}`")
        if cell["report"].get("nothing_to_attack"):
            lines.append(f"  - {cell['report']['nothing_to_attack']}: nothing to attack")
        if cell["report"].get("error"):
            lines.append(f"  - {cell['report']['error']}")
        lines += _details(cell["report"])
        lines.append("")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {"report": out / "report.md", "plot": plot}


def success(report: dict, target: str) -> float | None:
    """The best attack's headline value for ``target`` (0 when nothing crosses), or ``None``."""
    if report.get("nothing_to_attack"):
        return 0.0
    headline = report.get("best", {}).get(target)
    value = headline and headline.get("value")
    return value if isinstance(value, (int, float)) else None


def plot_offload_vs_attack(cells: list[dict], path: Path) -> Path:
    """Scatter: x = offload ratio, y = attack success, one marker per target, one label per protocol cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = {"labels": "o", "inputs": "s", "model": "^"}
    for target, marker in markers.items():
        xs, ys = [], []
        for cell in cells:
            value = success(cell["report"], target)
            if value is not None and cell.get("offload_ratio") is not None:
                xs.append(cell["offload_ratio"])
                ys.append(value)
        ax.scatter(xs, ys, marker=marker, s=60, alpha=0.7, label=f"{target} attack success")
    labelled = [c for c in cells if c.get("offload_ratio") is not None]
    for rank, cell in enumerate(sorted(labelled, key=lambda c: c["offload_ratio"])):
        ax.annotate(f"{cell['config']} [{cell['role']}]", (cell["offload_ratio"], 1.04 + 0.1 * (rank % 5)),
                    fontsize=7, ha="center", va="bottom")
        ax.axvline(cell["offload_ratio"], color="0.85", lw=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_ylim(-0.05, 1.6)
    ax.set_xlabel("offload ratio: enclave seconds / enclave-only seconds (log; lower = more offloaded)")
    ax.set_ylabel("attack success (labels: accuracy; inputs: exact; model: agreement)")
    ax.set_title("Enclave time vs what a worker recovers (privacy lab)")
    ax.legend(loc="center right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def default_results_path() -> Path:
    """``$BLINDTRAIN_PRIVACY_RESULTS``, else the repository's ``docs/privacy/results.json``."""
    env = os.environ.get(RESULTS_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[3] / "docs" / "privacy" / "results.json"


def measured(path: str | os.PathLike | None = None) -> dict[str, list[dict]]:
    """protocol -> its lab cells ``{config, role, figures: {target: text}, command}``; empty if not measured."""
    path = Path(path) if path is not None else default_results_path()
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    out: dict[str, list[dict]] = {}
    for cell in results.get("cells", []):
        out.setdefault(cell["protocol"], []).append({
            "config": cell["config"], "role": cell["role"], "offload_ratio": cell.get("offload_ratio"),
            "figures": {t: cell_text(cell["report"], t) for t in TARGETS},
            "success": {t: success(cell["report"], t) for t in TARGETS},
            "command": cell["attack_command"], "run_command": cell["run_command"],
            "lab_command": results.get("command")})
    return out


def protocol_lines(name: str, cells: dict[str, list[dict]]) -> list[str]:
    """``blindtrain protocols``' measured lines for protocol ``name`` (``cells`` from :func:`measured`)."""
    if not cells:
        return ["  measured leakage:    not measured (no privacy-lab results; run `make privacy`)"]
    rows = cells.get(name)
    if not rows:
        return ["  measured leakage:    not measured in the privacy lab"]
    lines = [f"  measured leakage:    (privacy lab: {rows[0]['lab_command']})"]
    for row in rows:
        figures = "; ".join(f"{t} {row['figures'][t]}" for t in TARGETS)
        lines.append(f"    {row['config']} [{row['role']}]: {figures}")
        lines.append(f"      measured by: {row['run_command']} && {row['command']}")
    return lines


def privacy_cell(protocol: str, cells: dict[str, list[dict]] | None = None) -> str:
    """The bench's privacy column for ``protocol``: the lab's label / input / model attack success for the
    protocol's default configuration, main role (``-`` targets: no claim; or ``not measured``)."""
    cells = measured() if cells is None else cells
    rows = cells.get(protocol)
    if not rows:
        return "not measured"
    row = next((r for r in rows if r["role"] == "main"), rows[0])

    def show(target: str) -> str:
        value = row["success"][target]
        return "-" if value is None else f"{value:.2f}"

    return f"{show('labels')} / {show('inputs')} / {show('model')}"


def plot_bench_offload_vs_attack(bench_cells: list[dict], path: Path, lab: dict[str, list[dict]] | None = None) -> Path:
    """The bench's picture users choose from: per protocol, the bench's median offload ratio (x) against the
    privacy lab's attack success (y: labels, inputs, model) for the protocol's default configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lab = measured() if lab is None else lab
    fig, ax = plt.subplots(figsize=(8, 5))
    ratios: dict[str, list[float]] = {}
    for cell in bench_cells:
        if cell.get("status") == "ok" and cell.get("offload_ratio"):
            ratios.setdefault(cell["protocol"], []).append(cell["offload_ratio"])
    plotted = False
    for target, marker in (("labels", "o"), ("inputs", "s"), ("model", "^")):
        xs, ys, names = [], [], []
        for protocol, values in ratios.items():
            rows = lab.get(protocol)
            if not rows:
                continue
            row = next((r for r in rows if r["role"] == "main"), rows[0])
            if row["success"][target] is not None:
                xs.append(sorted(values)[len(values) // 2])
                ys.append(row["success"][target])
                names.append(protocol)
        if xs:
            plotted = True
            ax.scatter(xs, ys, marker=marker, s=70, alpha=0.7, label=f"{target} attack success")
            for x, y, name in zip(xs, ys, names):
                ax.annotate(name, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    if not plotted:
        ax.text(0.5, 0.5, "no privacy-lab results (run `make privacy`)\nor no offload ratios in this bench run",
                ha="center", va="center", transform=ax.transAxes)
    else:
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.set_ylim(-0.05, 1.1)
    ax.set_xlabel("offload ratio (this bench: enclave s / enclave-only s, median over cells; log)")
    ax.set_ylabel("attack success (privacy lab, mlp/digits)")
    ax.set_title("Enclave time vs attack success, per protocol")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
