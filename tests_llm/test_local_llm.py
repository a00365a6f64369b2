"""The model path against a real (tiny) model: SmolLM2-135M-Instruct served by llama.cpp on 127.0.0.1.

Run by `make test-llm`, which installs the model into a venv of its own and names its Python in
MEMALIGN_LLM_PYTHON; never part of `make test`. A 135M model judges near chance, so these tests assert that each
step completes and returns well-formed results, never quality. Each step prints how long it took, and a failure
says which step, after how long, and the tail of what it printed.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

REPO = Path(__file__).resolve().parent.parent
FEEDBACKQA = REPO.parent / "shared" / "datasets" / "feedbackqa" / "test.jsonl"
EVAL_ITEMS = 20
# Generous but bounded: with length limits in the schemas the demo took about 265 s and a score about 12 s
# on a shared 2-core machine; without them each score can take 3 x 60 s (timeout and retries) before failing.
START_TIMEOUT_S = 180
SMOKE_TIMEOUT_S = 600
DEMO_TIMEOUT_S = 900
EVAL_TIMEOUT_S = 900


def _say(text: str) -> None:
    print(f"[test-llm] {text}", file=sys.stderr, flush=True)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _read_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    """The first line the process prints, or '' if it prints none within the time or exits first."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            return ""
    return process.stdout.readline().strip()


@pytest.fixture(scope="session")
def model_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Start scripts/local_llm.py with the model venv's Python; the MEMALIGN_* variables that reach it."""
    python = os.environ.get("MEMALIGN_LLM_PYTHON")
    if not python:
        pytest.fail("MEMALIGN_LLM_PYTHON is not set: run these tests with `make test-llm`", pytrace=False)
    log = tmp_path_factory.mktemp("llm") / "llama-server.log"
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as log_file:
        process = subprocess.Popen(
            [python, str(REPO / "scripts" / "local_llm.py"), "--start-timeout", str(START_TIMEOUT_S)],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    try:
        ready = _read_line(process, START_TIMEOUT_S + 10)
        if not ready.startswith("ready "):
            log_text = log.read_text(encoding="utf-8", errors="replace")
            pytest.fail(
                f"step 'start llama.cpp' failed after {time.perf_counter() - started:.1f} s "
                f"(printed {ready!r}); its log ends:\n{_tail(log_text)}",
                pytrace=False,
            )
        base_url = ready.split()[1]
        _say(f"start llama.cpp: ok in {time.perf_counter() - started:.1f} s at {base_url} (log: {log})")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEMALIGN_")}
        yield env | {
            "MEMALIGN_MODEL": "openai/smollm2",
            "MEMALIGN_API_BASE": base_url,
            "MEMALIGN_API_KEY": "x",
            "XDG_CONFIG_HOME": str(tmp_path_factory.mktemp("no-user-config")),
        }
    finally:
        from memalign_mcp.llm import (
            close_cached_clients,
        )  # the smoke test's litellm clients, opened in-process

        close_cached_clients()
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _step(
    name: str, args: list[str], env: dict[str, str], timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """Run `memalign-mcp ARGS`; fail naming the step, its time and its output's tail unless it exits 0."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "memalign_mcp.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        pytest.fail(
            f"step {name!r} timed out after {timeout_s:.0f} s; it printed:\n{_tail(out)}", pytrace=False
        )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        pytest.fail(
            f"step {name!r} failed (exit {done.returncode}) after {elapsed:.1f} s.\nstderr:\n{_tail(done.stderr)}"
            f"\nstdout:\n{_tail(done.stdout)}",
            pytrace=False,
        )
    _say(f"{name}: ok in {elapsed:.1f} s")
    return done


def test_smoke_one_score_and_one_add_with_distillation(model_env: dict[str, str], tmp_path: Path) -> None:
    from mcp import Client
    from mcp_types import CallToolResult

    from memalign_mcp.app import build_server
    from memalign_mcp.settings import load_settings

    settings = load_settings(env=model_env, overrides={"store.data_dir": str(tmp_path)})
    item = {"inputs": "How do I reset my password?", "outputs": "Click 'Forgot password' on the login page."}
    feedback = item | {"value": True, "rationale": "It tells the user exactly where to click."}
    calls: list[tuple[str, dict[str, Any]]] = [
        ("score_response", {"judge": "helpfulness", **item}),
        ("add_feedback", {"judge": "helpfulness", "feedback": [feedback]}),
    ]

    async def smoke() -> list[tuple[str, CallToolResult, float]]:
        # Results are checked after the client is closed, so a failure reads as one message, not a task group's.
        done: list[tuple[str, CallToolResult, float]] = []
        with anyio.fail_after(SMOKE_TIMEOUT_S):
            async with Client(build_server(settings), read_timeout_seconds=SMOKE_TIMEOUT_S) as client:
                for tool, arguments in calls:
                    started = time.perf_counter()
                    result = await client.call_tool(tool, arguments)
                    done.append((tool, result, time.perf_counter() - started))
                    if result.is_error:
                        break
        return done

    results: dict[str, dict[str, Any]] = {}
    for tool, result, elapsed in anyio.run(smoke):
        if result.is_error:
            text = " ".join(getattr(block, "text", "") for block in result.content)
            pytest.fail(f"step 'smoke {tool}' failed after {elapsed:.1f} s: {text}", pytrace=False)
        results[tool] = result.structured_content or {}
        _say(f"smoke {tool}: ok in {elapsed:.1f} s")
    score, added = results["score_response"], results["add_feedback"]
    distilled = (
        f"{len(added['guidelines_added'])} guideline(s)" if not added["pending_ids"] else added["note"]
    )
    _say(f"  smoke verdict {score['value']!r}; distillation: {distilled}")
    assert score["model"] == "openai/smollm2"
    assert isinstance(score["value"], bool)  # the helpfulness judge gives bool verdicts
    assert score["rationale"].strip()
    # Distillation either added guidelines or left the item pending with a note saying why: never silently.
    assert added["guidelines_added"] or (added["pending_ids"] == added["feedback_ids"] and added["note"])


def test_demo_completes(model_env: dict[str, str], tmp_path: Path) -> None:
    done = _step("demo", ["demo", "--data-dir", str(tmp_path / "demo")], model_env, DEMO_TIMEOUT_S)
    for line in done.stdout.splitlines():
        if line.startswith(("  (step", "  distillation", "Done in")):
            _say(f"  demo {line.strip()}")
    assert "Judge model: openai/smollm2" in done.stdout
    assert "Step 8: list judges" in done.stdout
    assert "removed ['sweater']" in done.stdout


def _feedbackqa(path: Path, count: int) -> None:
    """The first `count` majority-labelled FeedbackQA test items as {inputs, outputs, value}; no copy in the repo."""
    rows: list[str] = []
    with FEEDBACKQA.open(encoding="utf-8") as source:
        for line in source:
            item = json.loads(line)
            if item["label"] is None:  # raters split evenly: no verdict to agree with
                continue
            rows.append(
                json.dumps({"inputs": item["inputs"], "outputs": item["outputs"], "value": item["label"]})
            )
            if len(rows) == count:
                break
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_a_20_item_feedbackqa_eval_completes(model_env: dict[str, str], tmp_path: Path) -> None:
    dataset = tmp_path / "feedbackqa-20.jsonl"
    _feedbackqa(dataset, EVAL_ITEMS)
    out = tmp_path / "report"
    args = ["eval", "--judge", "helpfulness", "--dataset", str(dataset), "--out", str(out)]
    _step(
        "eval 20 FeedbackQA items", [*args, "--data-dir", str(tmp_path / "eval")], model_env, EVAL_TIMEOUT_S
    )
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    aligned = report["aligned"]
    failed = [
        item for item in report["items"] if item.get("error")
    ]  # left out of the figures, with the reason
    _say(
        f"  eval: {aligned['n_scored']} of {EVAL_ITEMS} given a verdict, {aligned['n_abstained']} abstained, "
        f"{len(failed)} failed to score; accuracy {aligned['accuracy']} (quality not measured: a 135M model)"
    )
    for line, item in failed[:3]:
        _say(f"  eval item on line {line} failed: {item['error'][:300]}")
    assert report["n_items"] == EVAL_ITEMS
    assert report["model"] == "openai/smollm2"
    assert len(report["items"]) == EVAL_ITEMS
    assert all(item["aligned"] is None or isinstance(item["aligned"], bool) for item in report["items"])
    assert aligned["n_items"] + len(failed) == EVAL_ITEMS
    assert aligned["n_scored"] + aligned["n_abstained"] == aligned["n_items"]
    assert aligned["n_scored"] > 0, "no item got a verdict: the run completed but measured nothing"
    assert aligned["accuracy"] is not None
    assert 0 <= aligned["accuracy"] <= 1
