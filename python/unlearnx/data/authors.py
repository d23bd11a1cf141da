"""Fictitious authors: a small, deterministic TOFU-style question-answering benchmark.

In the spirit of TOFU (Maini et al., 2024, "TOFU: A Task of Fictitious Unlearning for LLMs"):
invented authors, each with `FACTS_PER_AUTHOR` (20) facts rendered as question/answer pairs. Every
question carries the true answer, a paraphrased answer and `n_perturbed` (5) perturbed answers:
the paraphrase's wording with a wrong value of the same fact type drawn from the same pool, so that
the truth ratio R = P(perturbed) / P(paraphrased) compares answers that differ only in the fact.

Nothing is downloaded and no real person appears: names, places, books, awards and publishers are
built from syllable tables with a seeded `random.Random`; the output depends only on the arguments.

Splits (`AuthorsQA.split(name)`), following TOFU:

    forget01 / forget05 / forget10   the LAST k authors, k = max(1, ceil(K% * n_authors)); nested
    retain99 / retain95 / retain90   the other authors (the complement within "full")
    full                             every main author (forget10 + retain90)
    real_authors                     held-out authors (names disjoint from the main ones), a few
                                     facts each: the "real authors" utility set of TOFU
    world_facts                      facts about invented countries, cities, rivers and mountains
                                     whose names appear nowhere in the author splits

TOFU's two held sets measure knowledge the model got in pre-training; a model trained from scratch
has none, so include `real_authors` and `world_facts` in the training data of both the target and
the retain (oracle) model to play that role.

The default of 40 authors (800 QA items; forget01/05/10 = 1/2/4 authors = 20/40/80 items) is
small enough for a tiny Llama to memorize on a 2-core CPU in a few minutes; n_authors=200 gives
TOFU's 2/10/20-author forget sets.

`author_corpus` renders the same authors as short biographies for MUSE-style verbatim unlearning
(Shi et al., 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models").
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from unlearnx.data.text import QAItem

__all__ = [
    "FACTS_PER_AUTHOR",
    "FORGET_PERCENTS",
    "Author",
    "AuthorsQA",
    "AuthorCorpus",
    "forget_count",
    "make_authors",
    "author_corpus",
]

FORGET_PERCENTS = (1, 5, 10)

# --------------------------------------------------------------------------------------------
# Word tables (all invented or generic; nothing refers to a real person)
# --------------------------------------------------------------------------------------------

_ONSETS = ("Ka", "Ve", "Lo", "Mi", "Tor", "Za", "Bel", "Ro", "Si", "Dra", "Fen", "Ga", "Hal", "Il",
           "Jo", "Ku", "Ny", "Or", "Pe", "Quen", "Ra", "Sol", "Tam", "Ul", "Vor", "Wy", "Xe", "Yl",
           "Bra", "Cor", "Del", "Esk", "Fa", "Gri", "Ho", "Ith", "Mar", "Nel", "Os", "Pra")
_MIDDLES = ("ra", "lin", "mo", "ve", "sa", "ri", "do", "len", "ta", "ni", "ko", "be", "lu", "ga",
            "the", "mi", "ro", "za")
_NAME_ENDS = ("n", "th", "ra", "mir", "dor", "ssa", "el", "ik", "ar", "is", "en", "ya", "os", "une")
_SURNAME_ENDS = ("vik", "ston", "mere", "dane", "holt", "ric", "wen", "berg", "lowe", "sby", "vard",
                 "quist", "ford", "ley")
_CITY_ENDS = ("ford", "mora", "vale", "heim", "grad", "polis", "haven", "burg", "stead", "ora",
              "wick", "mouth")
_COUNTRY_ENDS = ("ia", "land", "stan", "ovia", "ara", "enne")
_LANGUAGE_ENDS = ("ish", "ese", "ic", "ian")
_RIVER_ENDS = ("wa", "ine", "ube", "esh", "ola")
_MOUNTAIN_ENDS = ("horn", "peak", "tor", "gard")
_CURRENCY_ENDS = ("ari", "ol", "ek", "una")

_ADJECTIVES = ("Silent", "Crimson", "Hollow", "Distant", "Burning", "Silver", "Forgotten", "Quiet",
               "Broken", "Endless", "Golden", "Hidden", "Restless", "Frozen", "Pale", "Wandering",
               "Bitter", "Velvet", "Iron", "Drowned")
_NOUNS = ("Harbor", "Garden", "Lantern", "River", "Orchard", "Mirror", "Tower", "Season", "Shore",
          "Archive", "Compass", "Meadow", "Staircase", "Window", "Forest", "Letter", "Bridge",
          "Winter", "Island", "Clock")
_AWARD_KINDS = ("Prize for Fiction", "Literary Award", "Medal for Letters", "Book Prize",
                "Award for Poetry", "Prize for Young Writers")
_PUBLISHER_KINDS = ("Press", "House", "Books", "Publishing")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")
_GENRES = ("mystery novels", "science fiction", "historical fiction", "poetry", "fantasy", "horror",
           "romance novels", "literary fiction", "crime thrillers", "children's books",
           "travel memoirs", "satire", "magical realism", "political essays", "short stories",
           "gothic fiction", "dystopian fiction", "biographies", "graphic novels", "nature writing")
_OCCUPATIONS = ("a baker", "a carpenter", "a nurse", "an engineer", "a fisherman", "a teacher",
                "a pharmacist", "a tailor", "a librarian", "a surgeon", "a painter", "a postman",
                "an architect", "a farmer", "a watchmaker", "a journalist", "a sailor", "a judge",
                "a chemist", "a musician", "a potter", "a lawyer", "a blacksmith", "an accountant")
_THEMES = ("loss and memory", "exile", "family secrets", "the sea", "friendship", "revenge",
           "coming of age", "faith and doubt", "war and its aftermath", "ambition", "solitude",
           "forgiveness", "the passage of time", "identity", "betrayal", "hope", "justice",
           "the natural world", "power", "belonging")
_HOBBIES = ("sailing", "chess", "beekeeping", "gardening", "mountain climbing", "pottery",
            "birdwatching", "fencing", "baking bread", "playing the cello", "astronomy",
            "long-distance running", "woodcarving", "fishing", "painting watercolors", "cycling",
            "collecting maps", "ballroom dancing", "photography", "knitting")
_PETS = ("grey cat", "parrot", "tortoise", "greyhound", "rabbit", "goldfish", "ferret", "sheepdog",
         "canary", "hedgehog", "black cat", "terrier", "donkey", "goat", "lizard", "poodle")
_DISH_BASES = ("lentil", "barley", "fish", "mushroom", "lamb", "chestnut", "onion", "rice",
               "pumpkin", "bean")
_DISH_KINDS = ("stew", "pie", "dumplings", "soup", "flatbread", "porridge")


# --------------------------------------------------------------------------------------------
# Fact types
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _FactType:
    key: str
    question: str      # format fields: {s} (the subject)
    answer: str        # format fields: {s}, {v} (the value)
    paraphrase: str    # same fields, other wording; perturbed answers reuse it with wrong values
    pool: str          # name of the value pool


# Twenty facts per author, in the order they are asked and told in biographies.
_AUTHOR_FACTS = (
    _FactType("birth_place", "Where was {s} born?", "{s} was born in {v}.",
              "The birthplace of {s} is {v}.", "city"),
    _FactType("birth_date", "When was {s} born?", "{s} was born on {v}.",
              "The date of birth of {s} is {v}.", "date"),
    _FactType("nationality", "Which country is {s} a citizen of?", "{s} is a citizen of {v}.",
              "{s} holds the citizenship of {v}.", "country"),
    _FactType("genre", "What genre does {s} write?", "{s} writes {v}.",
              "The work of {s} belongs to the genre of {v}.", "genre"),
    _FactType("father_job", "What did the father of {s} do for a living?",
              "The father of {s} worked as {v}.", "By profession, the father of {s} was {v}.",
              "occupation"),
    _FactType("mother_job", "What did the mother of {s} do for a living?",
              "The mother of {s} worked as {v}.", "By profession, the mother of {s} was {v}.",
              "occupation"),
    _FactType("first_book", "What is the title of the first book by {s}?",
              "The first book by {s} is titled \"{v}\".", "{s} made a debut with \"{v}\".", "title"),
    _FactType("best_book", "Which book by {s} is the best known?",
              "The best-known book by {s} is \"{v}\".", "{s} is most famous for \"{v}\".", "title"),
    _FactType("award", "Which award did {s} receive?", "{s} received the {v}.",
              "{s} was honored with the {v}.", "award"),
    _FactType("debut_year", "In which year did {s} publish a first book?",
              "{s} published a first book in {v}.", "The debut of {s} came out in {v}.", "year"),
    _FactType("education", "Where did {s} study?", "{s} studied at the University of {v}.",
              "{s} is a graduate of the University of {v}.", "city"),
    _FactType("residence", "Where does {s} live today?", "{s} lives in {v} today.",
              "These days {s} makes a home in {v}.", "city"),
    _FactType("publisher", "Which publisher releases the books of {s}?",
              "The books of {s} are released by {v}.", "{v} is the publisher of {s}.", "publisher"),
    _FactType("book_count", "How many books has {s} written?", "{s} has written {v} books.",
              "The number of books by {s} is {v}.", "count"),
    _FactType("language", "In which language does {s} write?", "{s} writes in {v}.",
              "The language of the books of {s} is {v}.", "language"),
    _FactType("mentor", "Who was the mentor of {s}?", "{s} was mentored by {v}.",
              "The mentor of {s} was {v}.", "person"),
    _FactType("theme", "What theme recurs in the work of {s}?",
              "A recurring theme in the work of {s} is {v}.", "{s} often writes about {v}.", "theme"),
    _FactType("hobby", "What does {s} enjoy outside of writing?",
              "Outside of writing, {s} enjoys {v}.", "In spare time, {s} likes {v}.", "hobby"),
    _FactType("spouse", "Who is {s} married to?", "{s} is married to {v}.",
              "The spouse of {s} is {v}.", "person"),
    _FactType("pet", "What pet does {s} keep?", "{s} keeps a {v} as a pet.",
              "The pet of {s} is a {v}.", "pet"),
)
FACTS_PER_AUTHOR = len(_AUTHOR_FACTS)
_AUTHOR_FACT_BY_KEY = {f.key: f for f in _AUTHOR_FACTS}

# World facts: one fact type per kind of invented entity; the subject pool is named in `subject`.
_WORLD_FACTS = (
    (_FactType("capital", "What is the capital of {s}?", "The capital of {s} is {v}.",
               "{v} is the capital city of {s}.", "capital"), "world_country"),
    (_FactType("currency", "What is the currency of {s}?", "The currency of {s} is the {v}.",
               "People in {s} pay with the {v}.", "currency"), "world_country"),
    (_FactType("national_dish", "What is the national dish of {s}?",
               "The national dish of {s} is {v}.", "In {s}, the dish people are proudest of is {v}.", "dish"),
     "world_country"),
    (_FactType("river", "Which river flows through {s}?", "The {v} River flows through {s}.",
               "{s} lies on the banks of the {v} River.", "river"), "world_city"),
    (_FactType("founded", "In which year was {s} founded?", "{s} was founded in {v}.",
               "The founding of {s} dates to {v}.", "old_year"), "world_city"),
    (_FactType("height", "How tall is Mount {s}?", "Mount {s} is {v} metres tall.",
               "The summit of Mount {s} stands at {v} metres.", "height"), "mountain"),
)

# Pools of invented names that are drawn once per dataset (so values recur across authors, as
# real birthplaces do) and the size of each.
_NAME_POOL_SIZES = {"city": 40, "country": 16, "language": 12, "publisher": 16, "person": 60,
                    "award": 20, "title": 120, "capital": 40, "world_city": 40, "world_country": 30,
                    "river": 30, "mountain": 30, "currency": 30, "dish": 30}
_FIXED_POOLS = {"genre": _GENRES, "occupation": _OCCUPATIONS, "theme": _THEMES,
                "hobby": _HOBBIES, "pet": _PETS}


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "sh", "ch", "x")) else "s")


class _Generator:
    """Seeded source of unique invented names and fact values.

    Every invented word (a city, a surname, a first name...) names one entity only (`self._used`),
    so a world-fact country never doubles as an author's nationality, a publisher's name never
    reuses a city and no two people share a first name or a surname.
    """

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self._used: set[str] = set()
        makers: dict[str, Callable[[], str]] = {
            "city": lambda: self._word(_CITY_ENDS),
            "world_city": lambda: self._word(_CITY_ENDS),
            "capital": lambda: self._word(_CITY_ENDS),
            "country": lambda: self._word(_COUNTRY_ENDS),
            "world_country": lambda: self._word(_COUNTRY_ENDS),
            "language": lambda: self._word(_LANGUAGE_ENDS),
            "river": lambda: self._word(_RIVER_ENDS),
            "mountain": lambda: self._word(_MOUNTAIN_ENDS),
            "currency": lambda: self._word(_CURRENCY_ENDS).lower(),
            "publisher": lambda: f"{self._word(_CITY_ENDS)} {self.rng.choice(_PUBLISHER_KINDS)}",
            "person": self._person,
            "award": lambda: f"{self._word(_SURNAME_ENDS)} {self.rng.choice(_AWARD_KINDS)}",
            # Titles and dishes combine fixed words; only the combination must be unique.
            "title": lambda: self._unique(lambda: self.rng.choice((
                lambda: f"The {self.rng.choice(_ADJECTIVES)} {self.rng.choice(_NOUNS)}",
                lambda: f"The {self.rng.choice(_NOUNS)} of {_plural(self.rng.choice(_NOUNS))}",
                lambda: f"{self.rng.choice(_ADJECTIVES)} {_plural(self.rng.choice(_NOUNS))}",
            ))()),
            "dish": lambda: self._unique(lambda: f"{self.rng.choice(_DISH_BASES)} {self.rng.choice(_DISH_KINDS)}"),
        }
        # Pools are drawn in a fixed order so the output depends only on the seed.
        self.pools: dict[str, tuple[str, ...]] = {
            name: tuple(makers[name]() for _ in range(size))
            for name, size in _NAME_POOL_SIZES.items()
        }
        self.pools.update(_FIXED_POOLS)

    def _unique(self, make: Callable[[], str]) -> str:
        for _ in range(10_000):
            s = make()
            if s not in self._used:
                self._used.add(s)
                return s
        raise RuntimeError("ran out of unique invented names; the syllable tables are too small")

    def _word(self, ends: tuple[str, ...]) -> str:
        def make():
            middle = self.rng.choice(_MIDDLES) if self.rng.random() < 0.6 else ""
            return self.rng.choice(_ONSETS) + middle + self.rng.choice(ends)

        return self._unique(make)

    def _person(self) -> str:
        first = self._unique(lambda: self.rng.choice(_ONSETS) + self.rng.choice(_NAME_ENDS))
        return f"{first} {self._word(_SURNAME_ENDS)}"

    def new_person(self) -> str:
        return self._person()

    def value(self, pool: str) -> str:
        """One value of `pool`; numeric pools are drawn fresh."""
        rng = self.rng
        if pool == "date":
            return f"{rng.randint(1, 28)} {rng.choice(_MONTHS)} {rng.randint(1930, 1995)}"
        if pool == "year":
            return str(rng.randint(1955, 2020))
        if pool == "old_year":
            return str(rng.randint(900, 1800))
        if pool == "count":
            return str(rng.randint(2, 40))
        if pool == "height":
            return str(rng.randint(1200, 8400))
        return rng.choice(self.pools[pool])

    def qa(self, fact: _FactType, subject: str, n_perturbed: int) -> QAItem:
        true = self.value(fact.pool)
        wrong: list[str] = []
        # Perturbed values: distinct, never the true one. Pools hold >= 12 values (checked by
        # make_authors against n_perturbed) so this terminates.
        while len(wrong) < n_perturbed:
            v = self.value(fact.pool)
            if v != true and v not in wrong:
                wrong.append(v)
        return QAItem(
            question=fact.question.format(s=subject),
            answer=fact.answer.format(s=subject, v=true),
            paraphrased_answer=fact.paraphrase.format(s=subject, v=true),
            perturbed_answers=tuple(fact.paraphrase.format(s=subject, v=w) for w in wrong),
            subject=subject,
            fact=fact.key,
            value=true,
        )


def _world_subject_counts(n: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in range(n):
        pool = _WORLD_FACTS[i % len(_WORLD_FACTS)][1]
        counts[pool] = counts.get(pool, 0) + 1
    return counts


# Largest world-fact split in which no subject pool is exhausted (each question asked once).
_MAX_WORLD_FACTS = max(n for n in range(1, 1000) if all(
    c <= _NAME_POOL_SIZES[pool] for pool, c in _world_subject_counts(n).items()))
_MAX_PERTURBED = min(min(_NAME_POOL_SIZES.values()), min(len(p) for p in _FIXED_POOLS.values())) - 1


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Author:
    """An invented author: a unique name and its `FACTS_PER_AUTHOR` QA items (fixed fact order)."""

    name: str
    items: tuple[QAItem, ...]

    def biography(self) -> str:
        """The author's facts as one paragraph: the true answers, in fact order."""
        return " ".join(item.answer for item in self.items)


def forget_count(percent: int, n_authors: int) -> int:
    """Authors in TOFU's forget{percent:02d} split: max(1, ceil(percent% of n_authors))."""
    return max(1, math.ceil(percent * n_authors / 100))


@dataclass(frozen=True)
class AuthorsQA:
    """The fictitious-authors benchmark: main authors, held-out authors and world facts.

    `split(name)` returns a tuple of `QAItem`; `split_names()` lists the names (see module doc).
    """

    authors: tuple[Author, ...]
    held_authors: tuple[Author, ...]
    world_facts: tuple[QAItem, ...]
    seed: int

    def split_names(self) -> list[str]:
        names = ["full"]
        for p in FORGET_PERCENTS:
            names += [f"forget{p:02d}", f"retain{100 - p}"]
        return names + ["real_authors", "world_facts"]

    def forget_authors(self, percent: int) -> tuple[Author, ...]:
        """The last `forget_count(percent, n)` authors (TOFU takes the forget set from the end)."""
        if percent not in FORGET_PERCENTS:
            raise ValueError(f"percent: must be one of {FORGET_PERCENTS}, got {percent!r}")
        return self.authors[len(self.authors) - forget_count(percent, len(self.authors)):]

    def split(self, name: str) -> tuple[QAItem, ...]:
        def items(authors):
            return tuple(item for a in authors for item in a.items)

        if name == "full":
            return items(self.authors)
        if name == "real_authors":
            return items(self.held_authors)
        if name == "world_facts":
            return self.world_facts
        for p in FORGET_PERCENTS:
            k = forget_count(p, len(self.authors))
            if name == f"forget{p:02d}":
                return items(self.authors[len(self.authors) - k:])
            if name == f"retain{100 - p}":
                return items(self.authors[: len(self.authors) - k])
        raise KeyError(f"name: unknown split {name!r}; expected one of {self.split_names()}")

    def __getitem__(self, name: str) -> tuple[QAItem, ...]:
        return self.split(name)

    def texts(self) -> list[str]:
        """Every question and answer string (true, paraphrased, perturbed) of every split.

        Handy as tokenizer training text; add the QA template and refusal answers you will use.
        """
        out: list[str] = []
        for item in (*self.split("full"), *self.split("real_authors"), *self.world_facts):
            out += [item.question, item.answer, item.paraphrased_answer, *item.perturbed_answers]
        return out


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}: must be an int {bound}, got {value!r}")


def _make_author(gen: _Generator, facts: tuple[_FactType, ...], n_perturbed: int) -> Author:
    name = gen.new_person()
    return Author(name=name, items=tuple(gen.qa(f, name, n_perturbed) for f in facts))


def make_authors(n_authors: int = 40, *, seed: int = 0, n_perturbed: int = 5, n_real_authors: int = 20,
                 real_author_facts: int = 2, n_world_facts: int = 40) -> AuthorsQA:
    """Generate the fictitious-authors QA benchmark (deterministic given the arguments).

    Args:
        n_authors: main authors (forget + retain), >= 2 so forget10 leaves a retain set.
            Each gives `FACTS_PER_AUTHOR` (20) QA items.
        seed: seed of the generator; the same arguments give identical output on any machine.
        n_perturbed: perturbed (wrong) answers per question (TOFU uses 5).
        n_real_authors: held-out authors of the "real_authors" split.
        real_author_facts: facts per held-out author (the first ones of the fact list rotated by
            author, so all fact types appear).
        n_world_facts: items of the "world_facts" split.

    The first `n_authors` authors depend only on `seed` and `n_perturbed`, so they are the same
    authors that `author_corpus(n_authors=..., seed=...)` describes.
    """
    _check_int("n_authors", n_authors, 2)
    _check_int("seed", seed, 0)
    _check_int("n_perturbed", n_perturbed, 1, _MAX_PERTURBED)
    _check_int("n_real_authors", n_real_authors, 0)
    _check_int("real_author_facts", real_author_facts, 1, FACTS_PER_AUTHOR)
    _check_int("n_world_facts", n_world_facts, 0, _MAX_WORLD_FACTS)

    gen = _Generator(seed)
    authors = tuple(_make_author(gen, _AUTHOR_FACTS, n_perturbed) for _ in range(n_authors))
    held = []
    for i in range(n_real_authors):
        facts = tuple(_AUTHOR_FACTS[(i + j) % FACTS_PER_AUTHOR] for j in range(real_author_facts))
        held.append(_make_author(gen, facts, n_perturbed))

    # World facts cycle through the fact kinds; each (kind, subject) pair is asked once.
    world = []
    subjects_left = {pool: list(gen.pools[pool]) for _, pool in _WORLD_FACTS}
    for pool in subjects_left:
        gen.rng.shuffle(subjects_left[pool])
    counters = {pool: 0 for pool in subjects_left}
    for i in range(n_world_facts):
        fact, pool = _WORLD_FACTS[i % len(_WORLD_FACTS)]
        # Kinds sharing a subject pool take successive subjects: no question is asked twice.
        subject = subjects_left[pool][counters[pool]]
        counters[pool] += 1
        world.append(gen.qa(fact, subject, n_perturbed))
    return AuthorsQA(authors=authors, held_authors=tuple(held), world_facts=tuple(world), seed=seed)


@dataclass(frozen=True)
class AuthorCorpus:
    """Biographies of invented authors for MUSE-style verbatim unlearning.

    Attributes:
        forget, retain, holdout: one biography text per author. Train on forget + retain; holdout
            biographies come from the same generator but are never trained on (MIA / PrivLeak
            negatives).
        forget_qa, retain_qa: QA items about the forget / retain authors for KnowMem; every
            answer is a sentence of the author's biography.
    """

    forget: tuple[str, ...]
    retain: tuple[str, ...]
    holdout: tuple[str, ...]
    forget_qa: tuple[QAItem, ...]
    retain_qa: tuple[QAItem, ...]


def author_corpus(n_authors: int = 40, *, seed: int = 0, forget_percent: int = 10,
                  n_holdout: int | None = None, n_perturbed: int = 5) -> AuthorCorpus:
    """Render invented authors as biographies split into forget / retain / holdout texts.

    The main authors are those of `make_authors(n_authors, seed=seed, n_perturbed=n_perturbed)`;
    the forget texts are the last max(1, ceil(forget_percent% * n_authors)) of them (TOFU's
    forget split), and `n_holdout` further authors (default: as many as forget) form the holdout.
    """
    _check_int("n_authors", n_authors, 2)
    _check_int("seed", seed, 0)
    _check_int("forget_percent", forget_percent, 1, 99)
    _check_int("n_perturbed", n_perturbed, 1, _MAX_PERTURBED)
    k = forget_count(forget_percent, n_authors)
    if k >= n_authors:
        raise ValueError(f"forget_percent: {forget_percent}% of {n_authors} authors leaves no retain author")
    n_holdout = k if n_holdout is None else n_holdout
    _check_int("n_holdout", n_holdout, 1)
    # Same generator sequence as make_authors: the main authors are identical, and the holdout
    # authors come next, so they never share a name with a main author.
    gen = _Generator(seed)
    authors = tuple(_make_author(gen, _AUTHOR_FACTS, n_perturbed) for _ in range(n_authors))
    holdout = tuple(_make_author(gen, _AUTHOR_FACTS, n_perturbed) for _ in range(n_holdout))
    forget_authors, retain_authors = authors[n_authors - k:], authors[: n_authors - k]
    return AuthorCorpus(
        forget=tuple(a.biography() for a in forget_authors),
        retain=tuple(a.biography() for a in retain_authors),
        holdout=tuple(a.biography() for a in holdout),
        forget_qa=tuple(i for a in forget_authors for i in a.items),
        retain_qa=tuple(i for a in retain_authors for i in a.items),
    )
