"""``rnnkit demo --quick`` runs end to end in seconds and writes its report."""

from __future__ import annotations

import json

import pytest

from rnnkit.cli import demo
from rnnkit.cli.main import main


def test_demo_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    report = json.loads((out / "summary.json").read_text())
    lm = report["stages"]["reber-lm"]
    assert lm["optimal_perplexity"] == pytest.approx(1.4983, abs=1e-4)
    assert 0.0 <= lm["grammatical_fraction"] <= 1.0 and lm["samples"] == 100
    for name in ("history.png", "perplexity.png", "steps.csv", "model/manifest.json"):
        assert (out / "reber-lm" / name).exists(), name
    assert "## reber-lm" in (out / "summary.md").read_text()
    assert "grammatical" in capsys.readouterr().out


def test_demo_stage_hook(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "STAGES", list(demo.STAGES))
    seen = []
    demo.add_stage("extra", lambda ctx: seen.append(ctx.quick) or {"ok": 1})
    with pytest.raises(ValueError, match="exists already"):
        demo.add_stage("extra", lambda ctx: {})
    assert main(["demo", "--quick", "--only", "extra", "--out", str(tmp_path), "--quiet"]) == 0
    assert seen == [True]
    assert json.loads((tmp_path / "summary.json").read_text())["stages"] == {"extra": {"ok": 1}}
    assert main(["demo", "--only", "nope", "--out", str(tmp_path)]) == 2
