"""A small English-like corpus, generated from a seed, for the character-level language-model demo.

Nothing is downloaded and no text is copied: a procedural grammar (a few sentence shapes over a fixed
vocabulary, with number agreement between subject and verb, a/an before vowels, and short stories whose
characters come back by name) writes paragraphs from ``random.Random(seed)``. The same seed gives the same
text on every machine. The text has structure at several scales — spelling inside words, agreement across a
few words, names repeated across sentences — so a model's bits per character keeps falling as it gets better.

:func:`lm_task` cuts the text into contiguous train / validation / test stretches (80/10/10, never
overlapping) and windows of ``block_size`` characters; :class:`NextCharBatches` serves them to Tolaria with
the targets flattened to one row per position (see :mod:`esper_recipes.chargpt`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from esper.data import Batches, Split

NAMES = ("Ada", "Bram", "Cora", "Dov", "Edda", "Finn", "Gale", "Hugo", "Iris", "Jory", "Kit", "Lena")
# (singular, plural)
ANIMALS = (("fox", "foxes"), ("owl", "owls"), ("hare", "hares"), ("crow", "crows"), ("wolf", "wolves"),
           ("otter", "otters"), ("heron", "herons"), ("badger", "badgers"), ("mole", "moles"), ("wren", "wrens"))
THINGS = ("lamp", "boat", "apple", "key", "letter", "basket", "kettle", "map", "bell", "rope", "egg", "oar")
PLACES = ("river", "mill", "forest", "harbour", "orchard", "bridge", "market", "hill", "garden", "inn")
ADJECTIVES = ("old", "small", "quiet", "bright", "cold", "heavy", "green", "tired", "clever", "odd", "empty")
TIMES = ("at dawn", "at noon", "in the evening", "after the rain", "before winter", "on market day")
# (third person singular, plural, past) of transitive verbs.
VERBS = (("sees", "see", "saw"), ("finds", "find", "found"), ("carries", "carry", "carried"),
         ("mends", "mend", "mended"), ("hides", "hide", "hid"), ("wants", "want", "wanted"),
         ("keeps", "keep", "kept"), ("drops", "drop", "dropped"))
# (third person singular, plural, past) of intransitive verbs of motion, followed by a place.
MOTIONS = (("walks", "walk", "walked"), ("runs", "run", "ran"), ("waits", "wait", "waited"),
           ("sleeps", "sleep", "slept"), ("sings", "sing", "sang"))
GOINGS = ("went", "walked", "ran", "hurried", "came back")
PREPOSITIONS = ("near", "by", "behind", "under", "across", "beside")
SAYINGS = ("it is late", "the water is rising", "we should go home", "nobody saw it", "the bell is ringing",
           "it was here yesterday")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


class _Writer:
    """One story: a small cast, drawn once, and sentences about them."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.cast = rng.sample(NAMES, 2)
        self.animal = rng.choice(ANIMALS)

    def noun_phrase(self, pool: tuple[str, ...], definite: bool | None = None) -> str:
        rng = self.rng
        noun = pool[rng.randrange(len(pool))]
        if rng.random() < 0.4:
            noun = f"{rng.choice(ADJECTIVES)} {noun}"
        definite = rng.random() < 0.6 if definite is None else definite
        return f"the {noun}" if definite else f"{_article(noun)} {noun}"

    def subject(self) -> tuple[str, bool]:
        """A subject and whether it is plural (the verb must agree)."""
        roll = self.rng.random()
        if roll < 0.45:
            return self.rng.choice(self.cast), False
        if roll < 0.65:
            return f"{self.cast[0]} and {self.cast[1]}", True
        if roll < 0.85:
            return f"the {self.animal[0]}", False
        return f"the {self.animal[1]}", True

    def sentence(self) -> str:
        rng = self.rng
        who, plural = self.subject()
        shape = rng.randrange(5)
        if shape == 0:
            singular, plural_form, _ = rng.choice(VERBS)
            text = f"{who} {plural_form if plural else singular} {self.noun_phrase(THINGS)}"
        elif shape == 1:
            singular, plural_form, _ = rng.choice(MOTIONS)
            where = f"{rng.choice(PREPOSITIONS)} {self.noun_phrase(PLACES, True)}"
            text = f"{who} {plural_form if plural else singular} {where}"
        elif shape == 2:
            _, _, past = rng.choice(VERBS)
            text = f"{rng.choice(TIMES)}, {who} {past} {self.noun_phrase(THINGS)} {rng.choice(PREPOSITIONS)} " \
                   f"{self.noun_phrase(PLACES, True)}"
        elif shape == 3:
            verb = "say" if plural else "says"
            text = f"{who} {verb}, {rng.choice(SAYINGS)}"
        else:
            _, _, took = rng.choice(VERBS)
            went = f"{rng.choice(GOINGS)} to {self.noun_phrase(PLACES, True)}"
            text = f"{who} {went} and {took} {self.noun_phrase(THINGS, False)}"
        return text[0].upper() + text[1:] + "."


def generate_corpus(chars: int = 120_000, seed: int = 0) -> str:
    """About ``chars`` characters of generated stories (whole paragraphs; deterministic in ``seed``)."""
    rng = random.Random(seed)
    paragraphs: list[str] = []
    total = 0
    while total < chars:
        writer = _Writer(rng)
        paragraph = " ".join(writer.sentence() for _ in range(rng.randint(3, 7)))
        paragraphs.append(paragraph)
        total += len(paragraph) + 1
    return "\n".join(paragraphs) + "\n"


@dataclass(frozen=True)
class Vocabulary:
    """Characters <-> token ids (ids in sorted character order)."""

    chars: str

    @classmethod
    def of(cls, text: str) -> Vocabulary:
        """Every character of ``text``."""
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of ``text`` (int64); a character outside the vocabulary is an error naming it."""
        index = {c: i for i, c in enumerate(self.chars)}
        try:
            return torch.tensor([index[c] for c in text], dtype=torch.int64)
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: torch.Tensor) -> str:
        """The text of a 1-D tensor of token ids."""
        return "".join(self.chars[int(i)] for i in ids)


@dataclass(frozen=True)
class TextTask:
    """Windows of the corpus: inputs ``x`` (N, block_size) and next characters ``y`` (N, block_size)."""

    vocab: Vocabulary
    block_size: int
    train: Split
    val: Split
    test: Split


def _windows(ids: torch.Tensor, block_size: int) -> Split:
    """Non-overlapping windows: x = ids[i : i+T], y = ids[i+1 : i+T+1]."""
    n = (len(ids) - 1) // block_size
    x = ids[: n * block_size].view(n, block_size)
    y = ids[1 : n * block_size + 1].view(n, block_size)
    return Split(x, y)


def lm_task(chars: int = 120_000, block_size: int = 32, seed: int = 0) -> TextTask:
    """The generated corpus cut into contiguous 80/10/10 train / validation / test stretches, then windows."""
    text = generate_corpus(chars, seed)
    vocab = Vocabulary.of(text)
    ids = vocab.encode(text)
    a, b = math.floor(0.8 * len(ids)), math.floor(0.9 * len(ids))
    return TextTask(vocab, block_size, _windows(ids[:a], block_size), _windows(ids[a:b], block_size),
                    _windows(ids[b:], block_size))


class NextCharBatches:
    """Minibatches of a :class:`TextTask` split as Tolaria scores them: (x (B, T), y (B·T,)).

    Tolaria's loss and accuracy compare ``(rows, classes)`` logits with ``(rows,)`` labels, so targets are
    flattened here and the model returns one row of logits per position: loss and accuracy are then per
    character. Order and shuffling are :class:`esper.data.Batches`' (reproducible from ``seed``).
    """

    def __init__(self, split: Split, batch_size: int, *, shuffle: bool = True, seed: int = 0) -> None:
        self.batches = Batches(split, batch_size, shuffle=shuffle, seed=seed)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.batches:
            yield x, y.reshape(-1)
