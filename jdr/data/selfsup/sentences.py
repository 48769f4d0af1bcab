"""A rule-based sentence splitter for scientific abstracts (the Inverse Cloze Task's unit), tuned on BEIR SciFact.

No model and no new dependency: a boundary is `.`, `!` or `?` (plus closing quotes/brackets) followed by
whitespace and a capital letter, digit or opening bracket, unless the word before the stop is an abbreviation
("e.g.", "i.e.", "et al.", "vs.", "Fig.", "approx.", journal abbreviations as in "J. Mol. Biol.") or an author
initial ("Smith, T. F. & Waterman"). Structured-abstract headings ("BACKGROUND", "MAIN OUTCOME MEASURES") become
segments of their own, so a heading never starts a query sentence.

Measured on SciFact's 5 183 abstracts: see `docs/DESIGN.md` (jdr/data/selfsup) for the counts and the error
classes found by inspection.

The capital after the stop is what keeps "e.g. the" or "approx. 5 mg" whole in English prose, but a lower-cased
or caseless-script corpus then has no boundaries at all (ICT and the BM25 pseudo-queries find no sentences).
`make_splitter` (config `data.selfsup.sentence_split`) chooses:
  * "regex" (default): the rules above;
  * "lowercase": the same rules, any non-space character may start the next sentence, and the full-width stops
    "。！？" end a sentence without a space after them (lower-cased text, most scripts);
  * "window:N": no sentence detection: consecutive windows of N whitespace-separated words (any language).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

# Words that end with a period without ending the sentence (compared lower-cased, without the final period).
_ABBREVIATIONS = frozenset(
    """e.g i.e et al vs v cf ca p pp approx fig figs eq eqs ref refs resp no nos vol vols dr drs mr mrs ms prof st
    jr sr inc ltd co corp dept univ spp sp subsp ssp var cv u.s u.k e.u ph.d m.d mol biol chem natl acad sci proc
    med res enzymol pharmacol immunol physiol biochem biophys neurosci genet clin exp invest soc rev lett int nat
    j br am engl acta ann arch assoc epidemiol pathol psychiatry surg""".split()
)
# "No." is an abbreviation, "NO." (nitric oxide) is a word: these are matched case-sensitively.
_CASE_SENSITIVE = {"no": "No", "nos": "Nos"}
_CANDIDATE = re.compile(r"[.!?][\"'”’)\]]*(?=\s+[\"'“‘(\[]?[A-Z0-9])")
_CANDIDATE_ANY_CASE = re.compile(r"[.!?][\"'”’)\]]*(?=\s+\S)|[。！？][\"'”’)\]」』]*(?=\s*\S)")
_WORD_BEFORE = re.compile(r"(\S+)$")
_INITIAL = re.compile(r"^\(?(?:[A-Z]\.)*[A-Z]$")
_INITIAL_LIKE = re.compile(r"^(?:[A-Z]\.)+[A-Z]?$|^[A-Z]\.?$")
# A run of capitalised words (>= 4 letters, or AND/OF) at a sentence start, followed by an ordinary word.
_HEADING = re.compile(r"((?:[A-Z]{4,}|AND|OF|&)(?:\s+(?:[A-Z]{4,}|AND|OF|&))*):?\s+(?=[\"'(]?[A-Z][a-z])")


def _is_abbreviation(word: str) -> bool:
    """`word` (the token ending with the period, period stripped) is an abbreviation."""
    bare = word.lstrip("([\"'")
    key = bare.lower()
    if key in _CASE_SENSITIVE:
        return bare == _CASE_SENSITIVE[key]
    return key in _ABBREVIATIONS


def _is_initial(text: str, stop: int, word: str) -> bool:
    """A single capital before the stop is an author initial when the word before it ends a list item or is an
    initial / abbreviation itself ("Lipman, D. J.", "Dr. J. G. Thomson"), or the next word is an initial too."""
    if not _INITIAL.match(word):
        return False
    before = text[max(0, stop - len(word) - 64) : stop - len(word)].rstrip()
    prev = _WORD_BEFORE.search(before)
    if prev is None:
        return True
    prev_word = prev.group(1)
    if prev_word.endswith((",", "&", ";", "(")) or prev_word in ("and", "&"):
        return True
    if prev_word.endswith(".") and (_INITIAL_LIKE.match(prev_word[:-1]) or _is_abbreviation(prev_word[:-1])):
        return True
    after = text[stop + 1 :].lstrip()
    return bool(re.match(r"[A-Z]\.(?:\s|$)", after))


def _is_list_marker(text: str, start: int, stop: int, word: str) -> bool:
    """ "1." opening a segment numbers a list item: it belongs to the sentence that follows."""
    return bool(re.fullmatch(r"\(?\d{1,2}", word)) and not text[start : stop - len(word)].strip()


def _is_broken_decimal(text: str, after: int, word: str) -> bool:
    """ "(10. 4%)": a number, a stop and a digit are a decimal split by a stray space in the source text."""
    return word[-1:].isdigit() and text[after : after + 2].lstrip()[:1].isdigit()


def split_sentences(text: str, *, any_case: bool = False) -> list[tuple[int, int]]:
    """Character spans `(start, end)` of the sentences of `text`, in order, whitespace trimmed.

    Every non-space character belongs to exactly one span; a heading of a structured abstract is a span of its
    own. Empty or all-space text gives `[]`. `any_case`: the "lowercase" rules (module docstring).
    """
    spans: list[tuple[int, int]] = []
    start = 0
    for m in (_CANDIDATE_ANY_CASE if any_case else _CANDIDATE).finditer(text):
        stop = m.start()  # index of the . ! or ?
        if text[stop] == ".":
            word = _WORD_BEFORE.search(text, max(start, stop - 64), stop)
            word = word.group(1) if word else ""
            if (
                _is_abbreviation(word)
                or _is_initial(text, stop, word)
                or _is_list_marker(text, start, stop, word)
                or _is_broken_decimal(text, m.end(), word)
            ):
                continue
        elif not any_case and not re.match(r"\s+[\"'“‘(\[]?[A-Z]", text[m.end() : m.end() + 8]):
            continue  # "?" and "!" before a digit are symbols in the text ("score of ? 10"), not stops
        spans.append((start, m.end()))
        start = m.end()
    spans.append((start, len(text)))
    out: list[tuple[int, int]] = []
    for s, e in spans:
        s, e = _trim(text, s, e)
        while s < e:
            h = _HEADING.match(text, s, e)
            if h is None:
                break
            hs, he = _trim(text, s, h.end())
            out.append((hs, he))
            s, e = _trim(text, h.end(), e)
        if s < e:
            out.append((s, e))
    return out


def _trim(text: str, s: int, e: int) -> tuple[int, int]:
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, e


def split_windows(text: str, words: int) -> list[tuple[int, int]]:
    """Character spans of consecutive windows of `words` whitespace-separated words (the last may be shorter)."""
    found = [m.span() for m in re.finditer(r"\S+", text)]
    return [(found[i][0], found[min(i + words, len(found)) - 1][1]) for i in range(0, len(found), words)]


SENTENCE_SPLITS = ("regex", "lowercase", "window:N")


def make_splitter(spec: str) -> Callable[[str], list[tuple[int, int]]]:
    """The splitter `text -> spans` named by `spec` ("regex" | "lowercase" | "window:N", module docstring); a bad
    `spec` is a one-line ValueError naming the config key."""
    if spec == "regex":
        return split_sentences
    if spec == "lowercase":
        return functools.partial(split_sentences, any_case=True)
    kind, _, n = spec.partition(":")
    if kind == "window" and n.isdigit() and int(n) >= 1:
        return functools.partial(split_windows, words=int(n))
    raise ValueError(f"data.selfsup.sentence_split must be one of {', '.join(SENTENCE_SPLITS)} (N >= 1), got {spec!r}")
