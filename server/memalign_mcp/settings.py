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
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError

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
_REDACTED = "<redacted>"

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
    "MEMALIGN_OAUTH_CLIENT_SECRET": ("server", "oauth_client_secret"),
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


def _option_text(value: Any) -> Any:
    """A TOML true/false or number as LanceDB's storage options spell it (strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value


StorageOption = Annotated[SecretStr, BeforeValidator(_option_text)]


class StoreSettings(_Section):
    """Where memory lives: a local directory or object storage, and how fresh a replica's reads must be."""

    data_dir: str = Field(
        default="",
        description="Directory of the store, or s3://bucket/prefix (gs://, az://); empty: the user data directory.",
    )
    uri: str = Field(default="", description="Any LanceDB URI; overrides data_dir when set.")
    # Values are secrets (keys, tokens, SAS): SecretStr keeps them out of repr, dumps and error messages.
    storage_options: dict[str, StorageOption] = Field(
        default_factory=dict[str, StorageOption],
        description="LanceDB storage options (endpoint, region, allow_http, keys); never logged.",
    )
    freshness_ms: int | None = Field(
        default=None,
        ge=0,
        le=60_000,
        description="Oldest state a replica may score with after a commit elsewhere; empty: 1000 remote, 0 local.",
    )
    index_cache_mb: int | None = Field(
        default=None,
        ge=1,
        description="LanceDB's in-process cache of index pages (vector and scalar), MiB; empty: 4 local, 64 remote.",
    )
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
        """The LanceDB URI to open: `<data_dir>/lancedb`, on local disk or in a bucket alike."""
        if self.uri:
            return self.uri
        if is_remote(self.data_dir):
            return self.data_dir.rstrip("/") + "/lancedb"
        base = Path(self.data_dir).expanduser() if self.data_dir else _user_data_dir()
        return str(base / "lancedb")

    def is_remote(self) -> bool:
        """True when the store is not a local directory (object storage, LanceDB Cloud)."""
        return is_remote(self.resolved_uri())

    def freshness_s(self) -> float:
        """The freshness bound in seconds: the setting, else 1 s on object storage and 0 (every read) locally."""
        if self.freshness_ms is not None:
            return self.freshness_ms / 1000
        return DEFAULT_REMOTE_FRESHNESS_MS / 1000 if self.is_remote() else 0.0

    def index_cache(self) -> int:
        """The index cache in MiB: the setting, else 64 on object storage (a miss is a request) and 4 locally."""
        if self.index_cache_mb is not None:
            return self.index_cache_mb
        return DEFAULT_REMOTE_INDEX_CACHE_MB if self.is_remote() else DEFAULT_LOCAL_INDEX_CACHE_MB

    def lance_storage_options(self) -> dict[str, str]:
        """The storage options as LanceDB takes them (the only place their values are revealed)."""
        return {k: v.get_secret_value() for k, v in self.storage_options.items()}


DEFAULT_REMOTE_FRESHNESS_MS = 1000
# BENCHMARKS.md, retrieval at scale: locally 4 MiB held a 100k-item replica 20 MiB smaller than 16 at the same
# latency; on S3 the index's partitions (38 MB at 100k items) are re-read, a request each, when they do not fit.
DEFAULT_LOCAL_INDEX_CACHE_MB = 4
DEFAULT_REMOTE_INDEX_CACHE_MB = 64


def is_remote(uri: str) -> bool:
    """True for a URI with a scheme (s3://, gs://, az://, db://); a plain path or file:// is local."""
    scheme, sep, _ = uri.partition("://")
    return bool(sep) and scheme.lower() != "file"


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
    snapshot_budget_mb: int = Field(
        default=128, ge=0, description="Memory for in-process vector snapshots; others search LanceDB."
    )
    vector_index_min_rows: int = Field(
        default=20_000, ge=1, description="Feedback rows from which a judge is searched by ANN index."
    )


class LimitsSettings(_Section):
    """Bounds that keep one caller, or one bad input, from exhausting the server (a call over one is refused)."""

    max_instructions_chars: int = Field(
        default=20_000, ge=100, description="Longest judge instructions (list_judges returns them all)."
    )
    max_model_chars: int = Field(default=200, ge=10, le=10_000, description="Longest model name of a judge.")
    max_choices: int = Field(default=100, ge=2, le=10_000, description="Most choices of a categorical judge.")
    max_choice_chars: int = Field(
        default=200, ge=1, le=10_000, description="Longest choice of a categorical judge."
    )
    max_ids_per_call: int = Field(default=1_000, ge=1, description="Most feedback ids per remove_feedback.")
    max_judges: int = Field(default=1_000, ge=1, description="Most judges in one store.")
    max_request_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="Largest HTTP request body; a larger one gets 413."
    )
    requests_per_minute: int = Field(
        default=600,
        ge=0,
        description="Tool calls a minute per HTTP caller (token, else address); 0: unlimited.",
    )
    stdio_requests_per_minute: int = Field(
        default=0, ge=0, description="Tool calls a minute over stdio; 0: unlimited."
    )
    model_concurrency: int = Field(
        default=8, ge=1, le=1_000, description="Model calls in flight at once in this process."
    )
    model_wait_s: float = Field(
        default=30.0, gt=0, description="How long a model call waits for a free slot before it fails."
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
    oauth_issuer_url: str = Field(
        default="", description="Authorization server issuing tokens for /mcp (instead of a tokens file)."
    )
    oauth_introspection_url: str = Field(
        default="", description="Its RFC 7662 token introspection endpoint; set with oauth_issuer_url."
    )
    oauth_client_id: str = Field(
        default="", description="This server's client id at the introspection endpoint."
    )
    oauth_client_secret: str = Field(
        default="", description="Its secret (MEMALIGN_OAUTH_CLIENT_SECRET); never logged."
    )
    oauth_scope_prefix: str = Field(
        default="", description="Prefix of our scopes in the token's scope claim, e.g. 'memalign:'."
    )
    stdio_scopes: list[Scope] = Field(
        default_factory=lambda: list(ALL_SCOPES),
        description="Scopes of a caller without a token: stdio, or http served without a tokens file.",
    )
    # Bounds on what one HTTP client can hold (README, "Security"): without them half-sent requests and idle
    # streams were kept forever, and enough of them used up the process's file descriptors.
    header_timeout_s: float = Field(
        default=10.0, gt=0, le=3600, description="Seconds to send a request's line and headers once awaited."
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="Seconds to send a request's whole body after its headers."
    )
    max_connections: int = Field(
        default=256, ge=2, le=100_000, description="Open HTTP connections; one more is closed at once."
    )
    sse_idle_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="Seconds an event stream may stay silent before it is ended.",
    )


class Settings(_Section):
    """Every setting of memalign-mcp."""

    model: ModelSettings = Field(default_factory=ModelSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
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
        got = first.get("input")
        if key.startswith("store.storage_options"):
            got = _REDACTED  # a storage option may be a secret: never echoed
        raise SettingsError(key, got, first["msg"].lower()) from exc
