"""Build clipsan's word banks from WordNet 3.0 (run once by developers, never at run time).

Reads the WordNet 3.0 database as Debian's ``wordnet-base`` package installs it
(``/usr/share/wordnet``: data.*, index.*, *.exc, cntlist.rev) through NLTK's
``WordNetCorpusReader`` (nltk is a development-only dependency: ``pip install ".[wordbanks]"``).
NLTK also needs the ``lexnames`` file, which wordnet-base lacks; it is written from the
table in the package's ``lexnames.5WN`` man page. Writes into ``wordbanks/``:

- ``adjectives.txt``, ``verbs.txt``, ``nouns.txt``: 3000 single lowercase ASCII words
  each, ordered common -> rare by their summed SemCor sense tag counts (cntlist.rev),
  ties broken by polysemy then alphabetically. Nouns are concrete (their most frequent
  sense is an animal, artifact, body part, food, natural object, person, plant or
  substance); verbs are relational (one of their 3 most frequent senses takes a nominal object
  or is a contact/motion verb with a prepositional frame). Used by CleanerCLIP's
  counterfactual sub-captions.
- ``verb_forms.tsv``: base<TAB>3rd-person<TAB>past<TAB>-ing for the bank verbs, so a
  replacement verb can take the inflection of the verb it replaces.
- ``synonyms.tsv``: word<TAB>syn1|syn2|... for EDA, keyed by single-word lemmas of every
  part of speech; synonyms in WordNet sense order, cleaned the way EDA cleans text
  (lowercase letters and spaces).
- ``exceptions.tsv``: irregular inflection<TAB>base (WordNet's *.exc), so EDA can find
  synonyms of "ran" or "mice".
- ``LICENSE-WordNet-3.0.txt`` and ``README.md``.

Usage: python scripts/build_wordbanks.py [--wordnet /usr/share/wordnet] [--out wordbanks]
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import re
import shutil
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nltk
from nltk.corpus.reader.wordnet import Synset, WordNetCorpusReader, WordNetError

BANK_SIZE = 3000
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
SENSE_KEY_SS_TYPE_TO_POS = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}
# The database files NLTK's reader opens (it never needs index.sense for what is read here).
DATABASE_FILES = [
    *(f"{kind}.{name}" for kind in ("data", "index") for name in POS_FILES.values()),
    *(f"{name}.exc" for name in POS_FILES.values()),
    "cntlist.rev",
]
# lexnames' third field, the syntactic category, is the file name's prefix (see lexnames(5WN)).
LEXNAME_CATEGORIES = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
LEXNAMES_MAN_PAGE = Path("/usr/share/man/man5/lexnames.5WN.gz")
DEBIAN_COPYRIGHT = Path("/usr/share/doc/wordnet-base/copyright")

CONCRETE_NOUN_LEXNAMES = {
    "noun.animal",
    "noun.artifact",
    "noun.body",
    "noun.food",
    "noun.object",
    "noun.person",
    "noun.plant",
    "noun.substance",
}
# Verb frames with a nominal object ("Somebody ----s something", ... see wndb(5WN)).
TRANSITIVE_FRAMES = {8, 9, 10, 11, 14, 15, 16, 17, 18, 19, 20, 21, 30, 31}
# "Somebody ----s on something" / "Somebody ----s PP": spatial relations (sit on, lean against).
PREPOSITIONAL_FRAMES = {13, 22}
SPATIAL_VERB_LEXNAMES = {"verb.contact", "verb.motion", "verb.body"}
# Verbs of thinking/feeling/being relate things nobody can see in a picture.
NON_DEPICTABLE_VERB_LEXNAMES = {"verb.cognition", "verb.emotion", "verb.stative"}

# Usage domains that mark offensive words: excluded if any sense carries them.
OFFENSIVE_USAGES = {"ethnic_slur", "obscenity", "disparagement"}
# Usage domains that make a poor bank word: excluded if the main sense carries them.
NONSTANDARD_USAGES = {"trade_name", "trademark", "slang", "colloquialism", "archaism"}

# Function-like words that WordNet lists as adjectives/verbs but that say nothing
# depictable; replacing "red" with "other" would not be a counterfactual.
FUNCTION_WORDS = {
    "other",
    "such",
    "same",
    "own",
    "many",
    "much",
    "more",
    "most",
    "few",
    "less",
    "least",
    "several",
    "certain",
    "various",
    "else",
    "next",
    "last",
    "first",
    "second",
    "third",
    "only",
    "very",
    "some",
    "any",
    "all",
    "another",
    "both",
    "each",
    "every",
    "either",
    "neither",
    "no",
    "not",
    "be",
    "have",
    "do",
    "get",
    "let",
    "make",
    "go",
    "say",
    "seem",
    "become",
    "can",
    "may",
    "might",
    "must",
    "shall",
    "will",
    "would",
    "should",
    "could",
    "ought",
    "use",
}


class PlainWordNet(WordNetCorpusReader):
    """NLTK's reader on a bare WordNet 3.0 database, without the Open Multilingual Wordnet."""

    def map_wn(self, version="wordnet"):
        # NLTK maps any database onto its downloaded "wordnet" corpus (for OMW) through both
        # index.sense files; neither is here, and nothing multilingual is read.
        return None


def lexnames_text(man_page: Path) -> str:
    """The ``lexnames`` file ("NN<TAB>name<TAB>category" lines) from the table in lexnames(5WN)."""
    with gzip.open(man_page, "rt") if man_page.suffix == ".gz" else open(man_page) as handle:
        text = handle.read()
    rows = re.findall(r"^(\d\d)\t(\S+)\s*\t", text, re.MULTILINE)
    if len(rows) != 45:
        raise SystemExit(f"{man_page}: expected 45 lexicographer files, found {len(rows)}")
    return "".join(f"{number}\t{name}\t{LEXNAME_CATEGORIES[name.split('.')[0]]}\n" for number, name in rows)


@contextmanager
def open_wordnet(wordnet: Path, lexnames_man_page: Path) -> Iterator[PlainWordNet]:
    """A reader on a temporary copy of the database plus the generated ``lexnames``."""
    with tempfile.TemporaryDirectory(prefix="wordnet-") as root:
        # Copies, not symlinks: NLTK refuses files whose real path leaves the reader's root.
        for name in DATABASE_FILES:
            shutil.copyfile(wordnet / name, Path(root, name))
        Path(root, "lexnames").write_text(lexnames_text(lexnames_man_page))
        nltk.data.path.append(root)  # NLTK only reads corpora under its data path
        try:
            with warnings.catch_warnings():  # "multilingual functions are not available": none are used
                warnings.simplefilter("ignore", UserWarning)
                reader = PlainWordNet(root, None)
            yield reader
        finally:
            nltk.data.path.remove(root)


def senses(wn: PlainWordNet, lemma: str, pos: str) -> list[Synset]:
    """The lemma's synsets in WordNet's sense order (most frequent first), exactly as its
    index line lists them: ``wn.synsets()`` would add the synsets of morphological variants."""
    found = []
    for number in itertools.count(1):
        try:
            found.append(wn.synset(f"{lemma}.{pos}.{number:02d}"))
        except WordNetError:
            return found


def is_plain_word(lemma: str) -> bool:
    return re.fullmatch(r"[a-z]{2,}", lemma) is not None


def read_index(wn: PlainWordNet, pos: str) -> dict[str, list[Synset]]:
    """Plain single-word lemma -> its synsets in sense order (no other lemma is used)."""
    return {lemma: senses(wn, lemma, pos) for lemma in sorted(wn.all_lemma_names(pos)) if is_plain_word(lemma)}


def read_tag_counts(wn: PlainWordNet) -> dict[tuple[str, str], int]:
    """(lemma, pos) -> total SemCor tag count over its sense keys in cntlist.rev.

    Read here rather than summing ``Lemma.count()``, which finds a count only under the exact
    sense key of a 3.0 sense. It would miss the 83 keys whose head word keeps its syntactic
    marker ("last%5:00:00:dying(a):00") and the 1909 keys of senses that the 2001 concordances
    tagged but the 3.0 database no longer has (see cntlist(5WN)). Those are still tags of the
    word, which is what the ranking measures.
    """
    counts: dict[tuple[str, str], int] = defaultdict(int)
    with wn.open("cntlist.rev") as handle:
        for line in handle:
            sense_key, _sense_number, tag_count = line.split()
            lemma, lex_sense = sense_key.split("%", 1)
            counts[(lemma, SENSE_KEY_SS_TYPE_TO_POS[lex_sense[0]])] += int(tag_count)
    return counts


def usage_names(synset: Synset) -> set[str]:
    """The synset's usage domains ("slang", "trademark"), including those WordNet puts on one of
    its words (Tylenol, trademark): as the banks always have, they count for the whole synset."""
    domains = synset.usage_domains() + [target.synset() for word in synset.lemmas() for target in word.usage_domains()]
    return {domain.lemma_names()[0].lower() for domain in domains}


def frame_ids(synset: Synset) -> set[int]:
    """Verb frames of the synset, including those WordNet gives only one of its words (as the banks always have)."""
    return {frame for word in synset.lemmas() for frame in word.frame_ids()}


def bank_candidate(lemma: str, synsets: list[Synset]) -> Synset | None:
    """The lemma's main synset if the lemma can go into a bank at all, else None."""
    if lemma in FUNCTION_WORDS:
        return None
    main = synsets[0]
    # WordNet lowercases the index; the data file keeps "Paris": skip proper nouns.
    written = [w for w in main.lemma_names() if w.lower() == lemma]
    if main.instance_hypernyms() or not written or written[0] != lemma:
        return None
    if any(usage_names(synset) & OFFENSIVE_USAGES for synset in synsets):
        return None
    if usage_names(main) & NONSTANDARD_USAGES:
        return None
    return main


def is_descriptive_adjective(main: Synset) -> bool:
    """Not a number word: satellites of the "cardinal"/"ordinal" clusters say how many, not how."""
    if main.pos() != "s":  # a head's similar-to pointers lead to its satellites, not to a head
        return True
    heads = {word for head in main.similar_tos() for word in head.lemma_names()}
    return not heads & {"cardinal", "ordinal"}


def is_concrete_noun(main: Synset) -> bool:
    return main.lexname() in CONCRETE_NOUN_LEXNAMES


def is_relational_verb(main: Synset) -> bool:
    if main.lexname() in NON_DEPICTABLE_VERB_LEXNAMES:
        return False
    frames = frame_ids(main)
    if frames & TRANSITIVE_FRAMES:
        return True
    return main.lexname() in SPATIAL_VERB_LEXNAMES and bool(frames & PREPOSITIONAL_FRAMES)


def rank_bank(accept, index: dict[str, list[Synset]], counts, pos: str, senses_considered: int = 1) -> list[str]:
    """BANK_SIZE lemmas ordered common -> rare; ``accept`` must hold for one of the
    lemma's ``senses_considered`` most frequent senses."""
    scored = []
    for lemma, synsets in index.items():
        if bank_candidate(lemma, synsets) is None:
            continue
        if any(accept(synset) for synset in synsets[:senses_considered]):
            scored.append((-counts.get((lemma, pos), 0), -len(synsets), lemma))
    scored.sort()
    if len(scored) < BANK_SIZE:
        raise SystemExit(f"only {len(scored)} candidates for pos {pos!r}, need {BANK_SIZE}")
    return [lemma for _, _, lemma in scored[:BANK_SIZE]]


def clean_like_eda(text: str) -> str:
    """What EDA's text cleaning leaves of a lemma: lowercase letters and single spaces."""
    text = text.replace("_", " ").replace("-", " ").replace("'", "").lower()
    return " ".join(re.sub(r"[^a-z ]", "", text).split())


def build_synonyms(indexes: dict[str, dict[str, list[Synset]]]) -> dict[str, list[str]]:
    """Single-word lemma -> synonyms over all its senses and parts of speech, in sense order."""
    synonyms: dict[str, list[str]] = {}
    for pos in ("n", "v", "a", "r"):
        for lemma, synsets in indexes[pos].items():
            found = synonyms.setdefault(lemma, [])
            for synset in synsets:
                for word in synset.lemma_names():
                    cleaned = clean_like_eda(word)
                    if cleaned and cleaned != lemma and cleaned not in found:
                        found.append(cleaned)
    return {lemma: found for lemma, found in sorted(synonyms.items()) if found}


def exception_lines(wn: PlainWordNet, pos: str) -> Iterator[list[str]]:
    """Fields of the lines of a *.exc file: an irregular form, then its base forms."""
    with wn.open(f"{POS_FILES[pos]}.exc") as handle:
        for line in handle:
            yield line.split()


def read_exceptions(wn: PlainWordNet) -> dict[str, str]:
    """Irregular inflected form -> base form, single plain words only (first base wins)."""
    exceptions: dict[str, str] = {}
    for pos in POS_FILES:
        for inflected, base, *_ in exception_lines(wn, pos):
            if is_plain_word(inflected) and is_plain_word(base) and inflected != base:
                exceptions.setdefault(inflected, base)
    return dict(sorted(exceptions.items()))


def irregular_verb_forms(wn: PlainWordNet) -> dict[str, list[str]]:
    """base -> its irregular forms from verb.exc ("run" -> ["ran", "running"])."""
    forms: dict[str, list[str]] = defaultdict(list)
    for inflected, *bases in exception_lines(wn, "v"):
        for base in bases:
            forms[base].append(inflected)
    return forms


def regular_third_person(base: str) -> str:
    if re.search(r"(s|x|z|ch|sh|o)$", base):
        return base + "es"
    if re.search(r"[^aeiou]y$", base):
        return base[:-1] + "ies"
    return base + "s"


def regular_past(base: str) -> str:
    if base.endswith("e"):
        return base + "d"
    if re.search(r"[^aeiou]y$", base):
        return base[:-1] + "ied"
    return base + "ed"


def regular_ing(base: str) -> str:
    if base.endswith("ie"):
        return base[:-2] + "ying"
    if re.search(r"[^aeiouy]e$", base) and base not in {"be", "singe", "dye"}:
        return base[:-1] + "ing"
    return base + "ing"


def verb_forms(base: str, irregular: dict[str, list[str]]) -> tuple[str, str, str]:
    """(3rd person, past, -ing), preferring WordNet's irregular spellings (ran, stopping)."""
    known = irregular.get(base, [])
    ing = next((f for f in known if f.endswith("ing")), regular_ing(base))
    third = next((f for f in known if f.endswith("s") and not f.endswith("ss") and f.startswith(base[:-1])), regular_third_person(base))
    # verb.exc lists simple past and participle alike (took, taken); the participle
    # usually ends in -n, and the simple past reads better in a sub-caption.
    past_candidates = sorted((f for f in known if not f.endswith("ing") and f != third), key=lambda f: f.endswith("n"))
    past = past_candidates[0] if past_candidates else regular_past(base)
    return third, past, ing


def license_text(copyright_file: Path) -> str:
    """The WordNet 3.0 license paragraph of the Debian copyright file, de-indented."""
    text = copyright_file.read_text()
    match = re.search(r"License: WordNet3\.0\n(.*?)\n\n", text, re.DOTALL)
    if not match:
        raise SystemExit(f"{copyright_file}: no 'License: WordNet3.0' paragraph")
    body = "\n".join("" if line.strip() == "." else line[1:] for line in match.group(1).splitlines())
    return "WordNet Release 3.0\n\nThe word banks in this directory are derived from WordNet 3.0.\n\n" + body.strip() + "\n"


README = """\
# clipsan word banks

Derived from WordNet 3.0 (see LICENSE-WordNet-3.0.txt) by `scripts/build_wordbanks.py`.
Read at run time by `clipsan.text.wordbanks`; WordNet itself is not needed at run time.

| file | content |
|---|---|
| adjectives.txt | {n} adjectives, common -> rare |
| verbs.txt | {n} relational verbs (take an object, or contact/motion verbs with a prepositional frame), common -> rare |
| nouns.txt | {n} concrete nouns (main sense: animal, artifact, body, food, object, person, plant, substance), common -> rare |
| verb_forms.tsv | base, 3rd person, past, -ing of each bank verb |
| synonyms.tsv | single word -> synonyms over all senses (EDA), `|`-separated, sense order |
| exceptions.tsv | irregular inflection -> base form (WordNet *.exc) |

"Common -> rare" is the summed SemCor tag count of the word's senses (`cntlist.rev`),
then the number of senses, then alphabetical. Bank words are single lowercase ASCII words;
proper nouns and words WordNet marks as slurs, obscene, disparaging, slang,
colloquial, archaic or trade names are left out.

## Rebuild

```sh
apt-get install wordnet-base          # Debian/Ubuntu: WordNet 3.0 in /usr/share/wordnet
pip install ".[wordbanks]"            # nltk, for the build only
python scripts/build_wordbanks.py     # --wordnet DIR --out DIR to change the paths
```
The build reads WordNet through nltk's `WordNetCorpusReader`, with the `lexnames` file it
needs (wordnet-base lacks it) written from the `lexnames(5WN)` man page; nltk is not needed
at run time. The build is deterministic: the same WordNet gives byte-identical files.
"""


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="ascii")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--lexnames", type=Path, default=LEXNAMES_MAN_PAGE)
    parser.add_argument("--copyright", type=Path, default=DEBIAN_COPYRIGHT)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "wordbanks")
    args = parser.parse_args()

    with open_wordnet(args.wordnet, args.lexnames) as wn:
        indexes = {pos: read_index(wn, pos) for pos in POS_FILES}
        counts = read_tag_counts(wn)
        banks = {
            "adjectives": rank_bank(is_descriptive_adjective, indexes["a"], counts, "a"),
            # "hold" and "stop" are relational in their 2nd sense, not their 1st.
            "verbs": rank_bank(is_relational_verb, indexes["v"], counts, "v", senses_considered=3),
            "nouns": rank_bank(is_concrete_noun, indexes["n"], counts, "n"),
        }
        synonyms = build_synonyms(indexes)
        irregular = irregular_verb_forms(wn)
        exceptions = read_exceptions(wn)

    args.out.mkdir(parents=True, exist_ok=True)
    for name, words in banks.items():
        write_lines(args.out / f"{name}.txt", words)
    write_lines(args.out / "verb_forms.tsv", ["\t".join((verb, *verb_forms(verb, irregular))) for verb in banks["verbs"]])
    write_lines(args.out / "synonyms.tsv", [f"{w}\t{'|'.join(s)}" for w, s in synonyms.items()])
    write_lines(args.out / "exceptions.tsv", [f"{form}\t{base}" for form, base in exceptions.items()])
    (args.out / "LICENSE-WordNet-3.0.txt").write_text(license_text(args.copyright))
    (args.out / "README.md").write_text(README.format(n=BANK_SIZE))
    for path in sorted(args.out.iterdir()):
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
