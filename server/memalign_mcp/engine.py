"""Opening the engine from settings: choose the embedder and model client, open the store, load judge files.

This is the one place that turns settings into live services; the MCP face and the command line both call
`open_engine`. Tests and benchmarks hand in their own embedder or client through the same function.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

from memalign_mcp.alignment import MemAlignService
from memalign_mcp.embeddings import Embedder, HashingEmbedder, LocalMiniLMEmbedder
from memalign_mcp.errors import InvalidInputError, SettingsError
from memalign_mcp.llm import LiteLLMClient, LiteLLMEmbedder, ModelClient
from memalign_mcp.migration import migrate_0_1
from memalign_mcp.models import JudgeSpec
from memalign_mcp.settings import Settings
from memalign_mcp.store import MemoryStore

log = logging.getLogger(__name__)
LOCAL_EMBEDDING = "local"
HASHING_EMBEDDING = "hashing"


def make_embedder(settings: Settings) -> Embedder:
    """The embedder the settings name: the bundled MiniLM, the lexical hashing one, or a litellm model."""
    name = settings.embedding.model.strip()
    if name in ("", LOCAL_EMBEDDING):
        return LocalMiniLMEmbedder()
    if name == HASHING_EMBEDDING:
        return HashingEmbedder()
    m = settings.model
    return LiteLLMEmbedder(
        name, api_base=m.api_base, api_key=m.api_key, timeout_s=m.timeout_s, max_retries=m.max_retries
    )


def make_client(settings: Settings) -> ModelClient:
    """The litellm model client for the configured model settings (imports litellm only when used)."""
    return LiteLLMClient.from_settings(settings.model)


def read_judge_files(directory: Path | None) -> list[JudgeSpec]:
    """Judge specs from every *.toml file of a directory, sorted by file name."""
    if directory is None or not directory.is_dir():
        return []
    specs: list[JudgeSpec] = []
    for path in sorted(directory.glob("*.toml")):
        try:
            spec = JudgeSpec.model_validate(tomllib.loads(path.read_text(encoding="utf-8"))).validated()
        except (tomllib.TOMLDecodeError, ValueError) as exc:
            raise SettingsError(f"judge file {path}", path.name, f"a valid judge spec ({exc})") from exc
        specs.append(spec)
    return specs


def open_store(
    settings: Settings, embedder: Embedder | None = None, *, any_embedding: bool = False
) -> MemoryStore:
    """The store the settings name, refused if built with another embedding model unless `any_embedding`."""
    embedder = embedder or make_embedder(settings)
    uri = settings.store.resolved_uri()
    return MemoryStore(
        uri,
        embedding_name=embedder.name,
        embedding_dim=lambda: embedder.dim,
        any_embedding=any_embedding,
        vector_index_min_rows=settings.memory.vector_index_min_rows,
        index_cache_mb=settings.store.index_cache(),
        storage_options=settings.store.lance_storage_options(),
    )


def open_engine(
    settings: Settings, *, embedder: Embedder | None = None, client: ModelClient | None = None
) -> MemAlignService:
    """Open the store and return the engine, with the configured judge files created if absent."""
    embedder = embedder or make_embedder(settings)
    uri = settings.store.resolved_uri()
    if not settings.store.is_remote():
        Path(uri.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    store = open_store(settings, embedder)
    service = MemAlignService(settings, store, embedder, client or make_client(settings))
    migrate_0_1(store, service.ledger)
    for spec in read_judge_files(settings.judges_path()):
        # Made once per store: a judge an operator deleted or updated stays as the operator left it.
        try:
            if service.seed_judge(spec):
                log.info("created judge %r from its config file", spec.name)
        except InvalidInputError as exc:
            raise SettingsError(f"judge {spec.name}", spec.name, str(exc)) from exc
    return service
