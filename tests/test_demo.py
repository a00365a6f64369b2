"""The main job: `memalign-mcp demo` drives the server over stdio through a real MCP client."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from memalign_mcp.seed_scenario import ALIGNMENT, INSTRUCTIONS
from memalign_mcp.settings import PACKAGED_CONFIG_DIR
from scripted_model import ChatCall, Reply, ScriptedError, ScriptedModelServer
from support_desk_model import support_desk


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


def _demo(tmp_path: Path, model: ScriptedModelServer, *flags: str) -> subprocess.CompletedProcess[str]:
    """`memalign-mcp demo` against the scripted model, with a config file of ours that turns retries off."""
    config = tmp_path / "mine.toml"
    config.write_text("[model]\nmax_retries = 0\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMALIGN_")}
    env |= {"MEMALIGN_MODEL": "openai/scripted", "MEMALIGN_API_BASE": model.base_url, "MEMALIGN_API_KEY": "x"}
    return subprocess.run(
        [sys.executable, "-m", "memalign_mcp.cli", "demo", "--config", str(config), *flags],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _no_distillation(call: ChatCall) -> Reply:
    """Judges like the support-desk model; every distillation request fails."""
    if call.schema_name == "guidelines":
        return ScriptedError(500, "reflection is down")
    return support_desk(call)


def test_demo_reports_a_failed_distillation_and_honours_config_data_dir_and_log_level(
    tmp_path: Path, model: ScriptedModelServer
) -> None:
    model.reset(_no_distillation)
    store = tmp_path / "store"
    done = _demo(tmp_path, model, "--data-dir", str(store), "--log-level", "INFO")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "Judge model: openai/scripted" in out
    assert f"distillation FAILED for {len(ALIGNMENT)} item(s)" in out
    assert f"Distillation failed for {len(ALIGNMENT)} item(s)" in out  # add_feedback's own note, passed on
    assert "no reflection model" not in out
    assert f"The judge's store is in {store} (kept)" in out
    assert (store / "lancedb").is_dir()
    assert "judge engine ready" in done.stderr  # the server logged at INFO, as asked
    # --config reached the server: with retries off, each failed distillation is one request, not three.
    assert sum(call.schema_name == "guidelines" for call in model.calls) == 1


def test_a_failing_step_ends_the_demo_with_one_line_naming_the_step(
    tmp_path: Path, model: ScriptedModelServer
) -> None:
    model.reset(lambda call: ScriptedError(500, "the judge model is down"))
    done = _demo(tmp_path, model)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("memalign-mcp demo: step 2 (baseline: score before any feedback) failed after")
    assert "score_response failed" in lines[0]
