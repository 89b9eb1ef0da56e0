from __future__ import annotations

import numpy as np
import pytest

from mlapi_backend.sampling import Sampler, StopMatcher
from mlapi_backend.tokenizer import UNK, VOCAB_SIZE


def logits_with(best: int, second: int | None = None) -> np.ndarray:
    logits = np.zeros(VOCAB_SIZE, dtype=np.float32)
    logits[UNK] = 100.0  # the sampler must never pick UNK, however likely
    logits[best] = 10.0
    if second is not None:
        logits[second] = 9.5
    return logits


def test_greedy_takes_the_argmax_but_never_unk() -> None:
    assert Sampler(0.0, 1.0, seed=None)(logits_with(5)) == 5


def test_same_seed_same_tokens_different_seed_different_tokens() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(200, VOCAB_SIZE)).astype(np.float32)

    def run(seed: int) -> list[int]:
        sampler = Sampler(1.0, 1.0, seed)
        return [sampler(row) for row in rows]

    assert run(3) == run(3)
    assert run(3) != run(4)
    assert UNK not in run(3)


def test_small_top_p_keeps_only_the_most_likely_token() -> None:
    sampler = Sampler(1.0, 0.05, seed=1)
    assert {sampler(logits_with(7, second=8)) for _ in range(50)} == {7}


def test_top_p_one_samples_from_the_whole_distribution() -> None:
    sampler = Sampler(1.0, 1.0, seed=1)
    picks = {sampler(logits_with(7, second=8)) for _ in range(200)}
    assert {7, 8} <= picks


def test_high_temperature_flattens_low_temperature_sharpens() -> None:
    logits = logits_with(7, second=8)
    hot = [Sampler(2.0, 1.0, seed=s)(logits) for s in range(200)]
    cold = [Sampler(0.1, 1.0, seed=s)(logits) for s in range(200)]
    assert hot.count(8) > cold.count(8)
    assert cold.count(7) > 190


def feed(matcher: StopMatcher, text: str) -> tuple[list[str], bool]:
    emitted = []
    for char in text:
        piece, stopped = matcher.push(char)
        emitted.append(piece)
        if stopped:
            return emitted, True
    return emitted, False


def test_stop_string_ends_the_text_and_is_not_emitted() -> None:
    matcher = StopMatcher(["END"])
    emitted, stopped = feed(matcher, "abcENDxyz")
    assert stopped
    assert "".join(emitted) == "abc"


def test_partial_stop_prefix_is_held_back_then_released() -> None:
    matcher = StopMatcher(["\n\n"])
    emitted, stopped = feed(matcher, "ab\ncd\n")
    assert not stopped
    # "\n" after "ab" is held until "c" shows it is not a stop; the final "\n" is still held.
    assert emitted == ["a", "b", "", "\nc", "d", ""]
    assert matcher.flush() == "\n"


def test_earliest_of_several_stop_strings_wins() -> None:
    matcher = StopMatcher(["xyz", "cd"])
    emitted, stopped = feed(matcher, "abcdxyz")
    assert stopped and "".join(emitted) == "ab"


def test_no_stop_strings_emits_everything_at_once() -> None:
    matcher = StopMatcher([])
    emitted, stopped = feed(matcher, "hello")
    assert emitted == list("hello") and not stopped


@pytest.mark.parametrize("stops", [["a"], ["ab"], ["ab", "b"]])
def test_stop_at_the_first_character(stops: list[str]) -> None:
    emitted, stopped = feed(StopMatcher(stops), "ab")
    assert stopped and "".join(emitted) == ""
