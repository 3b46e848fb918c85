"""Sentences and word occurrences for :func:`lamina.analyses.contextuality`.

* A **sentence** (one model input: the context of its words) ends at ``.``, ``!`` or ``?``
  (with any closing quotes or brackets) followed by whitespace, or at a blank line; its text
  is kept as written (newlines included). A list of strings is taken as the sentences.
* A **word** is a maximal run of letters, with apostrophes inside it (``don't``, ``o'er``);
  its **type** is the word case-folded (``The`` and ``the`` are one type; the model still sees
  the original casing).
* A word occurrence is represented by the mean of the vectors of the tokens whose character
  spans (the tokenizer's offsets) overlap it; special tokens have no span and represent no
  word. A character-level tokenizer works the same way (a word is the mean of its characters).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from lamina.analyses.contextuality_stats import Layout
from lamina.errors import LaminaError, TokenizationError

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'’”)\]]*\s+|\n[ \t]*\n\s*")
WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` (see the module's docstring), stripped, none empty."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        out.append(text[start : m.end()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


@dataclass
class Prepared:
    """The sentences kept, their token ids, and which tokens form each word occurrence.

    Attributes:
        sentences: the kept sentences' texts.
        ids: token ids of each kept sentence (special tokens included).
        layout: type and sentence of each word occurrence (in sentence order).
        word_start: ``[n_sentences + 1]`` first occurrence of each sentence.
        pair_word, pair_token: per sentence, the (occurrence within the sentence, token
            position) pairs: occurrence ``j`` is the mean of the tokens paired with it.
        dropped: sentences dropped: ``too_long`` (over the model's context), ``no_words``,
            ``sampled_out`` (beyond ``max_sentences``); ``words_without_tokens``.
    """

    sentences: list[str]
    ids: list[list[int]]
    layout: Layout
    word_start: np.ndarray
    pair_word: list[np.ndarray]
    pair_token: list[np.ndarray]
    dropped: dict[str, int]


def _encode(tokenizer: object, sentences: list[str]) -> dict:
    try:
        return tokenizer(sentences, add_special_tokens=True,  # type: ignore[operator]
                         return_offsets_mapping=True, verbose=False)
    except NotImplementedError:
        raise LaminaError("contextuality needs a fast tokenizer (one that returns character "
                          "offsets) to find the tokens of each word; this model's tokenizer "
                          "does not.") from None
    except Exception as err:  # a character tokenizer meeting an unknown character
        raise TokenizationError(f"The tokenizer cannot encode the corpus ({err}): remove or "
                                "replace characters it does not know.") from None


def _words_of(text: str, offsets: list[tuple[int, int]]) -> tuple[list[str], list[np.ndarray]]:
    """Each word's type and the positions of the tokens overlapping it (words no token
    covers are left out)."""
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    real = spans[:, 1] > spans[:, 0]
    types, toks = [], []
    for m in WORD.finditer(text):
        hit = np.flatnonzero(real & (spans[:, 0] < m.end()) & (spans[:, 1] > m.start()))
        if len(hit):
            types.append(m.group().casefold())
            toks.append(hit)
    return types, toks


def prepare(model: object, sentences: list[str], *, min_occurrences: int,
            words: list[str] | None, max_sentences: int | None, seed: int) -> Prepared:
    """Tokenize ``sentences``, drop those over the context or without a word, sample
    ``max_sentences`` of the rest (with ``seed``, kept in corpus order), find every word
    occurrence and choose the word types (``min_occurrences`` or more, or ``words``)."""
    enc = _encode(model.tokenizer, sentences)  # type: ignore[attr-defined]
    limit = model.max_length  # type: ignore[attr-defined]
    dropped = {"too_long": 0, "no_words": 0, "sampled_out": 0, "words_without_tokens": 0}
    kept = []
    for i, (text, ids, offs) in enumerate(zip(sentences, enc["input_ids"],
                                              enc["offset_mapping"], strict=True)):
        if limit and len(ids) > limit:
            dropped["too_long"] += 1
            continue
        types, toks = _words_of(text, [tuple(o) for o in offs])
        dropped["words_without_tokens"] += len(WORD.findall(text)) - len(types)
        if not types:
            dropped["no_words"] += 1
            continue
        kept.append((i, list(ids), types, toks))
    if max_sentences is not None and len(kept) > max_sentences:
        pick = np.sort(np.random.default_rng(seed).choice(len(kept), max_sentences,
                                                          replace=False))
        dropped["sampled_out"] = len(kept) - max_sentences
        kept = [kept[i] for i in pick]
    if not kept:
        raise LaminaError(f"No usable sentence in the corpus ({len(sentences)} sentence(s): "
                          f"{dropped['too_long']} longer than the model's context of {limit} "
                          f"tokens, {dropped['no_words']} without a word): give running text "
                          "with words.")
    all_types = [t for _, _, types, _ in kept for t in types]
    index: dict[str, int] = {}
    type_of = np.array([index.setdefault(t, len(index)) for t in all_types], dtype=np.int64)
    sentence_of = np.concatenate([np.full(len(types), s, dtype=np.int64)
                                  for s, (_, _, types, _) in enumerate(kept)])
    counts = np.bincount(type_of, minlength=len(index))
    selected = select_types(list(index), counts, min_occurrences, words, len(kept))
    pair_word, pair_token = [], []
    for _, _, _, toks in kept:
        pair_word.append(np.concatenate([np.full(len(t), j) for j, t in enumerate(toks)]))
        pair_token.append(np.concatenate(toks))
    word_start = np.concatenate([[0], np.cumsum([len(k[2]) for k in kept])]).astype(np.int64)
    return Prepared([sentences[k[0]] for k in kept], [k[1] for k in kept],
                    Layout(list(index), type_of, sentence_of, selected), word_start,
                    pair_word, pair_token, dropped)


def select_types(types: list[str], counts: np.ndarray, min_occurrences: int,
                 words: list[str] | None, n_sentences: int) -> np.ndarray:
    """Mask of the types measured: those with ``min_occurrences`` or more occurrences, or
    exactly ``words`` (case-folded), each of which must occur that often."""
    if words is None:
        selected = counts >= min_occurrences
        if not selected.any():
            raise LaminaError(f"No word occurs {min_occurrences} times in the "
                              f"{n_sentences} sentence(s) used (the most frequent occurs "
                              f"{int(counts.max())} times): give more text or a smaller "
                              "min_occurrences.",
                              cli=f"No word occurs {min_occurrences} times in the "
                              f"{n_sentences} sentence(s) used: give more text, a larger "
                              "--max-sentences or a smaller --min-occurrences.")
        return selected
    index = {t: i for i, t in enumerate(types)}
    selected = np.zeros(len(types), dtype=bool)
    for w in words:
        key = w.casefold() if isinstance(w, str) else w
        n = int(counts[index[key]]) if key in index else 0
        if n < min_occurrences:
            raise LaminaError(f"The word {w!r} occurs {n} time(s) in the sentences used, "
                              f"fewer than min_occurrences={min_occurrences}: choose another "
                              "word, give more text or lower min_occurrences.")
        selected[index[key]] = True
    return selected
