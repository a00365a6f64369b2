"""`memalign-mcp eval` from a shell: bad input is reported by file and line, advice is in command-line terms."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from memalign_mcp.cli import main

Eval = Callable[..., tuple[int, str, str]]
GOOD = {"inputs": "Where is my order?", "outputs": "It left today; here is the link.", "value": True}


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Eval:
    """Run `memalign-mcp eval ARGS` in-process on a fresh store; (exit code, stdout, stderr)."""
    for var in [v for v in os.environ if v.startswith("MEMALIGN_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-user-config"))
    config = tmp_path / "fast.toml"
    config.write_text('[embedding]\nmodel = "hashing"\n', encoding="utf-8")

    def invoke(*args: str) -> tuple[int, str, str]:
        flags = [
            "--config",
            str(config),
            "--data-dir",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "rep"),
        ]
        code = main(["eval", *args, *flags, "--log-level", "ERROR"])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def _jsonl(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "labelled.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_line_that_is_not_json_is_named_by_file_and_line(tmp_path: Path, run: Eval) -> None:
    data = _jsonl(tmp_path, json.dumps(GOOD), "", "{'inputs': 'single quotes'}")
    code, out, err = run("--judge", "helpfulness", "--dataset", str(data))
    assert code == 1
    assert out == ""
    assert err.strip().splitlines() == [
        f"memalign-mcp eval: {data}:3: not JSON (Expecting property name enclosed in double quotes at column 2); "
        'each line must be one JSON object {"inputs": ..., "outputs": ..., "value": ...}.'
    ]


def test_a_line_missing_a_field_is_named_by_file_line_and_field(tmp_path: Path, run: Eval) -> None:
    data = _jsonl(tmp_path, json.dumps(GOOD), json.dumps({"inputs": "Hi", "outputs": "Hello"}))
    code, _, err = run("--judge", "helpfulness", "--dataset", str(data))
    assert code == 1
    assert f"{data}:2: Invalid value: got nothing; expected a value (it is required)." in err


def test_a_value_that_does_not_fit_the_judge_is_named_by_line(tmp_path: Path, run: Eval) -> None:
    data = _jsonl(tmp_path, json.dumps(GOOD), "", json.dumps(GOOD | {"value": "yes"}))
    code, _, err = run("--judge", "helpfulness", "--dataset", str(data))
    assert code == 1
    assert f"{data}:3: Invalid value: got 'yes'" in err  # the engine said dataset[1]; the user sees line 3


def test_an_unknown_judge_lists_the_judges_of_the_store_in_shell_terms(tmp_path: Path, run: Eval) -> None:
    code, _, err = run("--judge", "helpfulnes", "--dataset", str(_jsonl(tmp_path, json.dumps(GOOD))))
    assert code == 1
    assert "unknown judge 'helpfulnes' (--judge)." in err
    assert f"Judges in the store at {tmp_path / 'data' / 'lancedb'}: helpfulness." in err
    assert "--data-dir" in err
    assert "memalign-mcp serve" in err
    assert "list_judges" not in err


def test_leave_one_out_without_feedback_says_to_pass_a_dataset(run: Eval) -> None:
    code, _, err = run("--judge", "helpfulness")
    assert code == 1
    assert "no feedback to evaluate leave-one-out. Pass --dataset FILE.jsonl" in err


def test_a_good_dataset_writes_the_report(tmp_path: Path, run: Eval) -> None:
    data = _jsonl(tmp_path, json.dumps(GOOD), json.dumps(GOOD | {"outputs": "Go away.", "value": False}))
    code, out, err = run("--judge", "helpfulness", "--dataset", str(data), "--limit", "1")
    assert code == 0, err
    assert "| Dataset | Figure |" in out
    report = json.loads((tmp_path / "rep" / "report.json").read_text(encoding="utf-8"))
    assert report["aligned"]["n_items"] == 1  # --limit 1
