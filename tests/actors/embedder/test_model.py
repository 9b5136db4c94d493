"""The embedder's model loader, against the real bundled model: no mocks, no network.

The model is loaded once for the module, with HF_HUB_OFFLINE=1, Python's
sockets blocked and a fresh cache directory, so the loading itself is also
the offline check.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import textwrap
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
from numpy.typing import NDArray
from tokenizers import Tokenizer

from ragbus.actors.embedder._errors import ModelFilesError, ModelUnavailableError, UnknownModelError
from ragbus.actors.embedder._files import BUNDLED_MODEL_ID, bundled_files
from ragbus.actors.embedder._model import EmbeddingModel
from ragbus.actors.embedder._ort_env import (
    ORT_TELEMETRY_ENV,
    OrtTelemetryWarning,
    disable_ort_telemetry,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
DIM = 384

# sentence-transformers' all-MiniLM-L6-v2 (fp32) gives 0.7553 for this pair;
# the int8 weights may move it by a few hundredths.
REFERENCE_PAIR = ("A man is eating food.", "A man is eating a piece of bread.")
REFERENCE_COSINE = 0.7553

PARAGRAPH = (
    "Retrieval-augmented generation answers a question from documents that were split "
    "into overlapping chunks, embedded into vectors and indexed; at query time the "
    "question is embedded with the same model, its nearest chunks are retrieved by cosine "
    "similarity, and a language model writes an answer grounded in them, citing sources. "
)


def _block_network(mp: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    """Make every Python-level connection attempt fail, and record it.

    Recorded as well as refused, because fastembed swallows download errors
    and falls back: a refusal alone could go unnoticed.
    """
    attempts: list[tuple[object, ...]] = []

    def refuse(*args: object, **kwargs: object) -> NoReturn:
        attempts.append(args)
        raise OSError("network access during an offline test")

    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket.socket, "connect_ex", refuse)
    mp.setattr(socket, "create_connection", refuse)
    mp.setattr(socket, "getaddrinfo", refuse)
    return attempts


class _OfflineLoad:
    def __init__(
        self, model: EmbeddingModel, cache_dir: Path, attempts: list[tuple[object, ...]]
    ) -> None:
        self.model = model
        self.cache_dir = cache_dir
        self.attempts = attempts


@pytest.fixture(scope="module")
def offline_load(tmp_path_factory: pytest.TempPathFactory) -> _OfflineLoad:
    cache_dir = tmp_path_factory.mktemp("fastembed-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        attempts = _block_network(mp)
        model = EmbeddingModel.load(BUNDLED_MODEL_ID, cache_dir=str(cache_dir))
        model.embed(["first inference, still offline"])
    return _OfflineLoad(model, cache_dir, attempts)


@pytest.fixture(scope="module")
def model(offline_load: _OfflineLoad) -> EmbeddingModel:
    return offline_load.model


def _cos(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _texts(n: int) -> list[str]:
    """Texts of very different lengths, so that batches are padded a lot."""
    words = PARAGRAPH.split()
    rng = random.Random(7)
    return [
        " ".join(rng.choice(words) for _ in range(rng.choice((1, 3, 12, 40, 120, 300))))
        for _ in range(n)
    ]


def test_offline_load_touches_neither_network_nor_cache(offline_load: _OfflineLoad) -> None:
    assert offline_load.attempts == []
    assert list(offline_load.cache_dir.iterdir()) == []
    assert os.environ["ORT_DISABLE_TELEMETRY"] == "1"


def test_model_id_and_dim(model: EmbeddingModel) -> None:
    assert model.model_id == BUNDLED_MODEL_ID
    assert model.dim == DIM
    assert model.batch_size == 32


def test_onnxruntime_threads_do_not_spin_unless_asked(model: EmbeddingModel) -> None:
    """Busy-waiting threads would burn a core the bus and the other actors need."""
    assert model.spin_wait is False
    spinning = EmbeddingModel.load(BUNDLED_MODEL_ID, spin_wait=True)
    assert spinning.spin_wait is True
    texts = _texts(8)
    np.testing.assert_array_equal(spinning.embed(texts), model.embed(texts))


def test_vectors_are_384_dim_unit_norm_float32(model: EmbeddingModel) -> None:
    vectors = model.embed(["hello world", "", "a" * 5000, PARAGRAPH * 10])
    assert vectors.shape == (4, DIM)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_empty_input_and_single_string(model: EmbeddingModel) -> None:
    assert model.embed([]).shape == (0, DIM)
    with pytest.raises(TypeError, match="sequence of texts"):
        model.embed("not a list")


def test_paraphrase_is_closer_than_unrelated(model: EmbeddingModel) -> None:
    query, paraphrase, unrelated = model.embed(
        [
            "How do I reset my password?",
            "What are the steps to change a forgotten password?",
            "The stock market fell sharply on Tuesday.",
        ]
    )
    close, far = _cos(query, paraphrase), _cos(query, unrelated)
    print(f"paraphrase {close:.3f}, unrelated {far:.3f}")
    assert close > 0.6
    assert far < 0.3
    assert close - far > 0.4


def test_same_text_same_vector(model: EmbeddingModel) -> None:
    first = model.embed(["the same text", "another text"])
    again = model.embed(["the same text"])
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(model.embed(["another text"])[0], first[1])


def test_batching_matches_one_by_one(model: EmbeddingModel) -> None:
    texts = _texts(50)
    batched = model.embed(texts)  # batches of 32 and 18, padded, in length order
    one_by_one = np.stack([model.embed([text])[0] for text in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5, rtol=0)


def test_sentence_transformers_reference(model: EmbeddingModel) -> None:
    a, b = model.embed(list(REFERENCE_PAIR))
    cosine = _cos(a, b)
    print(f"cosine{REFERENCE_PAIR} = {cosine:.4f} (fp32 reference {REFERENCE_COSINE})")
    assert abs(cosine - REFERENCE_COSINE) < 0.04


def test_mean_pooling_l2_and_256_tokens(model: EmbeddingModel) -> None:
    """Recompute sentence-transformers' pipeline by hand on the same files.

    Also tells the settings apart that would give plausible vectors all the
    same: CLS pooling, and truncation at the 128 serialised in tokenizer.json.
    """
    import onnxruntime  # type: ignore[import-untyped]  # after the loader disabled telemetry

    files = bundled_files()
    session = onnxruntime.InferenceSession(str(files.onnx_file), providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(files.model_dir / "tokenizer.json"))
    tokenizer.no_padding()

    def reference(text: str, max_length: int, pooling: str) -> NDArray[np.float32]:
        tokenizer.enable_truncation(max_length=max_length)
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        mask = np.ones_like(ids)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = session.run(None, feeds)[0][0]
        pooled = hidden.mean(axis=0) if pooling == "mean" else hidden[0]
        return np.asarray(pooled / np.linalg.norm(pooled), dtype=np.float32)

    long_text = PARAGRAPH * 8
    tokenizer.no_truncation()
    assert len(tokenizer.encode(long_text).ids) > 400
    for text in ("A man is eating food.", long_text):
        np.testing.assert_allclose(
            model.embed([text])[0], reference(text, 256, "mean"), atol=1e-5, rtol=0
        )
    ours = model.embed([long_text])[0]
    assert _cos(ours, reference(long_text, 128, "mean")) < 0.999
    assert _cos(ours, reference(REFERENCE_PAIR[0], 256, "cls")) < 0.99


def test_one_call_at_a_time_from_many_threads(model: EmbeddingModel) -> None:
    groups = [[f"question {i}.{j} about chunk {j}" for j in range(i + 3)] for i in range(4)]
    expected = [model.embed(group) for group in groups]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(model.embed, groups * 2))
    for got, want in zip(results, expected * 2, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_local_directory_gives_the_same_vectors(model: EmbeddingModel, tmp_path: Path) -> None:
    files = bundled_files()
    directory = tmp_path / "minilm"
    directory.mkdir()
    (directory / "model.onnx").symlink_to(files.onnx_file)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(files.model_dir / name, directory / name)

    local = EmbeddingModel.load(str(directory), batch_size=8, threads=1)
    texts = _texts(20)
    assert local.model_id == str(directory.resolve())
    assert local.dim == DIM
    np.testing.assert_allclose(local.embed(texts), model.embed(texts), atol=1e-5, rtol=0)
    # and nothing was written next to the files (the directory doubles as cache_dir)
    assert sorted(p.name for p in directory.iterdir()) == [
        "model.onnx",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelFilesError, match="does not exist"):
        EmbeddingModel.load(str(tmp_path / "no-such-model"))


def test_directory_without_tokenizer(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").symlink_to(bundled_files().onnx_file)
    with pytest.raises(ModelFilesError, match=r"lacks tokenizer\.json, tokenizer_config\.json"):
        EmbeddingModel.load(str(tmp_path))


def test_directory_without_onnx(tmp_path: Path) -> None:
    shutil.copy(bundled_files().model_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(ModelFilesError, match=r"lacks model\.onnx or onnx/model\.onnx"):
        EmbeddingModel.load(str(tmp_path))


def test_unsupported_pooling(tmp_path: Path) -> None:
    files = bundled_files()
    (tmp_path / "model.onnx").symlink_to(files.onnx_file)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(files.model_dir / name, tmp_path / name)
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": DIM, "pooling_mode_max_tokens": True})
    )
    with pytest.raises(ModelFilesError, match="pooling_mode_max_tokens"):
        EmbeddingModel.load(str(tmp_path))


def test_unknown_model_name() -> None:
    with pytest.raises(UnknownModelError, match="list_supported_models"):
        EmbeddingModel.load("no-such-model-v9")
    with pytest.raises(UnknownModelError, match="no embedding model given"):
        EmbeddingModel.load("  ")


def test_fastembed_model_offline_and_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts = _block_network(monkeypatch)
    with pytest.raises(ModelUnavailableError, match=r"\(HF_HUB_OFFLINE is set\)") as caught:
        EmbeddingModel.load("BAAI/bge-small-en-v1.5", cache_dir=str(tmp_path))
    assert str(tmp_path) in str(caught.value)
    assert attempts == []
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_warns_when_onnxruntime_was_imported_first(
    model: EmbeddingModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that imported onnxruntime before the variable was set is told so.

    Simulated by unsetting the variable: onnxruntime is already imported here
    (by the model fixture), with its telemetry off, so nothing really starts.
    """
    assert "onnxruntime" in sys.modules
    monkeypatch.delenv(ORT_TELEMETRY_ENV)
    with pytest.warns(OrtTelemetryWarning, match="qdrant_client"):
        disable_ort_telemetry()
    assert os.environ[ORT_TELEMETRY_ENV] == "1"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        disable_ort_telemetry()  # already set: no warning


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        EmbeddingModel.load(BUNDLED_MODEL_ID, batch_size=0)
    with pytest.raises(ValueError, match="threads"):
        EmbeddingModel.load(BUNDLED_MODEL_ID, threads=0)


_FRESH_PROCESS = textwrap.dedent(
    """
    import json, os, socket, sys
    attempts = []
    def refuse(*args, **kwargs):
        attempts.append(repr(args))
        raise OSError("network access during an offline test")
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse
    from ragbus.actors.embedder._model import EmbeddingModel
    model = EmbeddingModel.load("all-MiniLM-L6-v2-int8", cache_dir=sys.argv[1])
    vector = model.embed(["a fresh process"])[0]
    print(json.dumps({"attempts": attempts, "dim": len(vector),
                      "env": os.environ.get("ORT_DISABLE_TELEMETRY")}))
    """
)


def test_fresh_process_starts_no_telemetry(tmp_path: Path) -> None:
    """onnxruntime's 1DS telemetry writes a device id under the home cache at import.

    Without ORT_DISABLE_TELEMETRY=1 set before that import, the file appears
    (checked by hand: not repeated here, it would start the uploader); with
    it, nothing does. A fresh process is needed because it happens once per
    process.
    """
    home, cache_dir = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    cache_dir.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME", "FASTEMBED_CACHE_PATH"}
    }
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, str(cache_dir)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"attempts": [], "dim": DIM, "env": "1"}
    assert [str(p.relative_to(home)) for p in home.rglob("*")] == []
    assert list(cache_dir.iterdir()) == []
