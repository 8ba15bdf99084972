"""File name patterns: their date placeholders, the names an activation owns at a location, and overlaps.

A location is shared and each activation's clean-up deletes the files it owns, so ownership must be exact
and exclusive: two activations that could write one name would delete each other's files. A pattern
becomes an automaton of every name it can leave; intersecting two finds a shared name. Digits stand for
any digit, which can only report an overlap that never happens, never miss one. Standard library only:
loading a configuration checks names.
"""

from __future__ import annotations

import re
import string
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

#: ``$`` followed by a run of Java date-pattern letters (y M d H m s), as Actito writes dates
PLACEHOLDER = re.compile(r"\$([yMdHms]+)")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")  # fmt: skip
DIGITS = frozenset(string.digits)
#: what a delivered audience file may end with, whatever the compression it was delivered with
EXTENSIONS = (".csv", ".csv.gz", ".zip")
MANIFEST_SUFFIX = ".manifest.json"
#: parts of a split audience as earlier versions named them (still owned): ``<stem>_part001<ext>``
PART_INFIX = "_part"

Chars = frozenset[str]
Compression = Literal["none", "gzip", "zip"]


def letter_groups(run: str) -> list[str]:
    """``yyyyMMdd`` -> ``["yyyy", "MM", "dd"]``."""
    return [match.group(0) for match in re.finditer(r"y+|M+|d+|H+|m+|s+", run)]


@dataclass
class NameLanguage:
    """A nondeterministic automaton: state 0 starts, ``final`` accepts; ``skips[s]`` are epsilon moves."""

    edges: list[list[tuple[Chars, int]]] = field(default_factory=lambda: [[]])
    skips: list[list[int]] = field(default_factory=lambda: [[]])
    final: int = 0

    def _new_state(self) -> int:
        self.edges.append([])
        self.skips.append([])
        return len(self.edges) - 1

    def _step(self, start: int, chars: Chars) -> int:
        end = self._new_state()
        self.edges[start].append((chars, end))
        return end

    def _word(self, start: int, word: str, fold: bool) -> int:
        for character in word:
            start = self._step(start, _letter(character, fold))
        return start

    def _either(self, start: int, words: Iterable[str], fold: bool) -> int:
        """Any one of ``words`` after ``start``; returns the state where they all end."""
        end = self._new_state()
        for word in words:
            self.skips[self._word(start, word, fold)].append(end)
        return end

    def _closure(self, states: Iterable[int]) -> set[int]:
        todo = list(states)
        seen = set(todo)
        while todo:
            for following in self.skips[todo.pop()]:
                if following not in seen:
                    seen.add(following)
                    todo.append(following)
        return seen

    def matches(self, name: str) -> bool:
        """Exactly: no prefix, no other digit count."""
        current = self._closure([0])
        for character in name:
            current = self._closure(end for state in current for chars, end in self.edges[state] if character in chars)
            if not current:
                return False
        return self.final in current

    def __call__(self, name: str) -> bool:
        return self.matches(name)

    def common_name(self, other: NameLanguage) -> str | None:
        """A name both languages hold, or None: a breadth-first walk of the product automaton."""
        start = (0, 0)
        came_from: dict[tuple[int, int], tuple[tuple[int, int], str] | None] = {start: None}
        todo = deque([start])
        while todo:
            pair = todo.popleft()
            if pair == (self.final, other.final):
                return _spelled(came_from, pair)
            for following, character in self._pair_moves(other, pair):
                if following not in came_from:
                    came_from[following] = (pair, character)
                    todo.append(following)
        return None

    def _pair_moves(self, other: NameLanguage, pair: tuple[int, int]) -> Iterable[tuple[tuple[int, int], str]]:
        mine, theirs = pair
        yield from (((following, theirs), "") for following in self.skips[mine])
        yield from (((mine, following), "") for following in other.skips[theirs])
        for chars, end in self.edges[mine]:
            for other_chars, other_end in other.edges[theirs]:
                if both := chars & other_chars:
                    yield (end, other_end), min(both, key=lambda c: (c != c.lower(), c))  # a lower-case example


def _spelled(came_from: dict[tuple[int, int], tuple[tuple[int, int], str] | None], pair: tuple[int, int]) -> str:
    letters: list[str] = []
    step = came_from[pair]
    while step is not None:
        pair, character = step
        letters.append(character)
        step = came_from[pair]
    return "".join(reversed(letters))


def _letter(character: str, fold: bool) -> Chars:
    return frozenset({character.lower(), character.upper()}) if fold else frozenset(character)


def _placeholder(language: NameLanguage, state: int, group: str, fold: bool) -> int:
    """Append what `render_file_name` writes for one letter group (``yyyy``, ``MM``, ``MMM``…)."""
    letter, width = group[0], len(group)
    if letter == "M" and width >= 3:
        return language._either(state, (month[:3] if width == 3 else month for month in MONTHS), fold)
    if letter == "y":
        digits = 2 if width == 2 else max(width, 4)  # the year is written whole (2026) unless yy
    else:
        digits = max(width, 1)
    for _ in range(digits):
        state = language._step(state, DIGITS)
    if letter != "y" and width == 1:  # $M $d $H $m $s: one digit below 10, two from 10
        end = language._step(state, DIGITS)
        language.skips[state].append(end)
        state = end
    return state


def _stem(language: NameLanguage, pattern: str, fold: bool) -> int:
    """Append the pattern without its ``.csv``: literal characters and placeholders."""
    stem = pattern.removesuffix(".csv")
    state, position = 0, 0
    for found in PLACEHOLDER.finditer(stem):
        state = language._word(state, stem[position : found.start()], fold)
        for group in letter_groups(found.group(1)):
            state = _placeholder(language, state, group, fold)
        position = found.end()
    return language._word(state, stem[position:], fold)


def owned_names(pattern: str, *, fold: bool = False) -> NameLanguage:
    """Every name the pattern's activation can have left, parts and manifest included.

    ``fold`` matches either case, for the overlap check: some servers fold ``VIP.csv`` and ``vip.csv`` together."""
    language = NameLanguage()
    stem = _stem(language, pattern, fold)
    manifest = language._word(stem, MANIFEST_SUFFIX, fold)
    part = language._word(stem, PART_INFIX, fold)
    for _ in range(3):
        part = language._step(part, DIGITS)
    language.edges[part].append((DIGITS, part))
    language.skips[part].append(stem_end := language._new_state())
    language.skips[stem].append(stem_end)
    data = language._either(stem_end, EXTENSIONS, fold)
    language.final = language._new_state()
    language.skips[manifest].append(language.final)
    language.skips[data].append(language.final)
    return language


def literal_prefix(pattern: str) -> str:
    """Lower-cased text before the first placeholder: names can only meet if one prefix starts the other."""
    found = PLACEHOLDER.search(pattern)
    return (pattern[: found.start()] if found else pattern.removesuffix(".csv")).lower()


def literal_tail(pattern: str) -> str:
    """Lower-cased text of the stem after its last placeholder."""
    stem = pattern.removesuffix(".csv")
    found = list(PLACEHOLDER.finditer(stem))
    return (stem[found[-1].end() :] if found else stem).lower()


def _one_ends_the_other(first: str, second: str) -> bool:
    return first.endswith(second) or second.endswith(first)


def tails_can_meet(first: str, second: str) -> bool:
    """False only if no name with literal tail ``first`` can equal one with tail ``second``.

    A cheap necessary condition, tested on every pair before the costly intersection; ``_partNNN``
    names make it more than "one tail ends the other"."""
    if _one_ends_the_other(first, second):
        return True
    return any(not (bare := plain.rstrip(string.digits)) or _one_ends_the_other(bare, parted + PART_INFIX)
               for plain, parted in ((first, second), (second, first)))


@dataclass(frozen=True)
class Claim:
    """An activation's claim on names at one location."""

    activation: str
    pattern: str
    #: the location's canonical identity (see the locations' ``identity`` in `etl.config.destinations`)
    location: tuple[str, ...]
    #: the location for people
    shown: str
    #: the destination it was configured in
    destination: str = ""


def overlaps(claims: Sequence[Claim]) -> list[tuple[Claim, Claim, str]]:
    """Every pair of claims on one location whose names can coincide, with a name both can write.

    Only pairs whose prefixes and tails can meet are intersected, so big locations stay fast."""
    ordered = sorted(claims, key=lambda claim: (claim.location, literal_prefix(claim.pattern)))
    languages: dict[int, NameLanguage] = {}
    found = []
    for index, first in enumerate(ordered):
        prefix, tail = literal_prefix(first.pattern), literal_tail(first.pattern)
        for second in ordered[index + 1 :]:
            if second.location != first.location or not literal_prefix(second.pattern).startswith(prefix):
                break
            if not tails_can_meet(tail, literal_tail(second.pattern)):
                continue
            example = _language(languages, first).common_name(_language(languages, second))
            if example is not None:
                found.append((first, second, example))
    return found


def _language(cache: dict[int, NameLanguage], claim: Claim) -> NameLanguage:
    """The claim's case-folded language, built once and only for claims that get intersected."""
    if id(claim) not in cache:
        cache[id(claim)] = owned_names(claim.pattern, fold=True)
    return cache[id(claim)]


# --------------------------------------------------------------------------- rendering and checking names

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.csv")
MAX_NAME_LENGTH = 200


def _render_group(group: str, when: datetime) -> str:
    letter, width = group[0], len(group)
    if letter == "y":
        return f"{when.year % 100:02d}" if width == 2 else f"{when.year:0{width}d}"
    if letter == "M" and width >= 3:
        name = MONTHS[when.month - 1]
        return name[:3] if width == 3 else name
    value = {"M": when.month, "d": when.day, "H": when.hour, "m": when.minute, "s": when.second}[letter]
    return f"{value:0{width}d}"


def render_file_name(pattern: str, when: datetime) -> str:
    """Fill Actito-style date placeholders: ``$`` and a run of Java date-pattern letters (``$yyyyMMdd``)."""
    return PLACEHOLDER.sub(lambda m: "".join(_render_group(g, when) for g in letter_groups(m.group(1))), pattern)


def name_pattern_problem(pattern: str) -> str | None:
    """None if ``pattern`` can name audience files, else what is wrong with it."""
    if not pattern:
        return "the file name is empty"
    if "/" in pattern or "\\" in pattern:
        return "must be a file name, without / or \\ (the directory is the destination's)"
    if ".." in pattern:
        return "must not contain '..'"
    if pattern.startswith("."):
        return "must not start with a dot (hidden files are ignored by file synchronisations)"
    if not pattern.endswith(".csv"):
        return "must end in .csv (compression adds .gz or makes it .zip)"
    rendered = render_file_name(pattern, datetime(2000, 1, 1))
    if "$" in rendered:
        return "a $ must start a date placeholder such as $yyyyMMdd (letters y M d H m s)"
    if len(render_file_name(pattern, datetime(2000, 12, 31, 23, 59, 59))) > MAX_NAME_LENGTH:
        return f"must be at most {MAX_NAME_LENGTH} characters"
    if not _SAFE_NAME.fullmatch(rendered):
        return (
            "may only use letters A-Z a-z, digits, '.', '_' and '-' (and $ date placeholders), "
            "starting with a letter or digit"
        )
    return None


def name_matcher(pattern: str) -> Callable[[str], bool]:
    """True for exactly the names ``pattern``'s activation can leave at its location (see `owned_names`)."""
    return owned_names(pattern).matches


def final_file_name(pattern: str, when: datetime, compression: Compression) -> str:
    """The name of the delivered file: rendered, then ``.gz`` added (gzip) or ``.csv`` -> ``.zip``."""
    name = render_file_name(pattern, when)
    if compression == "gzip":
        return name + ".gz"
    if compression == "zip":
        return (name[: -len(".csv")] if name.endswith(".csv") else name) + ".zip"
    return name
