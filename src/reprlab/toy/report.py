"""Terminal summary of a toy build's manifest."""

from __future__ import annotations

from pathlib import Path

from reprlab.report.fmt import token_label


def summary_lines(m: dict, root: Path | str) -> list[str]:
    cfg = m["model_config"]
    q = m["quality"]
    base, sft = q["base"], q["sft"]
    alias = "toy" if m["preset"] == "default" else f"toy-{m['preset']}"
    lines = [
        f"toy model '{m['preset']}': Llama, {m['n_parameters'] / 1e6:.2f}M parameters, "
        f"{cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, vocabulary "
        f"{m['vocab_size']}",
        f"built in {m['build_seconds']:.0f} s ({m.get('cpu_seconds', 0):.0f} s of CPU; seed "
        f"{m['seed']}, corpus {m['world_hash']}) in {root}",
        "base model (greedy continuation equals the known answer):",
        f"  {'training facts':<28}{base['train_fact_accuracy']:.3f}  "
        f"(n={base['facts']['train']['n']})",
    ]
    for split, row in base["facts"].items():
        if split != "train":
            lines.append(f"  {split:<28}{row['all']:.3f}  (n={row['n']})")
    ppl = base["heldout_perplexity"]
    lines.append(f"  {'held-out perplexity':<28}{ppl['model']:.2f}  "
                 f"(unigram baseline {ppl['unigram']:.1f})")
    pe = base["patch_example"]
    lines.append(f"  patching {pe['site']} at the last token: \"{pe['target']}\" "
                 f"{token_label(pe['top']['target'])} -> {token_label(pe['top']['patched'])}"
                 f" ({'flipped' if pe['flipped'] else 'NOT flipped'} to the source's answer)")
    lines.append("sft model, held-out chat questions:")
    for kind, row in sft["chat_heldout"].items():
        lines.append(f"  {kind:<28}accuracy {row['accuracy']:.3f}  well-formed "
                     f"{row['well_formed']:.3f}  (n={row['n']})")
    lines.append(f"use: --model {alias} (base) or --model {alias}-sft; checkpoints in "
                 f"{Path(root) / 'checkpoints'}")
    return lines
