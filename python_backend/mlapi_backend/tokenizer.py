"""Character tokenizer of the text generator: a fixed vocabulary of printable ASCII plus newline.

The vocabulary is fixed in code (not learnt from the training text) so that the model's shapes,
the served configs and every Python version agree on it. Typographic quotes and dashes are
folded to ASCII; any other character maps to ``UNK``, which the sampler never emits.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

UNK = 0
# id 0 is UNK; ids 1.. are "\n" then the printable ASCII characters " " (32) to "~" (126).
CHARACTERS = "\n" + "".join(chr(code) for code in range(32, 127))
VOCAB_SIZE = 1 + len(CHARACTERS)
FOLDED = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\t": " ",
        "\r": None,
    }
)
_IDS = {char: index for index, char in enumerate(CHARACTERS, start=1)}


def normalize(text: str) -> str:
    """Fold the characters that have an obvious ASCII spelling (quotes, dashes, tabs)."""
    return text.translate(FOLDED)


def encode(text: str) -> NDArray[np.int64]:
    """Token ids (int64) of ``text``; characters outside the vocabulary become ``UNK``."""
    return np.fromiter((_IDS.get(char, UNK) for char in normalize(text)), dtype=np.int64)


def decode(ids: Iterable[int]) -> str:
    """Return the text of token ids; ``UNK`` decodes to nothing."""
    return "".join(CHARACTERS[i - 1] for i in ids if 0 < i <= len(CHARACTERS))


def unknown_characters(text: str) -> set[str]:
    """Characters of ``text`` (after folding) that the vocabulary cannot represent."""
    return {char for char in normalize(text) if char not in _IDS}
