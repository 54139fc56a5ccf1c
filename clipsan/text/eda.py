"""EDA caption augmentation (Wei & Zou, 2019) as CleanCLIP uses it.

Four operations on the cleaned word list, each with strength 0.1 by default:
synonym replacement (SR), random insertion of a synonym (RI), random swap (RS)
and random deletion (RD). SR/RI/RS make ``max(1, int(alpha * n_words))`` changes;
RD deletes each word with probability ``p_rd``.

One augmented sentence per call, from ONE operation drawn uniformly among the
enabled ones (alpha > 0). That is what CleanCLIP's pipeline amounts to: it asks
EDA for a single augmentation, EDA produces one sentence per operation, shuffles
them and keeps the first. Unlike CleanCLIP, which augments once when building the
dataset, the caller draws a fresh ``rng`` per sample and epoch, so captions are
re-augmented every epoch.

Text is cleaned like CleanCLIP's EDA (lowercase, apostrophes dropped, hyphens to
spaces, anything but letters and spaces removed), with one addition: accents are
folded first ("café" -> "cafe" instead of "caf"). Synonyms come from the WordNet
bank in ``clipsan.text.wordbanks`` in WordNet's sense order, so the output depends
only on ``rng`` (EDA's reference code collects synonyms in a ``set``, whose order
changes with Python's hash seed).

Why not nlpaug: its ``RandomWordAug`` (swap/delete) draws from the global
``random``/``numpy`` state, so a sample's augmentation would depend on what other
code and other samples drew before it; the clipsan rule is per-sample RNGs
(``clipsan.seeding``). Seeding the global state around every call is not
thread-safe. It is not faster either: on 1000 CC3M-style captions, one core of
a shared 2-core machine, nlpaug's swap ran at 28-49k captions/s and delete at
32-55k/s, this module's swap at ~83k/s and delete at ~126k/s (cleaning included),
and a full ``eda()`` call at ~86k/s.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable

from clipsan.text.wordbanks import synonyms

# EDA's stopword list: never replaced by a synonym.
STOPWORDS = frozenset(
    [
        "i",
        "me",
        "my",
        "myself",
        "we",
        "our",
        "ours",
        "ourselves",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "he",
        "him",
        "his",
        "himself",
        "she",
        "her",
        "hers",
        "herself",
        "it",
        "its",
        "itself",
        "they",
        "them",
        "their",
        "theirs",
        "themselves",
        "what",
        "which",
        "who",
        "whom",
        "this",
        "that",
        "these",
        "those",
        "am",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "have",
        "has",
        "had",
        "having",
        "do",
        "does",
        "did",
        "doing",
        "a",
        "an",
        "the",
        "and",
        "but",
        "if",
        "or",
        "because",
        "as",
        "until",
        "while",
        "of",
        "at",
        "by",
        "for",
        "with",
        "about",
        "against",
        "between",
        "into",
        "through",
        "during",
        "before",
        "after",
        "above",
        "below",
        "to",
        "from",
        "up",
        "down",
        "in",
        "out",
        "on",
        "off",
        "over",
        "under",
        "again",
        "further",
        "then",
        "once",
        "here",
        "there",
        "when",
        "where",
        "why",
        "how",
        "all",
        "any",
        "both",
        "each",
        "few",
        "more",
        "most",
        "other",
        "some",
        "such",
        "no",
        "nor",
        "not",
        "only",
        "own",
        "same",
        "so",
        "than",
        "too",
        "very",
        "s",
        "t",
        "can",
        "will",
        "just",
        "don",
        "should",
        "now",
    ]
)

# Tries to find a word with synonyms before random insertion gives up (as in EDA).
INSERTION_ATTEMPTS = 10


def clean_caption(caption: str) -> list[str]:
    """Lowercase ASCII words: accents folded, apostrophes dropped, other non-letters -> spaces."""
    folded = unicodedata.normalize("NFKD", caption)
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    folded = folded.lower().replace("'", "").replace("\u2019", "")
    return re.sub(r"[^a-z]+", " ", folded).split()


def change_count(alpha: float, n_words: int) -> int:
    return max(1, int(alpha * n_words))


def synonym_replacement(words: list[str], n: int, rng: random.Random) -> list[str]:
    """Replace every occurrence of up to ``n`` distinct non-stopwords by one of their synonyms."""
    candidates = list(dict.fromkeys(w for w in words if w not in STOPWORDS))
    rng.shuffle(candidates)
    result = list(words)
    replaced = 0
    for word in candidates:
        options = synonyms(word)
        if not options:
            continue
        chosen = rng.choice(options)
        result = [chosen if w == word else w for w in result]
        replaced += 1
        if replaced >= n:
            break
    return result


def random_insertion(words: list[str], n: int, rng: random.Random) -> list[str]:
    """Insert ``n`` times a synonym of a random word at a random position.

    An insertion is skipped (as in EDA) when INSERTION_ATTEMPTS random words have
    no synonym; the result then grows by fewer than ``n`` items.
    """
    result = list(words)
    for _ in range(n):
        synonym = _random_synonym(result, rng)
        if synonym is None:
            continue
        result.insert(rng.randint(0, len(result)), synonym)
    return result


def _random_synonym(words: list[str], rng: random.Random) -> str | None:
    for _ in range(INSERTION_ATTEMPTS):
        # A multi-word item inserted earlier is looked up by its first word.
        options = synonyms(rng.choice(words).split()[0])
        if options:
            return rng.choice(options)
    return None


def random_swap(words: list[str], n: int, rng: random.Random) -> list[str]:
    """Swap two distinct random positions ``n`` times."""
    result = list(words)
    if len(result) < 2:
        return result
    for _ in range(n):
        i, j = rng.sample(range(len(result)), 2)
        result[i], result[j] = result[j], result[i]
    return result


def random_deletion(words: list[str], p: float, rng: random.Random) -> list[str]:
    """Delete each word with probability ``p``; keep one random word if all would go."""
    if len(words) <= 1:
        return list(words)
    kept = [w for w in words if rng.random() >= p]
    return kept if kept else [rng.choice(words)]


Operation = Callable[[list[str], random.Random], list[str]]


def _enabled_operations(alpha_sr: float, alpha_ri: float, alpha_rs: float, p_rd: float, n_words: int) -> list[Operation]:
    operations: list[Operation] = []
    if alpha_sr > 0:
        operations.append(lambda w, r: synonym_replacement(w, change_count(alpha_sr, n_words), r))
    if alpha_ri > 0:
        operations.append(lambda w, r: random_insertion(w, change_count(alpha_ri, n_words), r))
    if alpha_rs > 0:
        operations.append(lambda w, r: random_swap(w, change_count(alpha_rs, n_words), r))
    if p_rd > 0:
        operations.append(lambda w, r: random_deletion(w, p_rd, r))
    return operations


def eda(caption: str, rng: random.Random, alpha_sr: float = 0.1, alpha_ri: float = 0.1, alpha_rs: float = 0.1, p_rd: float = 0.1) -> str:
    """One EDA-augmented version of ``caption``; deterministic given ``rng``'s state.

    Never empty unless ``caption`` is: a caption without letters comes back stripped
    but unchanged, and an operation that leaves nothing falls back to the cleaned words.
    """
    words = clean_caption(caption)
    if not words:
        return caption.strip() or caption
    operations = _enabled_operations(alpha_sr, alpha_ri, alpha_rs, p_rd, len(words))
    if not operations:
        return " ".join(words)
    augmented = " ".join(" ".join(rng.choice(operations)(words, rng)).split())
    return augmented or " ".join(words)
