"""Next-token choice (greedy, temperature, nucleus) and stop-string handling for text generation.

Both are pure and deterministic given a seed, so the same request gives the same text whether
it is served over HTTP, gRPC or run in-process.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from mlapi_backend.tokenizer import UNK


class Sampler:
    """Picks token ids from logits: argmax when ``temperature`` is 0, else nucleus sampling.

    ``UNK`` is never chosen. Randomness comes only from a numpy Generator seeded with ``seed``
    (fresh OS entropy when None), one uniform draw per token.
    """

    def __init__(self, temperature: float, top_p: float, seed: int | None) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: NDArray[np.float32]) -> int:
        scores = np.asarray(logits, dtype=np.float64).reshape(-1).copy()
        scores[UNK] = -np.inf
        if self.temperature == 0.0:
            return int(np.argmax(scores))
        scores /= self.temperature
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        sorted_probs = probs[order]
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        keep = max(1, int(np.searchsorted(np.cumsum(sorted_probs), self.top_p, side="left")) + 1)
        kept = sorted_probs[:keep]
        cumulative = np.cumsum(kept)
        draw = self.rng.random() * cumulative[-1]
        index = min(int(np.searchsorted(cumulative, draw, side="right")), keep - 1)
        return int(order[index])


class StopMatcher:
    """Streams generated text while holding back what might be the start of a stop string.

    ``push`` returns the text that is safe to emit now and whether a stop string completed;
    the stop string itself is never emitted. ``flush`` releases what is held back at the end.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.text = ""
        self.emitted = 0
        self.longest = max((len(s) for s in self.stops), default=0)

    def push(self, piece: str) -> tuple[str, bool]:
        search_from = max(0, len(self.text) - self.longest + 1)
        self.text += piece
        hits = [i for i in (self.text.find(s, search_from) for s in self.stops) if i >= 0]
        if hits:
            return self._emit_to(min(hits)), True
        return self._emit_to(len(self.text) - self._held_back()), False

    def flush(self) -> str:
        return self._emit_to(len(self.text))

    def _held_back(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop string."""
        for length in range(min(self.longest - 1, len(self.text)), 0, -1):
            suffix = self.text[-length:]
            if any(s.startswith(suffix) for s in self.stops):
                return length
        return 0

    def _emit_to(self, end: int) -> str:
        end = max(end, self.emitted)
        piece, self.emitted = self.text[self.emitted : end], end
        return piece
