from __future__ import annotations

import numpy as np

from mlapi_backend import tokenizer


def test_round_trip_of_ascii_text() -> None:
    text = "The assert statement:\n    assert x == 1, 'msg' ~{}"
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int64
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text


def test_typographic_characters_are_folded_and_the_rest_is_unknown() -> None:
    assert (
        tokenizer.decode(tokenizer.encode("\u201cit\u2019s\u201d \u2014 ok\t!")) == '"it\'s" - ok !'
    )
    ids = tokenizer.encode("caf\u00e9")
    assert ids[-1] == tokenizer.UNK
    assert tokenizer.decode(ids) == "caf"
    assert tokenizer.unknown_characters("caf\u00e9 \u2019") == {"\u00e9"}


def test_vocabulary_is_fixed() -> None:
    assert tokenizer.VOCAB_SIZE == 97
    assert tokenizer.encode("\n")[0] == 1
    assert all(
        0 < i < tokenizer.VOCAB_SIZE for i in tokenizer.encode("".join(tokenizer.CHARACTERS))
    )
