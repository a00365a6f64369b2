"""Settings: one pydantic model, loaded once from a TOML file, then MEMALIGN_* variables, then flags.

A bad setting fails at start with a message that names the key, the value and what was expected. This module
reads files and the environment it is handed; it opens no store and calls no model.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from memalign_mcp.errors import SettingsError
from memalign_mcp.models import MEMORY_MODEL
from memalign_mcp.prompts import (
    CONSOLIDATE_SCHEMA_NAME,
    DISTILL_SCHEMA_NAME,
    REDERIVE_SCHEMA_NAME,
    SCORE_SCHEMA_NAME,
)

DEFAULT_CONFIG = Path("configs/default.toml")

# Environment variable -> (section, key). Environment overrides the file; flags override both.
ENV_KEYS: dict[str, tuple[str, str]] = {
    "MEMALIGN_MODEL": ("model", "judge"),
    "MEMALIGN_REFLECTION_MODEL": ("model", "reflection"),
    "MEMALIGN_API_BASE": ("model", "api_base"),
    "MEMALIGN_API_KEY": ("model", "api_key"),
    "MEMALIGN_TIMEOUT_S": ("model", "timeout_s"),
    "MEMALIGN_MAX_RETRIES": ("model", "max_retries"),
    "MEMALIGN_EMBEDDING_MODEL": ("embedding", "model"),
    "MEMALIGN_DATA_DIR": ("store", "data_dir"),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Section):
    """Which models judge and reflect, and how to reach them."""

    judge: str = Field(
        default="", description="litellm model string; empty or 'memory' judges from memory alone."
    )
    reflection: str = Field(
        default="", description="Model that distils guidelines; empty means the judge model."
    )
    api_base: str = Field(default="", description="Base URL of any OpenAI-compatible server.")
    api_key: str = Field(
        default="", description="Key for api_base; provider keys come from their usual variables."
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Seconds to wait for one model reply.")
    max_retries: int = Field(
        default=2, ge=0, le=10, description="Retries of a request the transport failed (never of a timeout)."
    )
    # Output token limits per kind of request: a model that repeats itself stops here, not at the timeout.
    max_tokens_score: int = Field(default=512, ge=16, le=65_536, description="Output tokens of a verdict.")
    max_tokens_distill: int = Field(
        default=2048, ge=16, le=65_536, description="Output tokens of one distillation reply."
    )
    max_tokens_consolidate: int = Field(
        default=4096, ge=16, le=65_536, description="Output tokens of a consolidation reply."
    )
    max_tokens_rederive: int = Field(
        default=512, ge=16, le=65_536, description="Output tokens of a re-derived guideline."
    )

    def max_tokens_by_reply(self) -> dict[str, int]:
        """The output token limits keyed by the reply schema name each kind of request uses."""
        return {
            SCORE_SCHEMA_NAME: self.max_tokens_score,
            DISTILL_SCHEMA_NAME: self.max_tokens_distill,
            CONSOLIDATE_SCHEMA_NAME: self.max_tokens_consolidate,
            REDERIVE_SCHEMA_NAME: self.max_tokens_rederive,
        }

    @property
    def default_judge_model(self) -> str:
        """The model a judge without its own uses: the configured one, else the memory vote."""
        return self.judge.strip() or MEMORY_MODEL

    @property
    def reflection_model(self) -> str | None:
        """The model that distils guidelines, or None when only the memory judge is available."""
        chosen = self.reflection.strip() or self.judge.strip()
        return chosen if chosen and chosen != MEMORY_MODEL else None


class EmbeddingSettings(_Section):
    """How text becomes vectors for retrieval."""

    model: str = Field(
        default="local", description="'local' (bundled MiniLM), 'hashing', or a litellm model."
    )
    embed_fields: Literal["inputs", "inputs+outputs"] = "inputs+outputs"


class StoreSettings(_Section):
    """Where memory lives."""

    data_dir: str = Field(
        default="", description="Directory of the store; empty means the user data directory."
    )
    uri: str = Field(default="", description="Any LanceDB URI; overrides data_dir when set.")

    def resolved_uri(self) -> str:
        """The LanceDB URI to open."""
        if self.uri:
            return self.uri
        base = Path(self.data_dir).expanduser() if self.data_dir else _user_data_dir()
        return str(base / "lancedb")


class MemorySettings(_Section):
    """How alignment behaves."""

    retrieval_k: int = Field(default=5, ge=0, le=50, description="Default examples shown per score.")
    guideline_cap: int = Field(default=30, ge=1, le=500)
    merge_threshold: float = Field(
        default=0.9, gt=0, le=1, description="Cosine above which guidelines merge."
    )
    distill_batch_size: int = Field(default=50, ge=1, le=500)
    distill_batch_chars: int = Field(
        default=60_000, ge=1_000, description="Context budget of one distillation."
    )
    distill_concurrency: int = Field(
        default=4, ge=1, le=32, description="Distillation calls in flight at once."
    )
    max_field_chars: int = Field(
        default=20_000, ge=100, description="Longest accepted inputs/outputs/rationale."
    )
    max_items_per_call: int = Field(default=1_000, ge=1)
    vote_margin: float = Field(
        default=0.2, ge=0, lt=1, description="Memory judge abstains below this margin."
    )


class ServerSettings(_Section):
    """How the MCP server is reached and which judges it ships."""

    transport: Literal["stdio", "http"] = "stdio"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    judges_dir: str = Field(default="judges", description="Judge TOML files, relative to the config file.")


class Settings(_Section):
    """Every setting of memalign-mcp."""

    model: ModelSettings = Field(default_factory=ModelSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    config_dir: str = Field(default="", description="Directory of the config file, for relative paths.")

    def judges_path(self) -> Path | None:
        """The directory of judge files, resolved against the config file's directory."""
        if not self.server.judges_dir:
            return None
        path = Path(self.server.judges_dir).expanduser()
        return path if path.is_absolute() else Path(self.config_dir or ".") / path


def _user_data_dir() -> Path:
    root = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(root) / "memalign-mcp"


def load_settings(
    config: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings from the config file (default configs/default.toml, if present), the environment, then flags.

    `overrides` maps dotted keys ("store.data_dir") to values from the command line.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    config_dir = ""
    if config is not None or DEFAULT_CONFIG.is_file():
        path = Path(config) if config is not None else DEFAULT_CONFIG
        if not path.is_file():
            raise SettingsError("--config", str(path), "the path of an existing TOML file")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError("--config", str(path), f"valid TOML ({exc})") from exc
        config_dir = str(path.resolve().parent)
    for var, (section, key) in ENV_KEYS.items():
        if env.get(var):
            raw.setdefault(section, {})[key] = env[var]
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        raw.setdefault(section, {})[key] = value
    raw["config_dir"] = config_dir
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise SettingsError(key, first.get("input"), first["msg"].lower()) from exc
