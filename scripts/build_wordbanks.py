#!/usr/bin/env python3
"""Build clipsan's word banks from WordNet 3.0 (run once by developers, never at run time).

Reads the WordNet 3.0 database as Debian's ``wordnet-base`` package installs it
(``/usr/share/wordnet``: data.*, index.*, *.exc, cntlist.rev; the lexicographer file
names come from the ``lexnames.5WN`` man page) and writes into ``wordbanks/``:

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
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

BANK_SIZE = 3000
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
SENSE_KEY_SS_TYPE_TO_POS = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}
DATA_SS_TYPE_TO_POS = {"n": "n", "v": "v", "a": "a", "s": "a", "r": "r"}
LEXNAMES_MAN_PAGE = Path("/usr/share/man/man5/lexnames.5WN.gz")
DEBIAN_COPYRIGHT = Path("/usr/share/doc/wordnet-base/copyright")

CONCRETE_NOUN_LEXNAMES = {
    "noun.animal", "noun.artifact", "noun.body", "noun.food", "noun.object",
    "noun.person", "noun.plant", "noun.substance",
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
    "other", "such", "same", "own", "many", "much", "more", "most", "few", "less", "least",
    "several", "certain", "various", "else", "next", "last", "first", "second", "third",
    "only", "very", "some", "any", "all", "another", "both", "each", "every", "either", "neither", "no", "not",
    "be", "have", "do", "get", "let", "make", "go", "say", "seem", "become", "can",
    "may", "might", "must", "shall", "will", "would", "should", "could", "ought", "use",
}


@dataclass
class Synset:
    pos: str
    lexname: str
    words: list[str]  # lemmas as written in the data file (case kept, markers removed)
    usages: list[str] = field(default_factory=list)  # offsets of ;u usage-domain synsets
    frames: set[int] = field(default_factory=set)
    similar_to: list[str] = field(default_factory=list)  # adjective cluster links (& pointers)
    is_satellite: bool = False
    is_instance: bool = False  # proper-noun instance ("Paris")


def parse_lexnames(man_page: Path) -> dict[int, str]:
    """Lexicographer file numbers -> names, read from the table in lexnames(5WN)."""
    text = gzip.open(man_page, "rt").read() if man_page.suffix == ".gz" else man_page.read_text()
    names = {}
    for line in text.splitlines():
        match = re.match(r"^(\d\d)\t(\S+)\s*\t", line)
        if match:
            names[int(match.group(1))] = match.group(2)
    if len(names) != 45:
        raise SystemExit(f"{man_page}: expected 45 lexicographer files, found {len(names)}")
    return names


def database_lines(path: Path):
    """Lines of a WordNet database file, without the license header (lines starting with a space)."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.startswith(" "):
                yield line.rstrip("\n")


def parse_synset_line(line: str, lexnames: dict[int, str]) -> tuple[str, Synset]:
    fields = line.split(" | ", 1)[0].split()
    offset, lex_filenum, ss_type = fields[0], int(fields[1]), fields[2]
    word_count = int(fields[3], 16)
    words = [re.sub(r"\((a|p|ip)\)$", "", fields[4 + 2 * i]) for i in range(word_count)]
    cursor = 4 + 2 * word_count
    pointer_count = int(fields[cursor])
    cursor += 1
    synset = Synset(pos=DATA_SS_TYPE_TO_POS[ss_type], lexname=lexnames[lex_filenum], words=words,
                    is_satellite=ss_type == "s")
    for _ in range(pointer_count):
        symbol, target = fields[cursor], fields[cursor + 1]
        if symbol == ";u":
            synset.usages.append(target)
        elif symbol == "&":
            synset.similar_to.append(target)
        elif symbol == "@i":
            synset.is_instance = True
        cursor += 4
    if synset.pos == "v" and cursor < len(fields):
        frame_count = int(fields[cursor])
        cursor += 1
        for _ in range(frame_count):  # "+ f_num w_num": frames of the synset or of one word
            synset.frames.add(int(fields[cursor + 1]))
            cursor += 3
    return offset, synset


def read_synsets(wordnet: Path, lexnames: dict[int, str]) -> dict[tuple[str, str], Synset]:
    synsets = {}
    for pos, name in POS_FILES.items():
        for line in database_lines(wordnet / f"data.{name}"):
            offset, synset = parse_synset_line(line, lexnames)
            synsets[(pos, offset)] = synset
    return synsets


def read_index(wordnet: Path, pos: str) -> dict[str, list[str]]:
    """lemma -> synset offsets in WordNet's sense order (most frequent first)."""
    senses = {}
    for line in database_lines(wordnet / f"index.{POS_FILES[pos]}"):
        fields = line.split()
        synset_count, pointer_count = int(fields[2]), int(fields[3])
        senses[fields[0]] = fields[6 + pointer_count:6 + pointer_count + synset_count]
    return senses


def read_tag_counts(wordnet: Path) -> dict[tuple[str, str], int]:
    """(lemma, pos) -> total SemCor tag count over its senses (cntlist.rev)."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for line in database_lines(wordnet / "cntlist.rev"):
        sense_key, _sense_number, tag_count = line.split()
        lemma, lex_sense = sense_key.split("%", 1)
        counts[(lemma, SENSE_KEY_SS_TYPE_TO_POS[lex_sense[0]])] += int(tag_count)
    return counts


def usage_names(synset: Synset, synsets: dict[tuple[str, str], Synset]) -> set[str]:
    return {synsets[("n", offset)].words[0].lower() for offset in synset.usages}


def is_plain_word(lemma: str) -> bool:
    return re.fullmatch(r"[a-z]{2,}", lemma) is not None


def bank_candidate(lemma: str, pos: str, offsets: list[str], synsets) -> Synset | None:
    """The lemma's main synset if the lemma can go into a bank at all, else None."""
    if not is_plain_word(lemma) or lemma in FUNCTION_WORDS:
        return None
    main = synsets[(pos, offsets[0])]
    # WordNet lowercases the index; the data file keeps "Paris": skip proper nouns.
    written = [w for w in main.words if w.lower() == lemma]
    if main.is_instance or not written or written[0] != lemma:
        return None
    if any(usage_names(synsets[(pos, o)], synsets) & OFFENSIVE_USAGES for o in offsets):
        return None
    if usage_names(main, synsets) & NONSTANDARD_USAGES:
        return None
    return main


def is_descriptive_adjective(main: Synset, synsets) -> bool:
    """Not a number word: satellites of the "cardinal"/"ordinal" clusters say how many, not how."""
    if not main.is_satellite:  # a head's & pointers lead to its satellites, not to a head
        return True
    heads = {word for offset in main.similar_to for word in synsets[("a", offset)].words}
    return not heads & {"cardinal", "ordinal"}


def is_concrete_noun(main: Synset) -> bool:
    return main.lexname in CONCRETE_NOUN_LEXNAMES


def is_relational_verb(main: Synset) -> bool:
    if main.lexname in NON_DEPICTABLE_VERB_LEXNAMES:
        return False
    if main.frames & TRANSITIVE_FRAMES:
        return True
    return main.lexname in SPATIAL_VERB_LEXNAMES and bool(main.frames & PREPOSITIONAL_FRAMES)


def rank_bank(pos: str, accept, index, synsets, counts, senses_considered: int = 1) -> list[str]:
    """BANK_SIZE lemmas ordered common -> rare; ``accept`` must hold for one of the
    lemma's ``senses_considered`` most frequent senses."""
    scored = []
    for lemma, offsets in index.items():
        main = bank_candidate(lemma, pos, offsets, synsets)
        if main is None:
            continue
        if any(accept(synsets[(pos, o)]) for o in offsets[:senses_considered]):
            scored.append((-counts.get((lemma, pos), 0), -len(offsets), lemma))
    scored.sort()
    if len(scored) < BANK_SIZE:
        raise SystemExit(f"only {len(scored)} candidates for pos {pos!r}, need {BANK_SIZE}")
    return [lemma for _, _, lemma in scored[:BANK_SIZE]]


def clean_like_eda(text: str) -> str:
    """What EDA's text cleaning leaves of a lemma: lowercase letters and single spaces."""
    text = text.replace("_", " ").replace("-", " ").replace("'", "").lower()
    return " ".join(re.sub(r"[^a-z ]", "", text).split())


def build_synonyms(indexes: dict[str, dict[str, list[str]]], synsets) -> dict[str, list[str]]:
    """Single-word lemma -> synonyms over all its senses and parts of speech, in sense order."""
    synonyms: dict[str, list[str]] = {}
    for pos in ("n", "v", "a", "r"):
        for lemma, offsets in indexes[pos].items():
            if not is_plain_word(lemma):
                continue
            found = synonyms.setdefault(lemma, [])
            for offset in offsets:
                for word in synsets[(pos, offset)].words:
                    cleaned = clean_like_eda(word)
                    if cleaned and cleaned != lemma and cleaned not in found:
                        found.append(cleaned)
    return {lemma: found for lemma, found in sorted(synonyms.items()) if found}


def read_exceptions(wordnet: Path) -> dict[str, str]:
    """Irregular inflected form -> base form, single plain words only (first base wins)."""
    exceptions: dict[str, str] = {}
    for name in ("noun", "verb", "adj", "adv"):
        for line in database_lines(wordnet / f"{name}.exc"):
            inflected, base = line.split()[:2]
            if is_plain_word(inflected) and is_plain_word(base) and inflected != base:
                exceptions.setdefault(inflected, base)
    return dict(sorted(exceptions.items()))


def irregular_verb_forms(wordnet: Path) -> dict[str, list[str]]:
    """base -> its irregular forms from verb.exc ("run" -> ["ran", "running"])."""
    forms: dict[str, list[str]] = defaultdict(list)
    for line in database_lines(wordnet / "verb.exc"):
        inflected, *bases = line.split()
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
    third = next((f for f in known if f.endswith("s") and not f.endswith("ss")
                  and f.startswith(base[:-1])), regular_third_person(base))
    # verb.exc lists simple past and participle alike (took, taken); the participle
    # usually ends in -n, and the simple past reads better in a sub-caption.
    past_candidates = sorted((f for f in known if not f.endswith("ing") and f != third),
                             key=lambda f: f.endswith("n"))
    past = past_candidates[0] if past_candidates else regular_past(base)
    return third, past, ing


def license_text(copyright_file: Path) -> str:
    """The WordNet 3.0 license paragraph of the Debian copyright file, de-indented."""
    text = copyright_file.read_text()
    match = re.search(r"License: WordNet3\.0\n(.*?)\n\n", text, re.S)
    if not match:
        raise SystemExit(f"{copyright_file}: no 'License: WordNet3.0' paragraph")
    body = "\n".join("" if line.strip() == "." else line[1:] for line in match.group(1).splitlines())
    return ("WordNet Release 3.0\n\nThe word banks in this directory are derived from WordNet 3.0.\n\n"
            + body.strip() + "\n")


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
python scripts/build_wordbanks.py     # --wordnet DIR --out DIR to change the paths
```
The build is deterministic: the same WordNet gives byte-identical files.
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

    lexnames = parse_lexnames(args.lexnames)
    synsets = read_synsets(args.wordnet, lexnames)
    indexes = {pos: read_index(args.wordnet, pos) for pos in POS_FILES}
    counts = read_tag_counts(args.wordnet)
    args.out.mkdir(parents=True, exist_ok=True)

    banks = {
        "adjectives": rank_bank("a", lambda s: is_descriptive_adjective(s, synsets), indexes["a"], synsets, counts),
        # "hold" and "stop" are relational in their 2nd sense, not their 1st.
        "verbs": rank_bank("v", is_relational_verb, indexes["v"], synsets, counts, senses_considered=3),
        "nouns": rank_bank("n", is_concrete_noun, indexes["n"], synsets, counts),
    }
    for name, words in banks.items():
        write_lines(args.out / f"{name}.txt", words)

    irregular = irregular_verb_forms(args.wordnet)
    write_lines(args.out / "verb_forms.tsv",
                ["\t".join((verb, *verb_forms(verb, irregular))) for verb in banks["verbs"]])
    synonyms = build_synonyms(indexes, synsets)
    write_lines(args.out / "synonyms.tsv", [f"{w}\t{'|'.join(s)}" for w, s in synonyms.items()])
    write_lines(args.out / "exceptions.tsv",
                [f"{form}\t{base}" for form, base in read_exceptions(args.wordnet).items()])
    (args.out / "LICENSE-WordNet-3.0.txt").write_text(license_text(args.copyright))
    (args.out / "README.md").write_text(README.format(n=BANK_SIZE))
    for path in sorted(args.out.iterdir()):
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
