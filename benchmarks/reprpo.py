"""InnerDPO training step: reprlab (one forward, cached reference) vs the research design.

The ReprPO research (wassname/repr-preference-optimization) runs four forwards a step:
reference chosen, reference rejected (no grad, adapter disabled), policy chosen, policy
rejected, each with ``output_hidden_states=True`` and a full ``[B, T, vocab]`` log-softmax.
reprlab runs one policy forward over chosen and rejected stacked on the batch axis, records
only the requested sites in the graph, applies the LM head only at completion positions, and
reads reference log-probs and pooled states from the cache (computed once, outside the step).

Same model, LoRA, sites, batch, loss (InnerDPO, pars_ratio) and optimiser; timed in rotation
at one torch thread, wall and CPU time, load average printed beside the figures::

    python benchmarks/reprpo.py                      # 31M-parameter Llama, 4 pairs x 128
    python benchmarks/reprpo.py --model toy-sft --seq 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def build_model(name: str, hidden: int, layers: int):
    from reprlab.models import LoadedModel, load_model

    if name != "random":
        return load_model(name)
    import transformers as t
    from transformers import AutoTokenizer

    from reprlab.models import bundled_model_path

    tok = AutoTokenizer.from_pretrained(str(bundled_model_path()))
    torch.manual_seed(0)
    cfg = t.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=8, num_key_value_heads=8,
                        intermediate_size=2 * hidden, pad_token_id=0, tie_word_embeddings=True)
    cfg._attn_implementation = "sdpa"
    return LoadedModel.from_hf(t.LlamaForCausalLM(cfg), tok, name="bench-llama")


def make_batch(lm, pairs: int, seq: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token pairs: a shared prompt of seq/2 tokens, completions of seq/2 tokens."""
    g = torch.Generator().manual_seed(seed)
    vocab = lm.model.config.vocab_size
    p = seq // 2
    prompt = torch.randint(1000, vocab, (pairs, p), generator=g)
    cho = torch.randint(1000, vocab, (pairs, seq - p), generator=g)
    rej = torch.randint(1000, vocab, (pairs, seq - p), generator=g)
    ids = torch.cat([torch.cat([prompt, cho], 1), torch.cat([prompt, rej], 1)], 0)
    att = torch.ones_like(ids)
    comp = torch.zeros_like(ids)
    comp[:, p:] = 1
    return {"input_ids": ids, "attention_mask": att, "completion_mask": comp}


def research_step(lm, peft, batch, layer_ids, opts, opt):
    """Four forwards with all hidden states and full-vocabulary log-softmax (research design)."""
    from reprlab.prefs.repr_losses import REPR_LOSSES, ReprInputs

    n = batch["input_ids"].shape[0] // 2
    halves = [{k: v[:n] for k, v in batch.items()}, {k: v[n:] for k, v in batch.items()}]

    def run(b):
        out = lm.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                       output_hidden_states=True, use_cache=False)
        lp = out.logits[:, :-1].float().log_softmax(-1)
        lp = lp.gather(-1, b["input_ids"][:, 1:, None]).squeeze(-1)
        m = b["completion_mask"][:, 1:].float()
        logp = (lp * m).sum(1)
        w = b["completion_mask"].float().unsqueeze(-1)
        hs = {f"layers.{i}": (out.hidden_states[i + 1] * w).sum(1) / w.sum(1) for i in layer_ids}
        return logp, hs

    with torch.no_grad(), peft.disable_adapter():
        rc_lp, rc = run(halves[0])
        rr_lp, rr = run(halves[1])
    pc_lp, pc = run(halves[0])
    pr_lp, pr = run(halves[1])
    x = ReprInputs(pc, pr, rc, rr, pc_lp, pr_lp, rc_lp, rr_lp)
    loss = REPR_LOSSES["innerdpo"].fn(x, opts).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss)


def reprlab_step(lm, method, batch, ref, opt):
    from reprlab.prefs.forward import forward

    policy = forward(lm, batch, tuple(method.sites))
    out = method.loss(policy, ref)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(out.loss.detach())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random", help="random (a 31M Llama, tied embeddings) or a model name")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--sites", default="layers.0.5:-1")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from reprlab.prefs.adapters import AdapterSpec, apply_adapter, trainable
    from reprlab.prefs.forward import forward
    from reprlab.prefs.hidden import resolve_repr_sites
    from reprlab.prefs.methods import MethodOptions, SeqOutputs, build_method

    lm = build_model(args.model, args.hidden, args.layers)
    n_params = sum(p.numel() for p in lm.model.parameters())
    sites = [s.name for s in resolve_repr_sites(lm, args.sites)]
    layer_ids = [int(s.split(".")[1]) for s in sites]
    torch.manual_seed(0)
    peft = apply_adapter(lm.model, AdapterSpec(r=8, alpha=16, targets=("all-linear",)))
    params = [p for _, p in trainable(peft)]
    method = build_method("innerdpo", MethodOptions(extra={"sites": ",".join(sites),
                                                           "align": "pars_ratio"}))
    batch = make_batch(lm, args.pairs, args.seq)
    with torch.no_grad(), peft.disable_adapter():  # the cache: computed once, before training
        r = forward(lm, batch, tuple(sites))
        ref = SeqOutputs(r.chosen_logps, r.rejected_logps, r.chosen_tokens, r.rejected_tokens,
                         {k: v.detach() for k, v in r.chosen_hidden.items()},
                         {k: v.detach() for k, v in r.rejected_hidden.items()})
    opt = torch.optim.SGD(params, lr=0.0)  # lr 0: every step sees the same weights
    peft.train()
    tokens = int(batch["attention_mask"].sum())
    # same loss on the same tensors first
    a = reprlab_step(lm, method, batch, ref, opt)
    b = research_step(lm, peft, batch, layer_ids, method.options, opt)
    wall = {"reprlab": [], "research": []}
    cpu = {"reprlab": [], "research": []}
    for _ in range(args.rounds):
        for name in ("reprlab", "research"):
            t0, c0 = time.perf_counter(), time.process_time()
            if name == "reprlab":
                reprlab_step(lm, method, batch, ref, opt)
            else:
                research_step(lm, peft, batch, layer_ids, method.options, opt)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in wall.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"model {lm.name}: {n_params / 1e6:.1f}M parameters, LoRA r=8 all-linear, sites "
          f"{','.join(sites)}, {args.pairs} pairs x {args.seq} tokens, 1 thread, "
          f"{args.rounds} rounds in rotation; load average {os.getloadavg()[0]:.1f}")
    print(f"loss reprlab {a:.6f} research {b:.6f} (difference {abs(a - b):.2e})")
    for k in ("reprlab", "research"):
        print(f"{k:>9}: {tokens / med[k]:8.1f} tokens/s wall ({med[k]:.3f} s/step), "
              f"{tokens / cmed[k]:8.1f} tokens/s CPU")
    print(f"ratio: {med['research'] / med['reprlab']:.2f}x wall, "
          f"{cmed['research'] / cmed['reprlab']:.2f}x CPU (goal >= 2.5x)")


if __name__ == "__main__":
    main()
