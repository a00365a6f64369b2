"""The bundled model with its lookup tables kept int8 computes exactly what the file as shipped computes."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest

from memalign_mcp.embeddings import LocalMiniLMEmbedder
from memalign_mcp.heap import EveryNthCall
from memalign_mcp.onnx_lookup import look_up_before_dequantizing

TEXTS = [
    "Hi",
    "What are your store hours?",
    "The customer asked whether the store would accept a return of a wool sweater bought three weeks "
    "ago without a receipt, and the assistant explained the policy politely and offered store credit. " * 3,
    "Ünïcödé text, emoji 🎉 and punctuation!?",
]


@pytest.fixture(scope="module")
def shipped() -> LocalMiniLMEmbedder:
    return LocalMiniLMEmbedder()


def session(model: str | bytes) -> Any:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def feed(embedder: LocalMiniLMEmbedder, texts: list[str]) -> dict[str, Any]:
    """The inputs of one padded batch, as the embedder builds them."""
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(str(embedder.tokenizer_path))
    tokenizer.enable_truncation(max_length=256)
    tokenizer.enable_padding()
    encodings = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def test_the_rewritten_model_gives_bit_identical_token_vectors(shipped: LocalMiniLMEmbedder) -> None:
    original = shipped.model_path.read_bytes()
    lighter = look_up_before_dequantizing(original)
    assert lighter != original  # the bundled model has the pattern: the rewrite did something
    before, after = session(str(shipped.model_path)), session(lighter)
    for texts in (TEXTS, TEXTS[:1], [TEXTS[2]]):
        batch = feed(shipped, texts)
        names = {node.name for node in before.get_inputs()}
        inputs = {name: value for name, value in batch.items() if name in names}
        expected, got = before.run(None, inputs)[0], after.run(None, inputs)[0]
        assert got.shape == expected.shape
        assert np.array_equal(got, expected)  # not close: the same, so stored vectors stay comparable


def test_the_embedder_gives_the_vectors_of_the_file_as_shipped(shipped: LocalMiniLMEmbedder) -> None:
    reference = session(str(shipped.model_path))
    names = {node.name for node in reference.get_inputs()}
    for text in TEXTS:
        batch = feed(shipped, [text])
        tokens = reference.run(None, {n: v for n, v in batch.items() if n in names})[0][0]
        pooled = tokens.mean(axis=0)
        expected = pooled / np.linalg.norm(pooled)
        np.testing.assert_allclose(shipped.embed([text])[0], expected, rtol=0, atol=1e-6)


def test_without_a_writable_temporary_folder_the_model_loads_from_bytes(
    shipped: LocalMiniLMEmbedder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))  # tempfile's own setting
    fallback = LocalMiniLMEmbedder()
    assert np.array_equal(fallback.embed(TEXTS), shipped.embed(TEXTS))


def test_a_table_read_from_outside_the_graph_keeps_its_float_copy(shipped: LocalMiniLMEmbedder) -> None:
    # The word-embedding table made a graph output too: its producer must stay, so the model still loads.
    from memalign_mcp.onnx_lookup import (  # the wire format, to build this variant of the model
        _bytes_field,  # pyright: ignore[reportPrivateUsage]
        _fields,  # pyright: ignore[reportPrivateUsage]
    )

    table = "inner.embeddings.word_embeddings.weight"
    parts: list[bytes] = []
    for field in _fields(memoryview(shipped.model_path.read_bytes())):
        if field.number == 7:  # ModelProto.graph, plus an output (GraphProto.output, ValueInfoProto.name)
            assert isinstance(field.value, memoryview)
            output = _bytes_field(12, _bytes_field(1, table.encode()))
            parts.append(_bytes_field(7, bytes(field.value) + output))
        else:
            parts.append(bytes(field.raw))
    model = b"".join(parts)
    lighter = session(look_up_before_dequantizing(model))
    assert table in [output.name for output in lighter.get_outputs()]
    batch = feed(shipped, TEXTS[:2])
    names = {node.name for node in lighter.get_inputs()}
    inputs = {name: value for name, value in batch.items() if name in names}
    expected = session(str(shipped.model_path)).run(None, inputs)[0]
    assert np.array_equal(lighter.run(None, inputs)[0], expected)


def test_a_rewritten_model_is_left_as_it_is(shipped: LocalMiniLMEmbedder) -> None:
    lighter = look_up_before_dequantizing(shipped.model_path.read_bytes())
    assert look_up_before_dequantizing(lighter) is lighter


@pytest.mark.parametrize(
    "model",
    [b"", b"not an onnx model at all", b"\x3a\xff\xff\xff\xff\x0f", b"\x0b\x00"],
    ids=["empty", "text", "truncated length", "group wire type"],
)
def test_bytes_that_are_no_readable_model_come_back_unchanged(model: bytes) -> None:
    assert look_up_before_dequantizing(model) is model


def test_a_truncated_model_comes_back_unchanged(shipped: LocalMiniLMEmbedder) -> None:
    cut = shipped.model_path.read_bytes()[: 1 << 20]
    assert look_up_before_dequantizing(cut) is cut


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_freed_heap_memory_goes_back_to_the_system() -> None:
    # 100 MiB in blocks below malloc's mmap threshold, all freed but the last (which pins the heap's top):
    # malloc keeps the rest until it is told to give it back.
    code = """
        import ctypes
        from memalign_mcp.heap import give_back_free_memory
        def rss():
            return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) // 1024
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        start = rss()
        blocks = [libc.malloc(64 << 10) for _ in range(1600)]
        for b in blocks:
            ctypes.memset(b, 1, 64 << 10)
        for b in blocks[:-1]:
            libc.free(b)
        kept = rss()
        print(kept - start, give_back_free_memory(), rss() - start)
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
        timeout=60,
    )
    kept, gave, after = done.stdout.split()
    assert int(kept) >= 90  # freed, but still held by the process
    assert gave == "True"
    assert int(after) <= 10


def test_every_nth_call_refuses_a_period_below_one() -> None:
    with pytest.raises(ValueError, match="every must be a positive integer"):
        EveryNthCall(0)
