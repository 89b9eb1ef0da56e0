"""Lexical checks a semantic hit must also pass: what mean-pooled embeddings do not see.

all-MiniLM-L6-v2 averages its token vectors, so prompts with the same words score close
whatever their order or a small word: on the project's labelled pairs, swapped entities reach
cosine 0.999 and changed numbers 0.991, above most paraphrases (docs/caching.md). Two prompts
may share a generation only when they carry the same numbers, the same negations (words such
as "not", "never", "against"; "un"/"dis"/"in" prefixes of a word the other has plain), and
their shared content words in the same order.
"""

from __future__ import annotations

import re
from collections import Counter

_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
NEGATIONS = frozenset(
    ("not", "no", "never", "nothing", "none", "nobody", "nowhere", "neither", "nor", "cannot",
     "without", "against", "isn't", "aren't", "don't", "doesn't", "didn't", "won't", "can't",
     "shouldn't", "wouldn't", "couldn't", "wasn't", "weren't", "hasn't", "haven't")
)  # fmt: skip
NEGATING_PREFIXES = ("un", "dis", "in", "im", "non")
# Words that carry no content of their own: order and presence of these may differ freely.
STOPWORDS = frozenset(
    ("a", "an", "the", "of", "to", "in", "on", "at", "for", "by", "with", "about", "from",
     "is", "are", "was", "were", "be", "do", "does", "did", "i", "me", "my", "you", "your",
     "we", "it", "its", "this", "that", "can", "could", "would", "will", "should", "please",
     "what", "what's", "which", "how", "why", "tell", "give", "some", "and", "or", "so",
     "like", "i'd", "us", "there", "here", "just", "into", "as")
)  # fmt: skip


def tokens(text: str) -> list[str]:
    """Return the lower-cased words and numbers of ``text``."""
    return _TOKEN.findall(text.lower())


def _negations(words: list[str]) -> int:
    return sum(word in NEGATIONS for word in words)


def _prefix_negated(mine: set[str], theirs: set[str]) -> bool:
    """Whether a word of ``mine`` is a word of ``theirs`` with a negating prefix."""
    for word in mine - theirs:
        for prefix in NEGATING_PREFIXES:
            if word.startswith(prefix) and word[len(prefix) :] in theirs:
                return True
    return False


def _shared_in_order(a: list[str], b: list[str]) -> bool:
    """Whether the content words both prompts have come in the same order in each."""
    content_a = [w for w in a if w not in STOPWORDS]
    content_b = [w for w in b if w not in STOPWORDS]
    shared = Counter(content_a) & Counter(content_b)

    def ordered(words: list[str]) -> list[str]:
        left = Counter(shared)
        out = []
        for word in words:
            if left[word] > 0:
                left[word] -= 1
                out.append(word)
        return out

    return ordered(content_a) == ordered(content_b)


def compatible(a: str, b: str) -> bool:
    """Whether one prompt's generation may answer the other, as far as the words tell."""
    if sorted(_NUMBER.findall(a)) != sorted(_NUMBER.findall(b)):
        return False
    words_a, words_b = tokens(a), tokens(b)
    if _negations(words_a) != _negations(words_b):
        return False
    set_a, set_b = set(words_a), set(words_b)
    if _prefix_negated(set_a, set_b) or _prefix_negated(set_b, set_a):
        return False
    return _shared_in_order(words_a, words_b)
