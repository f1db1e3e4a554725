"""The lab's report and its readers: ``blindtrain protocols`` shows measured figures with their command."""

from __future__ import annotations

import json

from blindtrain.attacks import report


def _results(tmp_path):
    attack = {"command": "blindtrain attack --transcript t.npz --role main --metrics m.json --ground-truth g.gt",
              "messages": 12, "knowledge": {"public_split": "digits test split, first half"}, "attacks": [],
              "best": {"labels": {"attack": "a", "metric": "accuracy", "value": 0.875, "chance": 0.11},
                       "inputs": {"attack": "b", "metric": "exact_fraction", "value": 0.5, "chance": 0.0}}}
    nothing = {"command": "blindtrain attack --transcript e.npz", "messages": 0, "nothing_to_attack": "nothing crossed",
               "knowledge": {}, "attacks": [], "best": {}}
    cells = [{"config": "plain", "protocol": "plain", "role": "main", "run_command": "blindtrain train --protocol plain",
              "attack_command": attack["command"], "offload_ratio": 0.5, "report": attack},
             {"config": "enclave", "protocol": "enclave", "role": "main", "run_command": "blindtrain train",
              "attack_command": nothing["command"], "offload_ratio": 1.0, "report": nothing}]
    results = {"preset": "quick", "settings": {}, "seconds": 1.0, "command": "python scripts/privacy_lab.py",
               "cells": cells}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    return results, path


def test_report_table_has_every_cell_with_its_command(tmp_path):
    results, _ = _results(tmp_path)
    written = report.write_report(results, tmp_path)
    text = written["report"].read_text()
    assert "| plain | main | 0.500 | 0.875 (chance 0.110) | 0.500 (chance 0.000) | no claim | no claim | [1] |" in text
    assert "nothing crosses" in text and results["cells"][0]["attack_command"] in text
    assert written["plot"].read_bytes()[:4] == b"\x89PNG"


def test_protocols_shows_measured_figures_or_not_measured(cli, tmp_path, monkeypatch):
    _, path = _results(tmp_path)
    monkeypatch.setenv(report.RESULTS_ENV, str(path))
    output = cli("protocols").output
    assert "labels 0.875 (chance 0.110); inputs 0.500 (chance 0.000)" in output
    assert "blindtrain attack --transcript t.npz" in output
    assert "asserted leaks:" in output
    monkeypatch.setenv(report.RESULTS_ENV, str(tmp_path / "absent.json"))
    assert "not measured" in cli("protocols").output
    assert report.privacy_cell("plain", report.measured(path)) == "0.88 / 0.50 / -"


def test_the_lab_attacks_every_registered_protocol(monkeypatch):
    """A protocol added later is in the lab without anyone editing the script (its default configuration)."""
    import importlib.util
    import sys
    from pathlib import Path

    from blindtrain.protocols import load_all

    path = Path(__file__).resolve().parents[2] / "scripts" / "privacy_lab.py"
    spec = importlib.util.spec_from_file_location("privacy_lab", path)
    lab = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "privacy_lab", lab)  # dataclasses look their module up
    spec.loader.exec_module(lab)
    covered = {c.protocol for c in lab.configs()}
    assert set(load_all()) <= covered
    assert {"plain", "enclave", "otp", "slalom", "tempo"} <= covered
    tempo_options = [c.options for c in lab.configs() if c.protocol == "tempo"]
    assert {"rotate_every": 1} in tempo_options and {"workers": 2} in tempo_options


def test_a_figure_at_chance_comes_with_the_argument_or_a_flag():
    def cell(kinds, value):
        best = {"labels": {"attack": "a", "metric": "accuracy", "value": value, "chance": 0.1}}
        return {"config": "p", "role": "main", "report": {"kinds": kinds, "best": best, "attacks": []}}

    masked, clear, leaking = cell({"masked": 3}, 0.1), cell({"clear": 3}, 0.12), cell({"clear": 3}, 1.0)
    lines = report.arguments([masked, clear, leaking])
    assert len(lines) == 2
    assert "one-time pads" in lines[0] and "NOT EXPLAINED" in lines[1]
