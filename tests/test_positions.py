from __future__ import annotations

import pytest
import torch
from conftest import make_tiny

from reprlab.capture import capture
from reprlab.data import LabeledDataset
from reprlab.errors import SiteError
from reprlab.positions import flatten, nth_index, parse_positions, pool


def _padded(side: str):
    torch.manual_seed(0)
    lengths = [3, 5, 1]
    T = 5
    h = torch.randn(3, T, 4)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        if side == "right":
            mask[i, :n] = 1
        else:
            mask[i, T - n:] = 1
    return h, mask, lengths


@pytest.mark.parametrize("side", ["left", "right"])
def test_positions_index_real_tokens_under_both_paddings(side):
    h, mask, lengths = _padded(side)
    real = [h[i][mask[i].bool()] for i in range(3)]
    for i, r in enumerate(real):
        assert torch.equal(pool(h, mask, "last")[i], r[-1])
        assert torch.equal(pool(h, mask, "first")[i], r[0])
        assert torch.equal(pool(h, mask, "middle")[i], r[(len(r) - 1) // 2])
        assert torch.allclose(pool(h, mask, "mean")[i], r.mean(0))
        assert torch.equal(pool(h, mask, "1")[i], r[min(1, len(r) - 1)])
        assert torch.equal(pool(h, mask, "-2")[i], r[max(len(r) - 2, 0)])
    flat, ids = flatten(h, mask)
    assert flat.shape[0] == sum(lengths)
    for (row, tok), v in zip(ids.tolist(), flat):
        assert torch.equal(v, real[row][tok])


def test_nth_index_clamps():
    mask = torch.tensor([[1, 1, 0]])
    assert nth_index(mask, 5).item() == 1 and nth_index(mask, -9).item() == 0


def test_position_grammar():
    assert parse_positions("last, mean,3,-1,all") == ["last", "mean", "3", "-1", "all"]
    with pytest.raises(SiteError, match="unknown position"):
        parse_positions("penultimate")


def test_mean_content_excludes_special_tokens_and_span_uses_given_chars(tmp_path):
    lm = make_tiny("bert")
    text = "the answer is forty two"
    start = text.index("forty")
    ds = LabeledDataset(texts=[text, text], labels=[0, 1], token_masks=[[(start, len(text))], None])
    store = capture(lm, ds, "layers.0", "mean,mean:content,mean:span", tmp_path / "s",
                    progress=False)
    enc = lm.encode([text])
    with torch.no_grad():
        h = lm.model(**enc, output_hidden_states=True).hidden_states[1][0]
    ids = enc["input_ids"][0].tolist()
    special = {lm.tokenizer.cls_token_id, lm.tokenizer.sep_token_id}
    content = torch.tensor([i not in special for i in ids])
    assert torch.allclose(store["layers.0", "mean:content"][0], h[content].mean(0), atol=1e-6)
    assert torch.allclose(store["layers.0", "mean"][0], h.mean(0), atol=1e-6)
    toks = lm.tokenizer.convert_ids_to_tokens(ids)
    span = torch.tensor([t in ("forty", "two") for t in toks])
    assert span.sum() == 2
    assert torch.allclose(store["layers.0", "mean:span"][0], h[span].mean(0), atol=1e-6)
    # a row without spans falls back to the plain mean
    assert torch.allclose(store["layers.0", "mean:span"][1], h.mean(0), atol=1e-6)
