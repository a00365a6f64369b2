"""Settings: one pydantic model, loaded once from TOML files, then MEMALIGN_* variables, then flags.

Where the files come from does not depend on the working directory: the configuration shipped inside the package
(`memalign_mcp/config/`: the repository's `configs/default.toml` and `configs/judges/`) is always read first, then
at most one file of the user's on top of it, section by section: `--config PATH`, else `$MEMALIGN_CONFIG`, else
`$XDG_CONFIG_HOME/memalign-mcp/config.toml` when it exists. A bad setting fails at start with a message that
names the key, the value and what was expected. This module reads files and the environment it is handed; it
opens no store and calls no model.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from importlib import resources
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
from memalign_mcp.scopes import ALL_SCOPES, Scope

# The one copy is the repository's configs/: in a checkout memalign_mcp/config is a symlink to it, and the wheel
# carries its files there. The package is a directory on disk either way, so its resources are plain paths.
PACKAGED_CONFIG_DIR = Path(str(resources.files("memalign_mcp") / "config"))
DEFAULT_CONFIG = PACKAGED_CONFIG_DIR / "default.toml"
CONFIG_ENV = "MEMALIGN_CONFIG"

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
    "MEMALIGN_TOKENS_FILE": ("server", "tokens_file"),
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
    maintain_interval_s: float = Field(
        default=600.0, ge=0, description="serve maintains the store this often in the background; 0: never."
    )
    maintain_after_writes: int = Field(
        default=100, ge=0, description="...and after this many writes of its own (0: on the interval only)."
    )
    keep_versions_s: float = Field(
        default=600.0, ge=60, description="Old store versions are pruned once superseded this long."
    )

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
    tokens_file: str = Field(
        default="", description="TOML file of bearer tokens for http (CONTRACT.md); empty: no tokens."
    )
    public_url: str = Field(
        default="", description="URL clients reach /mcp at (proxy, 0.0.0.0); empty: http://host:port/mcp."
    )
    insecure_no_auth: bool = Field(
        default=False, description="Serve http on a non-loopback host without tokens (something else checks)."
    )
    stdio_scopes: list[Scope] = Field(
        default_factory=lambda: list(ALL_SCOPES),
        description="Scopes of a caller without a token: stdio, or http served without a tokens file.",
    )


class Settings(_Section):
    """Every setting of memalign-mcp."""

    model: ModelSettings = Field(default_factory=ModelSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    config_dir: str = Field(
        default="", description="Directory of the config file, for relative paths; empty: the packaged one."
    )

    def judges_path(self) -> Path | None:
        """The directory of judge files, resolved against the config file's directory (never the cwd)."""
        if not self.server.judges_dir:
            return None
        path = Path(self.server.judges_dir).expanduser()
        return path if path.is_absolute() else Path(self.config_dir or PACKAGED_CONFIG_DIR) / path


def _user_data_dir() -> Path:
    root = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(root) / "memalign-mcp"


def user_config_file(env: Mapping[str, str]) -> Path:
    """Where a user's own settings live when neither --config nor MEMALIGN_CONFIG names a file (XDG)."""
    home = env.get("HOME") or str(Path.home())
    root = env.get("XDG_CONFIG_HOME") or str(Path(home) / ".config")
    return Path(root) / "memalign-mcp" / "config.toml"


def chosen_config_file(config: str | Path | None, env: Mapping[str, str]) -> tuple[str, Path] | None:
    """The user's config file laid over the packaged one, with the key that chose it for error messages.

    --config first, else MEMALIGN_CONFIG, else the XDG file when it exists; a named file that is missing is an error.
    """
    for key, named in (("--config", config), (CONFIG_ENV, env.get(CONFIG_ENV))):
        if named:
            path = Path(named).expanduser()
            if not path.is_file():
                raise SettingsError(key, str(path), "the path of an existing TOML file")
            return key, path
    path = user_config_file(env)
    return ("config file", path) if path.is_file() else None


def _read_toml(path: Path, key: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(key, str(path), f"valid TOML ({exc})") from exc


def load_settings(
    config: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings from the packaged config, the user's config file over it, the environment, then flags.

    `overrides` maps dotted keys ("store.data_dir") to values from the command line.
    """
    env = os.environ if env is None else env
    raw = _read_toml(DEFAULT_CONFIG, "the packaged config")
    # Anchored now, so a user's file that does not name judges_dir keeps the shipped judges wherever it lives.
    if shipped := raw["server"]["judges_dir"]:
        raw["server"]["judges_dir"] = str(PACKAGED_CONFIG_DIR / shipped)
    config_dir = str(PACKAGED_CONFIG_DIR)
    chosen = chosen_config_file(config, env)
    if chosen is not None:
        key, path = chosen
        user = _read_toml(path, key)
        for section, values in user.items():
            if isinstance(values, dict) and isinstance(raw.get(section), dict):
                raw[section] |= values
            else:
                raw[section] = values  # not a table: validation names the key below
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
