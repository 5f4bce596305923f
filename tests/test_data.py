"""Dataset kinds, loaders, validation messages and splits."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
import torch

from reprlab.data import (
    ContrastPairs,
    LabeledDataset,
    PreferenceTriples,
    encode_labels,
    kfold_indices,
    load_dataset,
    split_dataset,
    stratified_split,
)
from reprlab.errors import DataError

ROWS = [
    {"sentence": "The sky is blue.", "truth": "true", "key": "a", "topic": "sky"},
    {"sentence": "The sky is green.", "truth": "false", "key": "b", "topic": "sky"},
    {"sentence": "Fire is hot.", "truth": "true", "key": "c", "topic": "fire"},
    {"sentence": "Fire is cold.", "truth": "false", "key": "d", "topic": "fire"},
]
MAP = {"text_col": "sentence", "label_col": "truth", "id_col": "key", "group_col": "topic"}


def write_csv(path, rows, header=None):
    header = header or list(rows[0])
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    return path


def check_loaded(ds: LabeledDataset):
    assert ds.texts == [r["sentence"] for r in ROWS]
    assert ds.labels == [1, 0, 1, 0]
    assert ds.classes == ["false", "true"]
    assert ds.ids == ["a", "b", "c", "d"]
    assert ds.groups == ["sky", "sky", "fire", "fire"]


# ---------------------------------------------------------------- loaders with column mapping

def test_csv_loader(tmp_path):
    check_loaded(load_dataset(write_csv(tmp_path / "d.csv", ROWS), **MAP))


def test_tsv_loader(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("\n".join(["\t".join(ROWS[0])] + ["\t".join(r.values()) for r in ROWS]))
    check_loaded(load_dataset(p, **MAP))


def test_json_loader(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps(ROWS))
    ds = load_dataset(str(p), **MAP)
    check_loaded(ds)
    assert ds.name == "d"


def test_jsonl_loader(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    check_loaded(load_dataset(p, **MAP))


def test_parquet_loader(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    p = tmp_path / "d.parquet"
    pd.DataFrame(ROWS).to_parquet(p)
    check_loaded(load_dataset(p, **MAP))


def test_in_memory_list_dict_and_frame():
    check_loaded(load_dataset(ROWS, **MAP))
    columns = {k: [r[k] for r in ROWS] for k in ROWS[0]}
    check_loaded(load_dataset(columns, **MAP))
    pd = pytest.importorskip("pandas")
    check_loaded(load_dataset(pd.DataFrame(ROWS), **MAP))


def test_default_columns_ids_and_limit():
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(10)]
    ds = load_dataset(rows, limit=4)
    assert len(ds) == 4 and ds.ids == ["0", "1", "2", "3"] and ds.groups is None
    assert ds.classes == ["0", "1"]


def test_hf_loader_on_local_file(tmp_path):
    pytest.importorskip("datasets")
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in ROWS))
    check_loaded(load_dataset("hf:json@train", data_files=str(p), **MAP))


def test_hf_spec_parsing():
    from reprlab.data.readers import parse_hf_spec

    assert parse_hf_spec("hf:imdb") == ("imdb", None, "train")
    assert parse_hf_spec("hf:glue:sst2@validation") == ("glue", "sst2", "validation")
    assert parse_hf_spec("hf:org/name@test") == ("org/name", None, "test")


def test_pairs_and_preferences_from_files(tmp_path):
    p = tmp_path / "p.csv"
    write_csv(p, [{"good": "I love it.", "bad": "I hate it."},
                  {"good": "Great day.", "bad": "Awful day."}])
    pairs = load_dataset(p, kind="pairs", positive_col="good", negative_col="bad")
    assert isinstance(pairs, ContrastPairs)
    assert pairs.positive == ["I love it.", "Great day."] and pairs.ids == ["0", "1"]
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"q": "2+2?", "yes": "4", "no": "5", "id": "x"}))
    prefs = load_dataset(q, kind="preferences", prompt_col="q", chosen_col="yes",
                         rejected_col="no")
    assert isinstance(prefs, PreferenceTriples)
    assert (prefs.prompt, prefs.chosen, prefs.rejected, prefs.ids) == (["2+2?"], ["4"], ["5"],
                                                                       ["x"])


# ---------------------------------------------------------------- labels

@pytest.mark.parametrize("raw, labels, classes", [
    ([True, False, True], [1, 0, 1], ["false", "true"]),
    (["True", "false", "TRUE"], [1, 0, 1], ["false", "true"]),
    ([0, 1, 2, 1], [0, 1, 2, 1], ["0", "1", "2"]),
    (["1", "0"], [1, 0], ["0", "1"]),
    ([1.0, 0.0], [1, 0], ["0", "1"]),
    (["neg", "pos", "neutral"], [0, 2, 1], ["neg", "neutral", "pos"]),
])
def test_label_encoding(raw, labels, classes):
    assert encode_labels(raw, "label", "") == (labels, classes)


def test_string_labels_with_explicit_classes():
    ds = load_dataset([{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}],
                      classes=["pos", "neg"])
    assert ds.labels == [0, 1] and ds.classes == ["pos", "neg"]


# ---------------------------------------------------------------- validation messages

def _raises(match, *args, **kwargs):
    with pytest.raises(DataError, match=match) as info:
        load_dataset(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_file(tmp_path):
    _raises("not found.*nope.csv", tmp_path / "nope.csv")


def test_unknown_extension(tmp_path):
    p = tmp_path / "d.xlsx"
    p.write_text("x")
    _raises(r"unknown data file extension '\.xlsx'", p)


def test_unparseable_csv(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text('text,label\n"unterminated, 1\nok,0\n')
    _raises("not parseable as CSV|line 2 has", p)
    q = tmp_path / "ragged.csv"
    q.write_text("text,label\nhello,1,extra\n")
    _raises("line 2 has 3 fields but the header has 2", q)
    b = tmp_path / "binary.csv"
    b.write_bytes(b"\xff\xfe\x00\x01\x02")
    _raises("not UTF-8|NUL", b)


def test_json_not_records(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"text": "a", "label": 1}))
    _raises("must be a list of records", p)
    p.write_text(json.dumps(["a", "b"]))
    _raises("row 0 is a JSON str, not an object", p)
    p.write_text("{not json")
    _raises("invalid JSON at line 1", p)
    q = tmp_path / "d.jsonl"
    q.write_text('{"text": "a", "label": 1}\n[1, 2]\n')
    _raises("line 2 is a JSON list", q)


def test_corrupt_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    p = tmp_path / "d.parquet"
    p.write_text("not parquet at all")
    _raises("not a readable Parquet file", p)


def test_missing_column_lists_existing(tmp_path):
    msg = _raises("no column 'text' for the text", ROWS)
    assert "sentence" in msg and "truth" in msg
    msg = _raises("no column 'lbl' for the label", ROWS, text_col="sentence", label_col="lbl")
    assert "columns found" in msg
    _raises("no column 'nope' for the id", ROWS, text_col="sentence", label_col="truth",
            id_col="nope")


def test_empty_text_names_row_and_column():
    rows = [{"text": "ok", "label": 1}, {"text": "   ", "label": 0}]
    _raises(r"row 1, column 'text' is an empty text", rows)


def test_none_and_nan_text_and_label():
    _raises(r"row 1, column 'text' is missing", [{"text": "a", "label": 1},
                                                 {"text": None, "label": 0}])
    _raises(r"row 0, column 'text' is missing", [{"text": float("nan"), "label": 1},
                                                 {"text": "b", "label": 0}])
    _raises(r"row 1, column 'label' has no label", [{"text": "a", "label": 1},
                                                    {"text": "b", "label": float("nan")}])
    _raises(r"row 0, column 'label' has no label", [{"text": "a", "label": None},
                                                    {"text": "b", "label": 0}])


def test_nan_in_parquet_names_row(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    p = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a", None, "c"], "label": [0, 1, 1]}).to_parquet(p)
    _raises(r"d\.parquet: row 1, column 'text' is missing", p)


def test_bad_labels():
    _raises(r"row 1, column 'label' has label 2, not a class index 0\.\.1",
            [{"text": "a", "label": 0}, {"text": "b", "label": 2}], classes=["x", "y"])
    _raises(r"row 1, column 'label' has label -1", [{"text": "a", "label": 0},
                                                    {"text": "b", "label": -1}])
    _raises(r"row 2, column 'label' has label 'maybe', not one of the classes",
            [{"text": "a", "label": "yes"}, {"text": "b", "label": "no"},
             {"text": "c", "label": "maybe"}], classes=["no", "yes"])
    _raises(r"row 1, column 'label' has label 0.5", [{"text": "a", "label": "x"},
                                                     {"text": "b", "label": 0.5}])


def test_single_class_rejected_unless_allowed():
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": 1}]
    _raises("needs at least 2", rows, classes=["no", "yes"])
    ds = load_dataset(rows, classes=["no", "yes"], require_classes=0)
    assert ds.class_counts() == {"no": 0, "yes": 2}


def test_duplicate_ids(tmp_path):
    rows = [{"text": "a", "label": 1, "id": "x"}, {"text": "b", "label": 0, "id": "y"},
            {"text": "c", "label": 0, "id": "x"}]
    _raises(r"duplicate id 'x' in column 'id' at rows 0 and 2", rows)


def test_pairs_with_empty_side():
    rows = [{"positive": "good", "negative": "bad"}, {"positive": "fine", "negative": ""}]
    _raises(r"pair at row 1 has an empty side \(column 'negative'\)", rows, kind="pairs")
    rows = [{"positive": None, "negative": "bad"}]
    _raises(r"pair at row 0 has an empty side \(column 'positive'\)", rows, kind="pairs")


def test_bad_kind_and_unknown_option():
    _raises("unknown dataset kind 'triples'", ROWS, kind="triples")
    _raises("unexpected options", ROWS, txt_col="sentence")


def test_dataclass_validation():
    with pytest.raises(DataError, match="row 1, column 'labels' is 3, not a class index"):
        LabeledDataset(["a", "b"], [0, 3], classes=["n", "y"])
    with pytest.raises(DataError, match="different lengths"):
        LabeledDataset(["a", "b"], [0])
    with pytest.raises(DataError, match="row 0, column 'negative' is an empty text"):
        ContrastPairs(["a"], [""])
    with pytest.raises(DataError, match="span"):
        LabeledDataset(["abc"], [0], token_masks=[[(1, 9)]])
    ds = LabeledDataset(["abc", "de"], [0, 1], token_masks=[[(0, 2)], None])
    assert ds.token_masks == [[(0, 2)], None] and ds.ids == ["0", "1"]


# ---------------------------------------------------------------- kinds

def test_hash_stable_and_sensitive():
    a = load_dataset(ROWS, **MAP)
    b = load_dataset([dict(r) for r in ROWS], **MAP)
    assert a.hash() == a.hash() == b.hash()
    assert len(a.hash()) == 64
    flipped = [dict(r) for r in ROWS]
    flipped[2]["truth"] = "false"
    assert load_dataset(flipped, **MAP).hash() != a.hash()
    regrouped = [dict(r) for r in ROWS]
    regrouped[0]["topic"] = "other"
    assert load_dataset(regrouped, **MAP).hash() != a.hash()
    p = ContrastPairs(["x"], ["y"], ["0"])
    assert p.hash() == ContrastPairs(["x"], ["y"], ["0"]).hash() != ContrastPairs(
        ["y"], ["x"], ["0"]).hash()
    t = PreferenceTriples(["q"], ["a"], ["b"])
    assert t.hash() != PreferenceTriples(["q"], ["b"], ["a"]).hash()


def test_hash_known_value():
    # pins the encoding: a change here invalidates every recorded manifest
    ds = LabeledDataset(["a", "b"], [0, 1], ["i", "j"], ["n", "y"])
    import hashlib

    blob = ('{"classes":["n","y"],"groups":null,"ids":["i","j"],"kind":"labeled",'
            '"labels":[0,1],"texts":["a","b"]}')
    assert ds.hash() == hashlib.sha256(blob.encode()).hexdigest()


def test_subset_label_tensor_describe():
    ds = load_dataset(ROWS, **MAP)
    sub = ds.subset(np.array([3, 0]))
    assert sub.texts == [ROWS[3]["sentence"], ROWS[0]["sentence"]]
    assert sub.ids == ["d", "a"] and sub.groups == ["fire", "sky"] and sub.classes == ds.classes
    assert torch.equal(ds.label_tensor(), torch.tensor([1, 0, 1, 0]))
    assert ds.label_tensor().dtype == torch.long
    assert ds.subset(torch.tensor([True, False, False, True])).ids == ["a", "d"]
    d = ds.describe()
    assert d["rows"] == 4 and d["class_counts"] == {"false": 2, "true": 2}
    assert d["hash"] == ds.hash() and d["name"] == ""
    with pytest.raises(DataError, match="out of range"):
        ds.subset([7])


def test_pairs_as_labeled_and_back():
    pairs = ContrastPairs(["good a", "good b"], ["bad a", "bad b"], ["p0", "p1"], name="s")
    lab = pairs.as_labeled()
    assert lab.texts == ["good a", "bad a", "good b", "bad b"]
    assert lab.labels == [1, 0, 1, 0] and lab.classes == ["negative", "positive"]
    assert lab.ids == ["p0+", "p0-", "p1+", "p1-"] and lab.groups == ["p0", "p0", "p1", "p1"]
    back = lab.as_pairs()
    assert back.positive == pairs.positive and back.negative == pairs.negative
    assert back.ids == pairs.ids


# ---------------------------------------------------------------- splits

def test_split_deterministic_and_partition():
    labels = [0] * 50 + [1] * 50
    a = stratified_split(labels, seed=3)
    b = stratified_split(labels, seed=3)
    c = stratified_split(labels, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    allidx = np.concatenate(a)
    assert sorted(allidx.tolist()) == list(range(100))
    assert [len(x) for x in a] == [60, 20, 20]


@pytest.mark.parametrize("n0, n1, fractions", [(50, 50, (0.6, 0.2, 0.2)),
                                               (37, 81, (0.6, 0.2, 0.2)),
                                               (101, 29, (0.7, 0.3)),
                                               (13, 17, (0.5, 0.25, 0.25))])
def test_split_stratified_within_one_row(n0, n1, fractions):
    labels = np.array([0] * n0 + [1] * n1)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    parts = stratified_split(labels, fractions, seed=1)
    for part, f in zip(parts, fractions, strict=True):
        counts = Counter(labels[part].tolist())
        assert abs(counts[0] - n0 * f) < 1 + 1e-9
        assert abs(counts[1] - n1 * f) < 1 + 1e-9


def test_split_test_size_val_size():
    labels = [0, 1] * 50
    train, test = stratified_split(labels, test_size=0.25)
    assert (len(train), len(test)) == (75, 25)
    train, val, test = stratified_split(labels, test_size=0.2, val_size=0.1)
    assert (len(train), len(val), len(test)) == (70, 10, 20)


def test_split_group_aware():
    # 40 matched pairs plus 10 groups of three with mixed labels
    labels, groups = [], []
    for g in range(40):
        labels += [1, 0]
        groups += [f"pair{g}"] * 2
    for g in range(10):
        labels += [1, 1, 0]
        groups += [f"tri{g}"] * 3
    parts = stratified_split(labels, (0.6, 0.2, 0.2), seed=7, groups=groups)
    owner = {}
    for k, part in enumerate(parts):
        for i in part:
            assert owner.setdefault(groups[i], k) == k, f"group {groups[i]} split"
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    # pair groups are dealt 24/8/8, triple groups 6/2/2
    pair_counts = [len({groups[i] for i in p if groups[i].startswith("pair")}) for p in parts]
    tri_counts = [len({groups[i] for i in p if groups[i].startswith("tri")}) for p in parts]
    assert pair_counts == [24, 8, 8] and tri_counts == [6, 2, 2]


def test_split_too_small():
    with pytest.raises(DataError, match="too few rows for the requested split"):
        stratified_split([0, 1, 0, 1], (0.6, 0.2, 0.2))
    with pytest.raises(DataError, match="no rows of class 1"):
        stratified_split([0] * 20 + [1], (0.5, 0.5))
    with pytest.raises(DataError, match="too few rows"):
        stratified_split([0, 1] * 2, (0.5, 0.5), groups=["a"] * 4)
    with pytest.raises(DataError, match="sum to 1"):
        stratified_split([0, 1] * 10, (0.5, 0.2))


def test_kfold():
    labels = [0] * 12 + [1] * 8
    groups = [f"g{i // 2}" for i in range(20)]
    folds = kfold_indices(labels, k=4, seed=0, groups=groups)
    tests = np.concatenate([t for _, t in folds])
    assert sorted(tests.tolist()) == list(range(20))
    for train, test in folds:
        assert not set(train.tolist()) & set(test.tolist())
        assert len(train) + len(test) == 20
        assert {groups[i] for i in train}.isdisjoint({groups[i] for i in test})
        # 6 class-0 pairs and 4 class-1 pairs dealt over 4 folds
        counts = Counter(labels[i] for i in test)
        assert counts[1] == 2 and counts[0] in (2, 4)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(
        folds, kfold_indices(labels, k=4, seed=0, groups=groups), strict=True))
    with pytest.raises(DataError, match="too few rows"):
        kfold_indices([0, 0, 0, 1], k=3)


def test_split_dataset_keeps_groups():
    ds = ContrastPairs([f"p{i}" for i in range(30)], [f"n{i}" for i in range(30)]).as_labeled()
    train, val, test = split_dataset(ds, seed=0)
    assert len(train) + len(val) + len(test) == 60
    gs = [set(p.groups) for p in (train, val, test)]
    assert not (gs[0] & gs[1] or gs[0] & gs[2] or gs[1] & gs[2])
    assert train.class_counts() == {"negative": 18, "positive": 18}
