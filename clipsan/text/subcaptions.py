"""CleanerCLIP's factual (positive) and counterfactual (negative) sub-captions.

A caption is parsed with SceneGraphParser (on clipsan's spaCy pipeline) into its
primary relation: subject, relation, object and their adjectives. The positive
sub-caption renders them in the paper's template

    (adjectives of the subject) subject relation (adjectives of the object) object

and a caption without a relation ("a picture of an apple") keeps only its core
noun ("apple"). The negative sub-caption replaces ONE component class, chosen at
random: the adjectives of subject and object, the relation, or the subject and
object nouns, with words drawn uniformly from the 3000-term WordNet banks; an
absent class ("no adjectives") falls through to another one at random, as the
paper prescribes.

Choices the paper leaves open, made here:
- Primary relation: a verb taking an object ("woman playing piano") beats a
  preposition attached to a verb ("dogs playing in snow", rendered with its verb),
  which beats a bare preposition ("cup on table"), which beats "of" ("cup of
  coffee"); earlier beats later.
- Framing nouns ("a picture of", "close-up of", "illustration of") are not
  subjects: their "of" relation is dropped and the core noun is what they frame.
  Relations involving "it"/"this"/"there"-like pronouns are dropped ("it was raining").
- Determiners and numbers are not adjectives and are left out of sub-captions.
- A replacement relation is a bank verb inflected like the verb it replaces
  (-ing for a preposition: "cup on table" -> "cup painting table").
- Sub-captions are lowercase, like the word banks.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass, replace
from typing import Any

from clipsan.text import wordbanks

COMPONENTS = ("adjective", "relation", "nouns")

# Nouns that frame a picture rather than name what is in it ("a photo of X").
FRAMING_NOUNS = frozenset(
    [
        "photo",
        "photograph",
        "picture",
        "image",
        "illustration",
        "view",
        "shot",
        "closeup",
        "close-up",
        "portrait",
        "snapshot",
        "pic",
        "footage",
        "stock",
        "vector",
        "render",
        "rendering",
        "drawing",
        "sketch",
        "painting",
        "cartoon",
        "clipart",
        "artwork",
        "graphic",
        "screenshot",
        "scene",
        "selfie",
    ]
)
EMPTY_PRONOUNS = frozenset(["it", "this", "that", "these", "those", "there", "which", "what", "who", "whom", "something"])


@dataclass(frozen=True)
class SceneParts:
    """The primary relation of a caption; ``relation``/``object`` are None without one."""

    subject: str
    subject_adjs: tuple[str, ...] = ()
    relation: str | None = None
    object: str | None = None
    object_adjs: tuple[str, ...] = ()
    relation_tag: str = ""  # Penn tag of the relation's first word, to inflect a replacement


def render(parts: SceneParts) -> str:
    """The paper's template: (adjs) subject relation (adjs) object."""
    words = [*parts.subject_adjs, parts.subject]
    if parts.relation is not None and parts.object is not None:
        words += [parts.relation, *parts.object_adjs, parts.object]
    return " ".join(w for w in words if w)


class SubcaptionMaker:
    """Positive/negative sub-captions; spaCy is loaded on first use, parses are cached."""

    def __init__(self, cache_size: int = 100_000) -> None:
        self._parser = None
        # The same captions recur every epoch: parse each one once.
        self._cached_parse = functools.lru_cache(maxsize=cache_size)(self._parse)

    def parse(self, caption: str) -> SceneParts:
        """The caption's primary relation (or core noun), cached."""
        return self._cached_parse(caption)

    def positive(self, caption: str) -> str:
        """The factual sub-caption."""
        return render(self.parse(caption))

    def negative(self, caption: str, rng: random.Random) -> tuple[str, str]:
        """(counterfactual sub-caption, replaced component); differs from ``positive``."""
        parts, component = self.negative_parts(caption, rng)
        return render(parts), component

    def negative_parts(self, caption: str, rng: random.Random) -> tuple[SceneParts, str]:
        positive = self.parse(caption)
        component = choose_component(positive, rng)
        negative = REPLACERS[component](positive, rng)
        if render(negative) == render(positive):  # cannot happen with distinct draws; be sure
            raise AssertionError(f"negative equals positive for {caption!r}")
        return negative, component

    def _parse(self, caption: str) -> SceneParts:
        if self._parser is None:
            from clipsan.text.nlp import scene_graph_parser

            self._parser = scene_graph_parser()
        graph, doc = self._parser.parse(caption, return_doc=True)
        return scene_parts(graph, doc, caption)


# --- parsing ------------------------------------------------------------------------


def scene_parts(graph: dict[str, Any], doc, caption: str) -> SceneParts:
    """The primary relation of a SceneGraphParser graph, or the core noun without one."""
    entities = graph["entities"]
    candidates = []
    for order, relation in enumerate(graph["relations"]):
        subject, obj = entities[relation["subject"]], entities[relation["object"]]
        if not (_is_content_entity(subject) and _is_content_entity(obj)):
            continue
        if _is_framing(subject) and relation["relation"].lower() == "of":
            continue
        text, tag, rank = _relation_phrase(relation["relation"], doc[_root_index(doc, obj)])
        candidates.append((rank, order, subject, text, tag, obj))
    if candidates:
        _, _, subject, text, tag, obj = min(candidates, key=lambda c: c[:2])
        return SceneParts(
            subject=_entity_text(subject),
            subject_adjs=_adjectives(subject),
            relation=text.lower(),
            object=_entity_text(obj),
            object_adjs=_adjectives(obj),
            relation_tag=tag,
        )
    return SceneParts(subject=core_noun(entities, doc, caption))


def _is_content_entity(entity: dict[str, Any]) -> bool:
    return entity["lemma_head"].lower() not in EMPTY_PRONOUNS and _has_letters(entity["head"])


def _is_framing(entity: dict[str, Any]) -> bool:
    head = entity["lemma_head"].lower()
    return head in FRAMING_NOUNS or head.replace(" ", "") in FRAMING_NOUNS or head.split()[-1] in FRAMING_NOUNS


def _entity_text(entity: dict[str, Any]) -> str:
    return " ".join(entity["head"].lower().split())


def _adjectives(entity: dict[str, Any]) -> tuple[str, ...]:
    return tuple(m["span"].lower() for m in entity["modifiers"] if m["dep"] == "amod" and _has_letters(m["span"]))


def _root_index(doc, entity: dict[str, Any]) -> int:
    start, end = entity["span_bounds"]
    return doc[start:end].root.i


def _relation_phrase(relation: str, object_root) -> tuple[str, str, int]:
    """(rendered relation, tag of its first word, rank: 0 verb, 1 verb + preposition,
    2 other preposition, 3 "of", which mostly says what something is made of or part of)."""
    first_word = relation.split()[0]
    # The relation's first word is the nearest token with that text before the object.
    token = next((t for t in reversed(object_root.doc[: object_root.i]) if t.text == first_word), object_root.head)
    if token.pos_ in ("VERB", "AUX"):
        return relation, token.tag_, 0
    if token.pos_ == "ADP" and token.head.pos_ == "VERB" and len(relation.split()) == 1:
        return f"{token.head.text} {relation}", token.head.tag_, 1
    return relation, token.tag_, 3 if relation.lower() == "of" else 2


def core_noun(entities: list[dict[str, Any]], doc, caption: str) -> str:
    """The single most important word of a caption without a relation."""
    content = [e for e in entities if _is_content_entity(e)]
    framed = [e for e in content if not _is_framing(e)]
    for group in (framed, content):
        if group:
            return _entity_text(group[0]).split()[-1]
    nouns = [t.text for t in doc if t.pos_ in ("NOUN", "PROPN") and _has_letters(t.text)]
    if nouns:
        return nouns[0].lower()
    words = [t.text.lower() for t in doc if _has_letters(t.text)]
    if words:
        return max(words, key=len)
    return caption.strip().lower()


def _has_letters(text: str) -> bool:
    return re.search(r"[^\W\d_]", text) is not None


# --- counterfactual replacement --------------------------------------------------------


def available_components(parts: SceneParts) -> list[str]:
    available = []
    if parts.subject_adjs or parts.object_adjs:
        available.append("adjective")
    if parts.relation is not None:
        available.append("relation")
    available.append("nouns")
    return available


def choose_component(parts: SceneParts, rng: random.Random) -> str:
    """One of the three classes at random; an absent one falls through to another at random."""
    chosen = rng.choice(COMPONENTS)
    available = available_components(parts)
    return chosen if chosen in available else rng.choice(available)


def _draw(bank: tuple[str, ...], avoid: set[str], rng: random.Random) -> str:
    while True:
        word = rng.choice(bank)
        if word not in avoid:
            return word


def replace_adjectives(parts: SceneParts, rng: random.Random) -> SceneParts:
    bank = wordbanks._adjectives()
    avoid = set(parts.subject_adjs) | set(parts.object_adjs)
    new_subject_adjs = tuple(_draw_distinct(bank, avoid, rng) for _ in parts.subject_adjs)
    new_object_adjs = tuple(_draw_distinct(bank, avoid, rng) for _ in parts.object_adjs)
    return replace(parts, subject_adjs=new_subject_adjs, object_adjs=new_object_adjs)


def _draw_distinct(bank: tuple[str, ...], avoid: set[str], rng: random.Random) -> str:
    """A draw not in ``avoid``, then added to it (two replacements never coincide)."""
    word = _draw(bank, avoid, rng)
    avoid.add(word)
    return word


def replace_relation(parts: SceneParts, rng: random.Random) -> SceneParts:
    avoid = set((parts.relation or "").split())
    verb = _draw(wordbanks._verbs(), avoid, rng)
    inflected = inflect(verb, parts.relation_tag)
    if inflected in avoid:  # e.g. "lay" drawn as the past of "lie" to replace "lay"
        return replace_relation(parts, rng)
    return replace(parts, relation=inflected)


def inflect(verb: str, tag: str) -> str:
    """The bank verb in the form the replaced relation had (-ing for non-verbs)."""
    forms = wordbanks.verb_forms(verb)
    if forms is None:
        return verb
    third, past, ing = forms
    if tag == "VBZ":
        return third
    if tag in ("VBD", "VBN"):
        return past
    if tag in ("VB", "VBP"):
        return verb
    return ing


def replace_nouns(parts: SceneParts, rng: random.Random) -> SceneParts:
    bank = wordbanks._nouns()
    avoid = {parts.subject, *(parts.subject.split()), parts.object or "", *((parts.object or "").split())}
    subject = _draw_distinct(bank, avoid, rng)
    obj = _draw_distinct(bank, avoid, rng) if parts.object is not None else None
    return replace(parts, subject=subject, object=obj)


REPLACERS = {"adjective": replace_adjectives, "relation": replace_relation, "nouns": replace_nouns}
