"""The main job: `memalign-mcp demo` drives the server over stdio through a real MCP client."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from memalign_mcp.seed_scenario import INSTRUCTIONS
from memalign_mcp.settings import PACKAGED_CONFIG_DIR


def test_shipped_judge_file_matches_the_demo_spec() -> None:
    shipped = tomllib.loads((PACKAGED_CONFIG_DIR / "judges" / "helpfulness.toml").read_text(encoding="utf-8"))
    assert shipped["instructions"] == INSTRUCTIONS  # else the demo's create_judge would be refused


def test_demo_runs_the_whole_workflow_and_says_it_has_no_model(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMALIGN_")}
    done = subprocess.run(
        [sys.executable, "-m", "memalign_mcp.cli", "demo"],
        cwd=tmp_path,  # not the checkout: the shipped config must be found from anywhere
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "runs from memory alone, WITHOUT a model" in out
    for step in range(1, 9):
        assert f"Step {step}:" in out
    assert "PERFORMANCE COMPARISON" in out
    assert "removed ['sweater']" in out
    assert "episodic memory now holds 4 items" in out
    assert "sweater" not in out.split("episodic memory now holds", 1)[1].split("\n", 1)[0]
