"""Text as integer sequences, the way Keras' ``TextVectorization`` and ``pad_sequences`` make them.

A text dataset's vocabulary is built once, at upload, and stored with the dataset and with every model trained on
it, so that ``/predict`` turns raw text into the same numbers. The semantics are ``TextVectorization``'s defaults
(``standardize="lower_and_strip_punctuation"``, ``split="whitespace"``, ``output_mode="int"``): ASCII letters
lower-cased, punctuation removed, words split on ASCII whitespace; index 0 is padding and 1 the out-of-vocabulary
word ``[UNK]``, then words from the most frequent down (ties: the later word in code-point order first, as
``adapt`` orders them), ``num_words`` of them in all with the two reserved ones (``max_tokens``). Each text is then
cut or filled to ``maxlen`` as ``keras.utils.pad_sequences`` does (``padding`` and ``truncating``, ``"pre"`` by
default). Tests check all of it against Keras itself.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Side = Literal["pre", "post"]
PADDING, OUT_OF_VOCABULARY = "", "[UNK]"
RESERVED = (PADDING, OUT_OF_VOCABULARY)
# Keras' DEFAULT_STRIP_REGEX; ",-\." is the range of ',', '-' and '.'.
_PUNCTUATION = re.compile(r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']')
_WHITESPACE = re.compile(r"[ \t\n\r\v\f]+")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def words(text: str) -> list[str]:
    """The words of a text as TextVectorization's default standardize and split find them."""
    return [word for word in _WHITESPACE.split(_PUNCTUATION.sub("", text.translate(_ASCII_LOWER))) if word]


def vocabulary(counts: Counter[str], num_words: int) -> tuple[str, ...]:
    """Padding, [UNK], then the ``num_words - 2`` most frequent words, ordered as ``adapt`` orders them."""
    ranked = sorted(counts.items(), key=lambda item: (item[1], item[0]), reverse=True)
    return RESERVED + tuple(word for word, _ in ranked[: max(0, num_words - len(RESERVED))])


def pad(ids: list[int], maxlen: int, padding: Side, truncating: Side) -> npt.NDArray[np.int32]:
    """One sequence cut or filled with zeros to ``maxlen``, as ``pad_sequences`` does."""
    kept = ids[-maxlen:] if truncating == "pre" else ids[:maxlen]
    out = np.zeros(maxlen, dtype=np.int32)
    if kept:
        if padding == "pre":
            out[maxlen - len(kept) :] = kept
        else:
            out[: len(kept)] = kept
    return out


@dataclass(frozen=True)
class TextEncoding:
    """How a text dataset's texts became its sequences: what serving needs to do the same to a new text."""

    vocabulary: tuple[str, ...]
    maxlen: int
    padding: Side = "pre"
    truncating: Side = "pre"
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update((word, i) for i, word in enumerate(self.vocabulary) if i >= len(RESERVED))

    def ids(self, text: str) -> list[int]:
        return [self._index.get(word, 1) for word in words(text)]

    def encode(self, text: str) -> npt.NDArray[np.int32]:
        return pad(self.ids(text), self.maxlen, self.padding, self.truncating)

    def encode_all(self, texts: Iterable[str]) -> npt.NDArray[np.int32]:
        rows = [self.encode(text) for text in texts]
        return np.stack(rows) if rows else np.zeros((0, self.maxlen), dtype=np.int32)

    def to_json(self) -> dict[str, Any]:
        return {
            "vocabulary": list(self.vocabulary),
            "maxlen": self.maxlen,
            "padding": self.padding,
            "truncating": self.truncating,
            "standardize": "lower_and_strip_punctuation",
            "split": "whitespace",
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TextEncoding:
        return cls(tuple(data["vocabulary"]), int(data["maxlen"]), data["padding"], data["truncating"])
