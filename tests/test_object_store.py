"""Stores in object storage: two `serve --transport http` replicas on one s3:// store (a local moto S3 server).

The replicas are real subprocesses that reach S3 through the standard AWS_* variables only, each on its own
127.0.0.1 port, scored by the scripted model (which records every prompt). Writes through either are seen
through both within the freshness bound (polled with a deadline), concurrent adds through both lose and
duplicate nothing, a removal returns only when no replica can score with the removed item any more, and a
purge leaves the text in no object of the bucket. In-process tests cover settings and failing closed.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp_types import CallToolResult, TextContent

from memalign_mcp.embeddings import HashingEmbedder
from memalign_mcp.engine import open_engine
from memalign_mcp.errors import SettingsError, StoreUnavailableError
from memalign_mcp.models import JudgeSpec
from memalign_mcp.settings import Settings, load_settings
from object_store import ObjectStore
from scripted_model import ScriptedModelServer
from support_desk_model import support_desk
from test_transports import CALL_DEADLINE_S, REPO, SERVER, free_port, wait_until_listening

pytestmark = pytest.mark.anyio
# Longer than a removal takes on this machine, so a replica that scored just before one would still be within
# the bound when it returns: only the removal's wait (Freshness.settle) keeps removed items out of its next score.
FRESHNESS_MS = 4000
POLL_DEADLINE_S = 60  # only keeps a broken replica from hanging the run


@pytest.fixture
def anyio_backend() -> str:
    """The MCP clients run on asyncio."""
    return "asyncio"


@dataclass(frozen=True)
class Replicas:
    """Two servers on one s3:// store, and the scripted model they both call."""

    urls: tuple[str, str]
    data_dir: str
    model: ScriptedModelServer


def _serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[Any], str]:
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(SERVER), "serve", "--transport", "http", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_until_listening(process, port, log)
    return process, f"http://127.0.0.1:{port}/mcp"


@pytest.fixture(scope="module")
def replicas(
    object_store: ObjectStore, model_server: ScriptedModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    """Two `serve --transport http` processes on one fresh s3:// prefix, reaching it by AWS_* variables only."""
    root = tmp_path_factory.mktemp("replicas")
    data_dir = object_store.new_prefix()
    config = root / "config.toml"
    config.write_text(f"[store]\nfreshness_ms = {FRESHNESS_MS}\n")
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("MEMALIGN_", "AWS_"))}
    env = (
        inherited
        | object_store.env()
        | {
            "MEMALIGN_CONFIG": str(config),
            "MEMALIGN_DATA_DIR": data_dir,
            "MEMALIGN_EMBEDDING_MODEL": "hashing",
            "MEMALIGN_MODEL": "openai/scripted",
            "MEMALIGN_API_BASE": model_server.base_url,
            "MEMALIGN_API_KEY": "test",
            "MEMALIGN_MAX_RETRIES": "0",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "HF_HUB_OFFLINE": "1",
        }
    )
    started: list[subprocess.Popen[Any]] = []
    try:
        # One after the other: the first creates the store's tables, the second opens them.
        first, url_a = _serve(env, root / "a.log")
        started.append(first)
        second, url_b = _serve(env, root / "b.log")
        started.append(second)
        yield Replicas((url_a, url_b), data_dir, model_server)
    finally:
        for process in started:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _text(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


async def call(url: str, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    """Call one tool through a fresh client of that replica; the structured result (a tool error fails)."""
    with anyio.fail_after(CALL_DEADLINE_S):
        async with Client(url) as client:
            result = await client.call_tool(tool, args)
    assert not result.is_error, _text(result)
    assert result.structured_content is not None
    return result.structured_content


async def feedback_ids(url: str, judge: str) -> list[str]:
    """Every feedback id one replica lists for a judge (duplicates kept, to be counted)."""
    listed = await call(url, "list_feedback", {"judge": judge, "limit": 200})
    return [entry["id"] for entry in listed["feedback"]]


def item(item_id: str, outputs: str, rationale: str = "Answers the question.") -> dict[str, Any]:
    """One feedback item of the support-desk scenario."""
    return {
        "id": item_id,
        "inputs": f"Where is my parcel {item_id}?",
        "outputs": outputs,
        "value": False,
        "rationale": rationale,
    }


async def new_judge(replicas: Replicas, name: str) -> None:
    """A bool judge made through the first replica, with the model on the support-desk script again."""
    replicas.model.reset(support_desk)
    await call(replicas.urls[0], "create_judge", {"name": name, "instructions": "Is {{ outputs }} helpful?"})


async def test_a_write_through_either_replica_is_seen_through_both_within_the_freshness_bound(
    replicas: Replicas,
) -> None:
    await new_judge(replicas, "seen")
    for n, writer in enumerate(replicas.urls):
        await call(
            writer, "add_feedback", {"judge": "seen", "feedback": [item(f"w{n}", "It is on its way.")]}
        )
        for reader in replicas.urls:
            deadline = time.monotonic() + POLL_DEADLINE_S
            while f"w{n}" not in await feedback_ids(reader, "seen"):
                assert time.monotonic() < deadline, f"{reader} never saw w{n}"


async def test_concurrent_adds_through_both_replicas_lose_nothing_and_duplicate_nothing(
    replicas: Replicas,
) -> None:
    await new_judge(replicas, "busy")
    acknowledged: list[str] = []

    async def writer(n: int) -> None:
        for i in range(2):
            added = await call(
                replicas.urls[n % 2],
                "add_feedback",
                {"judge": "busy", "feedback": [item(f"t{n}-{i}", f"Reply {n}-{i}.")]},
            )
            acknowledged.extend(added["feedback_ids"])

    async with anyio.create_task_group() as tasks:
        for n in range(4):
            tasks.start_soon(writer, n)
    assert len(acknowledged) == 8
    for url in replicas.urls:
        deadline = time.monotonic() + POLL_DEADLINE_S
        while sorted(ids := await feedback_ids(url, "busy")) != sorted(acknowledged):
            assert len(ids) == len(set(ids)), f"duplicates through {url}: {ids}"
            assert time.monotonic() < deadline, (
                f"{url} lists {sorted(ids)}, acknowledged {sorted(acknowledged)}"
            )
    history = await call(replicas.urls[1], "judge_history", {"judge": "busy", "limit": 100})
    versions = sorted(v["version"] for v in history["versions"])
    assert versions == list(range(versions[0], versions[0] + len(versions)))  # one number per change, no gap


async def test_a_removal_through_one_replica_is_honoured_by_the_others_next_score(replicas: Replicas) -> None:
    await new_judge(replicas, "forget")
    secret_reply = "Track it yourself, ref KESTREL-88."
    await call(replicas.urls[0], "add_feedback", {"judge": "forget", "feedback": [item("k", secret_reply)]})
    draft = {"judge": "forget", "inputs": "Where is my parcel k?", "outputs": "It is on its way."}
    deadline = time.monotonic() + POLL_DEADLINE_S
    while "k" not in (await call(replicas.urls[1], "score_response", draft))["examples_used"]:
        assert time.monotonic() < deadline, "the second replica never scored with the item"
    assert "KESTREL-88" in replicas.model.calls[-1].prompt_text()  # cached in the second replica now

    await call(replicas.urls[0], "remove_feedback", {"judge": "forget", "feedback_ids": ["k"]})
    scored = await call(replicas.urls[1], "score_response", draft)  # the very next score, no waiting
    assert "k" not in scored["examples_used"]
    assert "KESTREL-88" not in replicas.model.calls[-1].prompt_text()


async def test_a_purge_through_one_replica_leaves_the_text_in_no_object_of_the_bucket(
    replicas: Replicas, object_store: ObjectStore
) -> None:
    secret = "ZQX-5512-PRIVATE-ACCOUNT"
    await new_judge(replicas, "purged")
    feedback = [
        item("keep", "It ships today."),
        item("leak", f"Not my problem, {secret}.", "Rude and dismissive."),
    ]
    await call(replicas.urls[1], "add_feedback", {"judge": "purged", "feedback": feedback})
    draft = {"judge": "purged", "inputs": "Where is my parcel leak?", "outputs": "Not my problem."}
    deadline = time.monotonic() + POLL_DEADLINE_S
    while "leak" not in (await call(replicas.urls[1], "score_response", draft))["examples_used"]:
        assert time.monotonic() < deadline
    assert any(secret.encode() in body for body in object_store.objects().values())  # it was written

    removed = await call(
        replicas.urls[0], "remove_feedback", {"judge": "purged", "feedback_ids": ["leak"], "purge": True}
    )
    assert removed["purged"] is True
    holding = [key for key, body in object_store.objects().items() if secret.encode() in body]
    assert holding == []
    assert await feedback_ids(replicas.urls[1], "purged") == ["keep"]
    scored = await call(replicas.urls[1], "score_response", draft)
    assert "leak" not in scored["examples_used"]


# --- in process: settings and failing closed ----------------------------------------------------------------


def s3_settings(object_store: ObjectStore, data_dir: str, **store: Any) -> Settings:
    """Settings for a store in the bucket, reached through [store.storage_options] (no AWS_* variables)."""
    overrides = {"store.data_dir": data_dir, "store.storage_options": object_store.storage_options()}
    return load_settings(env={}, overrides=overrides | {f"store.{k}": v for k, v in store.items()})


def test_an_s3_data_dir_keeps_the_store_in_the_bucket_and_its_secrets_out_of_dumps_and_errors(
    object_store: ObjectStore,
) -> None:
    data_dir = object_store.new_prefix()
    settings = s3_settings(object_store, data_dir)
    assert settings.store.resolved_uri() == f"{data_dir}/lancedb"
    assert settings.store.freshness_s() == 1.0  # remote default; local stores check on every read
    assert load_settings(env={}, overrides={"store.data_dir": "/tmp/x"}).store.freshness_s() == 0.0
    secret = object_store.storage_options()["aws_secret_access_key"]
    assert secret not in repr(settings)
    assert secret not in settings.model_dump_json()
    with pytest.raises(SettingsError) as bad:
        load_settings(env={}, overrides={"store.storage_options": {"aws_secret_access_key": [secret]}})
    assert secret not in str(bad.value)
    assert "store.storage_options.aws_secret_access_key" in str(bad.value)

    engine = open_engine(settings, embedder=HashingEmbedder())
    engine.create_judge(JudgeSpec(name="kept", instructions="Is {{ outputs }} polite?"))
    prefix = data_dir.removeprefix(f"s3://{object_store.bucket}/")
    keys = object_store.objects(prefix)
    assert keys
    assert all(k.startswith(f"{prefix}/lancedb/") for k in keys)
    assert "kept" in {j.name for j in open_engine(settings, embedder=HashingEmbedder()).list_judges().judges}


def test_a_replica_that_cannot_reach_the_store_fails_closed_instead_of_scoring_from_its_cache(
    object_store: ObjectStore,
) -> None:
    data_dir = object_store.new_prefix()
    engine = open_engine(s3_settings(object_store, data_dir, freshness_ms=1), embedder=HashingEmbedder())
    engine.create_judge(JudgeSpec(name="cut", instructions="Is {{ outputs }} polite?"))
    assert engine.score("cut", "Hi", "Hello").judge_version == 0
    secret = object_store.storage_options()["aws_secret_access_key"]
    # The store goes away (objects deleted under the prefix): the next check for commits fails.
    client = object_store.client()
    prefix = data_dir.removeprefix(f"s3://{object_store.bucket}/")
    for key in object_store.objects(prefix):
        client.delete_object(Bucket=object_store.bucket, Key=key)
    with pytest.raises(StoreUnavailableError) as cut:
        engine.score("cut", "Hi", "Hello")
    assert secret not in str(cut.value)
