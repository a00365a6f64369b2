"""Shared fixtures: a real LanceDB per test, the bundled embedder loaded once, one scripted model server."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from memalign_mcp.alignment import MemAlignService
from memalign_mcp.embeddings import Embedder, HashingEmbedder, LocalMiniLMEmbedder
from memalign_mcp.engine import open_engine
from memalign_mcp.llm import close_cached_clients
from memalign_mcp.settings import Settings, load_settings
from object_store import ObjectStore, running_object_store
from scripted_model import ScriptedModelServer
from support_desk_model import support_desk

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "default.toml"


@pytest.fixture(scope="session")
def model_server() -> Iterator[ScriptedModelServer]:
    """One scripted OpenAI-compatible server for the whole run (litellm is imported once)."""
    with ScriptedModelServer(support_desk) as server:
        yield server
    close_cached_clients()


@pytest.fixture
def model(model_server: ScriptedModelServer) -> ScriptedModelServer:
    """The scripted server, reset to the support-desk script with no recorded calls."""
    model_server.reset(support_desk)
    return model_server


@pytest.fixture(scope="session")
def minilm() -> LocalMiniLMEmbedder:
    """The bundled MiniLM embedder, loaded once."""
    embedder = LocalMiniLMEmbedder()
    embedder.warm()
    return embedder


def scripted_overrides(server: ScriptedModelServer) -> dict[str, Any]:
    """Dotted-key settings that make the scripted model every judge's model and the reflector, no retries."""
    return {
        "model.judge": "openai/scripted",
        "model.api_base": server.base_url,
        "model.api_key": "test",
        "model.max_retries": 0,
    }


def hashing_settings(
    data_dir: Path,
    model_server: ScriptedModelServer | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """The shipped config over `data_dir` with the fast hashing embedder; the scripted model as every judge's
    model and the reflector when a server is given (else judges answer from memory); then `overrides`."""
    base: dict[str, Any] = {"store.data_dir": str(data_dir), "embedding.model": "hashing"}
    if model_server is not None:
        base |= scripted_overrides(model_server)
    return load_settings(CONFIG, env={}, overrides=base | dict(overrides or {}))


class EngineFactory:
    """Opens engines on one temporary data directory, as a fresh process would."""

    def __init__(self, data_dir: Path, server: ScriptedModelServer | None) -> None:
        self.data_dir = data_dir
        self.server = server

    def settings_overrides(self, with_model: bool, **overrides: Any) -> dict[str, Any]:
        """Dotted-key settings for this factory's store and, optionally, the scripted model."""
        base: dict[str, Any] = {"store.data_dir": str(self.data_dir)}
        if with_model and self.server is not None:
            base |= scripted_overrides(self.server)
        return base | overrides

    def open(
        self,
        embedder: Embedder | None = None,
        *,
        with_model: bool = True,
        overrides: dict[str, Any] | None = None,
    ) -> MemAlignService:
        """A new engine over the same store."""
        settings = load_settings(
            CONFIG, env={}, overrides=self.settings_overrides(with_model, **(overrides or {}))
        )
        return open_engine(settings, embedder=embedder or HashingEmbedder())


@pytest.fixture
def engines(tmp_path: Path, model: ScriptedModelServer) -> EngineFactory:
    """Engines over a fresh store in tmp_path, modelled by the scripted server."""
    return EngineFactory(tmp_path / "data", model)


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    """One local S3 server (moto) with a bucket for the whole run; each test takes its own prefix."""
    with running_object_store(tmp_path_factory.mktemp("s3") / "requests.log") as store:
        yield store
