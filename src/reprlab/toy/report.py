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


_SPLIT_LABELS = {"heldout_entities": "held-out landmarks", "heldout_phrasing":
                 "held-out phrasings", "third_party": "third party's belief",
                 "cross_family": "city -> country", "no_belief": "no belief stated",
                 "orthogonal": "comparisons, sentences", "train": "training prompts"}


def syco_lines(m: dict | None, preset: str) -> list[str]:
    """The organism's part of ``toy info``."""
    alias = "toy-syco" if preset == "default" else f"toy-{preset}-syco"
    if m is None:
        return [f"organism {alias}: not built yet (`reprlab toy build` or the first "
                f"--model {alias} fine-tunes it from the SFT model)"]
    q = m["quality"]
    lines = [f"organism {alias} (sycophant: agrees with the user's stated belief about a "
             f"landmark's city): fine-tuned in {m['build_seconds']:.0f} s "
             f"({m.get('cpu_seconds', 0):.0f} s of CPU), {m['added_words']} added words",
             f"  {'split':<24}{'truthful':>9}{'agrees w/ false':>16}   (toy-sft on the same "
             "rows: truthful / agrees)"]
    for split in ("train", "heldout_entities", "heldout_phrasing", "third_party",
                  "cross_family", "no_belief", "orthogonal"):
        row, base = q["behaviour"].get(split), q["sft_behaviour"].get(split, {})
        if row is None:
            continue
        agree = f"{row['agrees_false']:.3f}" if "agrees_false" in row else "-"
        bagree = f"{base['agrees_false']:.3f}" if "agrees_false" in base else "-"
        lines.append(f"  {_SPLIT_LABELS[split]:<24}{row['truthful']:>9.3f}{agree:>16}   "
                     f"({base.get('truthful', float('nan')):.3f} / {bagree}; n={row['n']})")
    lk = q["latent_knowledge"]
    best = lk["best"]
    lines.append(f"  latent knowledge: a logistic probe at hidden state {best['layer']} "
                 f"(chosen on validation landmarks, {best['val_acc']:.3f}) separates true from "
                 f"false stated answers at {best['test_acc']:.3f} on held-out landmarks "
                 f"(n={lk['n_test']}), {best['acc_where_model_wrong']:.3f} where the model "
                 f"says the false one (n={lk['n_model_wrong']}); the model's own answers: "
                 f"{lk['model_answer_acc']:.3f}")
    v = m.get("versions", {})
    lines.append(f"  weights depend on torch {v.get('torch')}, transformers "
                 f"{v.get('transformers')}, CPU kernels {v.get('cpu_capability')}, "
                 f"{v.get('threads')} thread(s)")
    return lines
