"""The labelled prompt pairs the semantic cache's threshold is chosen on, built deterministically.

Each pair is two prompts and whether one may be answered with the other's generation:

- ``paraphrase`` (label 1): the same request in other words, word order or politeness;
- hard negatives (label 0), each kind a way prompts share most of their words yet ask for
  something else: ``number`` (a changed number), ``negation`` (a "not" added or removed),
  ``swap`` (two entities exchanged), ``shared_words`` (another question on the same subject).

Every pair comes from a template of its kind filled with slot values; the split alternates the
instances of each template between ``selection`` and ``heldback``, so both hold every template
and the held-back figures measure new slot values. Phrasings the selection never saw are a
harder test (``template_split``): docs/caching.md reports both. The same code always writes the
same file (no clock, fixed seed).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

SEED = 20261202
PARAPHRASES_PER_TEMPLATE = 30
NEGATIVES_PER_TEMPLATE = 24

SUBJECTS = ["photosynthesis", "the French revolution", "black holes", "inflation", "volcanoes",
            "the immune system", "machine learning", "the printing press", "tides", "glaciers",
            "democracy", "the water cycle", "plate tectonics", "vaccines", "the stock market",
            "rainbows", "earthquakes", "the internet", "electricity", "coral reefs"]  # fmt: skip
ANIMALS = ["a fox", "an owl", "a whale", "a cat", "a dragon", "a robot", "a turtle", "a wolf",
           "a penguin", "a bee", "a horse", "an elephant", "a crow", "a dolphin", "a lion",
           "a mouse"]  # fmt: skip
PLACES = ["France", "Japan", "Brazil", "Canada", "Egypt", "Kenya", "Norway", "Peru", "India",
          "Italy", "Mexico", "Spain", "Chile", "Greece", "Poland", "Vietnam"]  # fmt: skip
PEOPLE = ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "Jack",
          "Karen", "Liam", "Maria", "Noah", "Olivia", "Paul"]  # fmt: skip
LANGUAGES = ["English", "French", "German", "Spanish", "Italian", "Dutch", "Polish", "Greek"]
TOOLS = ["Python", "git", "Docker", "a printer driver", "Node.js", "PostgreSQL", "Redis",
         "a VPN client"]  # fmt: skip
THINGS = ["coffee", "running every day", "remote work", "nuclear power", "electric cars",
          "homework", "social media", "fasting", "city life", "video games"]  # fmt: skip

# Paraphrase templates: each is a list of wordings of one request ({x}: the slot).
PARAPHRASE = [
    ("subject", ["Explain {x} in simple terms.", "Can you explain {x} simply?",
                 "Give me a simple explanation of {x}.", "explain {x} in simple terms"]),
    ("subject", ["What is {x}?", "What's {x}?", "Tell me what {x} is.", "what is {x}"]),
    ("animal", ["Write a short story about {x}.", "Tell me a short story about {x}.",
                "Please write a short story about {x}.", "A short story about {x}, please."]),
    ("place", ["What is the capital of {x}?", "Which city is the capital of {x}?",
               "Tell me the capital of {x}.", "What's the capital city of {x}?"]),
    ("subject", ["Summarize {x} in one paragraph.", "Give me a one-paragraph summary of {x}.",
                 "Write a one paragraph summary of {x}.", "Summarise {x} in a paragraph."]),
    ("animal", ["Write a poem about {x}.", "Compose a poem about {x}.",
                "Could you write a poem about {x}?", "I'd like a poem about {x}."]),
    ("place", ["What language do people speak in {x}?", "Which language is spoken in {x}?",
               "What languages are spoken in {x}?", "What do people in {x} speak?"]),
    ("tool", ["How do I install {x}?", "How can I install {x}?", "What are the steps to install {x}?",
              "how to install {x}"]),
    ("thing", ["What are the benefits of {x}?", "What are the advantages of {x}?",
               "Why is {x} good for you?", "List the benefits of {x}."]),
    ("subject", ["Why does {x} matter?", "Why is {x} important?", "What makes {x} important?",
                 "Explain why {x} matters."]),
]  # fmt: skip

# Hard negatives: (kind, slot, a function of the filled values giving the two prompts).
NUMBER = [
    "What is {a} plus {b}?",
    "Convert {a} miles to kilometres.",
    "Write a haiku with {a} lines about the sea.",
    "List {a} facts about Mars.",
    "What was the year {a} known for?",
    "Give me {a} tips for better sleep.",
    "Multiply {a} by {b}.",
    "Is {a} a prime number?",
    "How many days are in {a} weeks?",
    "Name {a} famous painters.",
]
NEGATION = [
    ("Is {x} good for your health?", "Is {x} not good for your health?"),
    ("Why is {x} a good idea?", "Why is {x} not a good idea?"),
    ("Explain why {x} works.", "Explain why {x} does not work."),
    ("Should I try {x}?", "Should I not try {x}?"),
    ("Write an argument for {x}.", "Write an argument against {x}."),
    ("List reasons to like {x}.", "List reasons to dislike {x}."),
    ("Is {x} safe?", "Is {x} unsafe?"),
    ("Describe what people love about {x}.", "Describe what people hate about {x}."),
    ("Tell me when {x} is helpful.", "Tell me when {x} is not helpful."),
    ("Why do experts support {x}?", "Why do experts oppose {x}?"),
]
SWAP = [
    ("Write a letter from {a} to {b}.", "person"),
    ("Translate this sentence from {a} to {b}.", "language"),
    ("Write a story where {a} teaches {b} to swim.", "person"),
    ("Why did {a} call {b} yesterday?", "person"),
    ("Compare {a} with {b}, focusing on {a}.", "place"),
    ("Plan a trip from {a} to {b}.", "place"),
    ("Write a dialogue in which {a} apologizes to {b}.", "person"),
    ("How do I move my data from {a} to {b}?", "tool"),
    ("Write a recipe that turns {a} into {b}.", "thing"),
    ("Explain how {a} influenced {b}.", "subject"),
]
SHARED_WORDS = [
    ("What is the capital of {x}?", "What is the population of {x}?", "place"),
    ("How do I install {x}?", "How do I uninstall {x}?", "tool"),
    ("What is the history of {x}?", "What is the future of {x}?", "subject"),
    ("Write a short story about {x}.", "Write a short poem about {x}.", "animal"),
    ("What are the benefits of {x}?", "What are the risks of {x}?", "thing"),
    ("What is the weather like in {x} in winter?", "What is the food like in {x} in winter?",
     "place"),
    ("How do I update {x}?", "How do I configure {x}?", "tool"),
    ("Explain {x} to a child.", "Explain {x} to an expert.", "subject"),
    ("What does {x} eat?", "Where does {x} sleep?", "animal"),
    ("How expensive is {x}?", "How popular is {x}?", "thing"),
]  # fmt: skip
SLOTS = {
    "subject": SUBJECTS,
    "animal": ANIMALS,
    "place": PLACES,
    "person": PEOPLE,
    "language": LANGUAGES,
    "tool": TOOLS,
    "thing": THINGS,
}


@dataclass(frozen=True)
class Pair:
    """Two prompts, whether a generation of one may answer the other, and where it comes from."""

    id: str
    a: str
    b: str
    label: int  # 1: may hit; 0: must not
    kind: str  # paraphrase | number | negation | swap | shared_words
    template: str  # kind and template index: the unit of the split
    split: str  # selection | heldback


def _split(instance: int) -> str:
    return "selection" if instance % 2 == 0 else "heldback"


def _paraphrases(rng: random.Random) -> Iterator[Pair]:
    for t, (slot, wordings) in enumerate(PARAPHRASE):
        values = rng.sample(SLOTS[slot], k=min(PARAPHRASES_PER_TEMPLATE, len(SLOTS[slot])))
        for n in range(PARAPHRASES_PER_TEMPLATE):
            x = values[n % len(values)]
            first, second = rng.sample(range(len(wordings)), 2)
            a, b = wordings[first].format(x=x), wordings[second].format(x=x)
            yield Pair(f"paraphrase-{t}-{n}", a, b, 1, "paraphrase", f"paraphrase-{t}", _split(n))


def _numbers(rng: random.Random) -> Iterator[Pair]:
    for t, template in enumerate(NUMBER):
        for n in range(NEGATIVES_PER_TEMPLATE):
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            changed = a + rng.choice([-3, -2, -1, 1, 2, 3, 10])
            first, second = template.format(a=a, b=b), template.format(a=changed, b=b)
            yield Pair(f"number-{t}-{n}", first, second, 0, "number", f"number-{t}", _split(n))


def _negations(rng: random.Random) -> Iterator[Pair]:
    pool = THINGS + SUBJECTS
    for t, (plain, negated) in enumerate(NEGATION):
        for n in range(NEGATIVES_PER_TEMPLATE):
            x = pool[rng.randrange(len(pool))]
            yield Pair(
                f"negation-{t}-{n}", plain.format(x=x), negated.format(x=x), 0, "negation",
                f"negation-{t}", _split(n),
            )  # fmt: skip


def _swaps(rng: random.Random) -> Iterator[Pair]:
    for t, (template, slot) in enumerate(SWAP):
        for n in range(NEGATIVES_PER_TEMPLATE):
            a, b = rng.sample(SLOTS[slot], 2)
            yield Pair(
                f"swap-{t}-{n}", template.format(a=a, b=b), template.format(a=b, b=a), 0, "swap",
                f"swap-{t}", _split(n),
            )  # fmt: skip


def _shared_words(rng: random.Random) -> Iterator[Pair]:
    for t, (first, second, slot) in enumerate(SHARED_WORDS):
        for n in range(NEGATIVES_PER_TEMPLATE):
            x = SLOTS[slot][rng.randrange(len(SLOTS[slot]))]
            yield Pair(
                f"shared_words-{t}-{n}", first.format(x=x), second.format(x=x), 0,
                "shared_words", f"shared_words-{t}", _split(n),
            )  # fmt: skip


def build() -> list[Pair]:
    """Return every pair, always the same ones in the same order (duplicates dropped)."""
    rng = random.Random(SEED)
    seen: set[tuple[str, str]] = set()
    pairs = []
    for source in (_paraphrases, _numbers, _negations, _swaps, _shared_words):
        for pair in source(rng):
            if pair.a == pair.b or (pair.a, pair.b) in seen:
                continue
            seen.add((pair.a, pair.b))
            pairs.append(pair)
    return pairs


def write(pairs: list[Pair], path: Path) -> None:
    """Write ``pairs`` as JSON lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for pair in pairs:
            out.write(json.dumps(asdict(pair), ensure_ascii=False) + "\n")


def read(path: Path) -> list[Pair]:
    """Read pairs written by ``write``."""
    with path.open(encoding="utf-8") as lines:
        return [Pair(**json.loads(line)) for line in lines if line.strip()]
