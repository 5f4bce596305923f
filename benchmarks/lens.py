"""Lens benchmarks.

(a) Talkative-lens training step (decode t tokens, encode, splice into the target, KL + MSE,
    backward, AdamW step) with the KV-cached decode against the naive decode that recomputes
    the whole prefix for every token, at t = 4, 8, 16; same model, batch and weights; and the
    decode alone (forward and backward through the straight-through tokens), the part the
    cache changes.
(b) Tuned-lens training throughput (tokens/s): reprlab's step against a step built on the
    ``tuned-lens`` package's own ``TunedLens`` module (its translators and unembedding), same
    model, data, loss (KL(final ‖ lens) summed over layers) and SGD-Nesterov optimiser.
    The package's training script cannot run here (it imports ``torchdata.dataloader2``,
    removed in torchdata 0.10); its ``tuned_lens.nn`` module works under transformers 5.24.
    Install it without touching the environment's dependencies:
    ``pip install --no-deps --target /tmp/tl-site tuned-lens==0.2.0`` and pass
    ``--peer-path /tmp/tl-site``.
(c) GRPO's sampling: K explanations per activation in one batched decode against K decodes.

Both parts time with wall and CPU time (process_time), variants in rotation, at 1 torch thread
unless ``--threads``; the machine load is printed beside the figures.

    python benchmarks/lens.py --parts a,b,c --repeats 5 --peer-path /tmp/tl-site
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def random_llama(hidden: int, layers: int, vocab: int, seed: int = 0):
    import transformers as t

    from reprlab.models import LoadedModel

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from conftest import bundled_tokenizer

    torch.manual_seed(seed)
    cfg = t.LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        num_key_value_heads=4, intermediate_size=int(2.75 * hidden),
                        vocab_size=vocab, max_position_embeddings=512)
    model = t.AutoModelForCausalLM.from_config(cfg)
    return LoadedModel.from_hf(model, copy.deepcopy(bundled_tokenizer()), name="random-llama")


def rotate(fns: dict, repeats: int, warmup: int = 1) -> dict[str, dict[str, float]]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - w0)
            cpu[k].append(time.process_time() - c0)
    return {k: {"wall": statistics.median(wall[k]), "cpu": statistics.median(cpu[k])}
            for k in fns}


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


# -- (a) ------------------------------------------------------------------------------------
def part_a(args) -> None:
    from reprlab import hooks
    from reprlab.lenses.talk.data import LensData
    from reprlab.lenses.talk.losses import combine
    from reprlab.lenses.talk.model import TalkModule, gumbel_noise
    from reprlab.lenses.talk.train import TalkConfig, step_losses
    from reprlab.sites import resolve_sites

    dev = torch.device(args.device)
    lm = random_llama(args.hidden, args.layers, args.vocab)
    lm.model.to(dev)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    site = resolve_sites(lm, f"layers.{args.layers // 2}")[0]
    n, seq = 64, 32
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, args.vocab, (n, seq), generator=g)
    pos = torch.randint(8, seq, (n,), generator=g)
    with torch.no_grad(), hooks.record(lm, [site]) as cache:
        lm.model(input_ids=ids.to(dev))
    a = cache[site.name][torch.arange(n), pos.to(dev)].float().cpu()
    data = LensData(a=a, a2=a.roll(1, 0), input_ids=ids, lengths=torch.full((n,), seq),
                    row=torch.arange(n), pos=pos, row2=torch.arange(n).roll(1), pos2=pos.roll(1),
                    site=site.name, path=None, cache_hit=True, texts=[])
    prompt = [1, 0] + list(range(2, args.prompt_len))  # <bos> <embed> + prompt words
    module = TalkModule(copy.deepcopy(lm.model), copy.deepcopy(lm.model), args.hidden,
                        prompt, 1, [1], site.layer).to(dev)
    for p in module.decoder.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(module.trainable(), lr=1e-5)
    idx = torch.arange(args.batch)
    weights = {"kl": 1.0, "mse": 1.0, "entropy": 0.0}
    print(f"(a) talkative-lens training step, random Llama d={args.hidden} L={args.layers} "
          f"V={args.vocab}, batch {args.batch}, decoder prompt {len(prompt)} tokens, site "
          f"{site.name}, device {dev}, "
          f"{torch.get_num_threads()} thread(s); {load()}")
    for t in args.tokens:
        noise = gumbel_noise((args.batch, t, args.vocab), torch.Generator().manual_seed(t))

        def step(kv: bool, t: int = t, noise: torch.Tensor = noise) -> None:
            cfg = TalkConfig(site=site.name, tokens=t, kv_cache=kv)
            values, _ = step_losses(lm, module, data, idx, cfg, 0.5, weights, noise, None,
                                    site, [1])
            opt.zero_grad(set_to_none=True)
            combine(values, weights).backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()

        probe = torch.randn(args.batch, t, args.vocab, generator=g).to(dev)

        def decode(kv: bool, t: int = t, noise: torch.Tensor = noise,
                   probe: torch.Tensor = probe) -> None:
            gen = module.generate(data.a[idx].to(dev), t, 0.5, noise.to(dev), use_cache=kv)
            (gen.onehots * probe).sum().backward()  # the decode's own backward, no encoder
            if dev.type == "cuda":
                torch.cuda.synchronize()

        for what, fn in (("step", step), ("decode", decode)):
            res = rotate({"kv": functools.partial(fn, True), "naive": functools.partial(fn, False)},
                         args.repeats)
            kv, nv = res["kv"], res["naive"]
            print(f"  t={t:<3} {what:<7} kv-cache {kv['wall'] * 1e3:8.1f} ms "
                  f"(cpu {kv['cpu'] * 1e3:8.1f})   naive {nv['wall'] * 1e3:8.1f} ms "
                  f"(cpu {nv['cpu'] * 1e3:8.1f})   speed-up {nv['wall'] / kv['wall']:.2f}x "
                  f"wall, {nv['cpu'] / kv['cpu']:.2f}x cpu   [{load()}]")
        opt.zero_grad(set_to_none=True)


# -- (c) ------------------------------------------------------------------------------------
def part_c(args) -> None:
    """GRPO's sampling: the K explanations of each activation drawn in one batched decode of
    B·K rows against K decodes of B rows (no grad, KV cache, same Gumbel noise)."""
    from reprlab.lenses.talk.model import TalkModule, gumbel_noise

    dev = torch.device(args.device)
    lm = random_llama(args.hidden, args.layers, args.vocab)
    prompt = [1, 0] + list(range(2, args.prompt_len))
    module = TalkModule(lm.model, copy.deepcopy(lm.model), args.hidden, prompt, 1, [1],
                        args.layers // 2).to(dev)
    b, k, t = args.batch, args.k, 8
    a = torch.randn(b, args.hidden, generator=torch.Generator().manual_seed(0)).to(dev)
    rep = a.repeat_interleave(k, 0)
    noise = gumbel_noise((b * k, t, args.vocab), torch.Generator().manual_seed(1)).to(dev)
    per = noise.reshape(b, k, t, -1)

    @torch.no_grad()
    def batched() -> torch.Tensor:
        return module.generate(rep, t, 1.0, noise).ids

    @torch.no_grad()
    def looped() -> torch.Tensor:
        ids = [module.generate(a, t, 1.0, per[:, j]).ids for j in range(k)]
        return torch.stack(ids, 1).reshape(b * k, t)

    assert torch.equal(batched(), looped())  # the same samples either way
    res = rotate({"batched": batched, "looped": looped}, args.repeats)
    one, loop = res["batched"], res["looped"]
    print(f"(c) GRPO sampling, {k} explanations of t={t} for each of {b} activations, "
          f"decoder prompt {len(prompt)} tokens, {torch.get_num_threads()} thread(s)")
    print(f"  one decode of {b * k} rows {one['wall'] * 1e3:8.1f} ms (cpu {one['cpu'] * 1e3:8.1f})"
          f"   {k} decodes of {b} rows {loop['wall'] * 1e3:8.1f} ms (cpu "
          f"{loop['cpu'] * 1e3:8.1f})   speed-up {loop['wall'] / one['wall']:.2f}x wall, "
          f"{loop['cpu'] / one['cpu']:.2f}x cpu   [{load()}]")


# -- (b) ------------------------------------------------------------------------------------
def part_b(args) -> None:
    from reprlab.lenses.tuned.train import tuned_loss
    from reprlab.lenses.tuned.translators import Translators
    from reprlab.lenses.unembed import forward_states

    if args.peer_path:
        sys.path.insert(0, args.peer_path)
    try:
        from tuned_lens import TunedLens as PeerLens
    except ImportError as exc:
        print(f"(b) skipped: tuned-lens is not importable ({exc}); see this script's docstring")
        return
    dev = torch.device(args.device)
    lm = random_llama(args.hidden, args.layers, args.vocab)
    lm.model.to(dev)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, args.vocab, (args.tuned_batch, args.seq), generator=g).to(dev)
    mask = torch.ones_like(ids)
    inputs = {"input_ids": ids, "attention_mask": mask}
    tokens = ids.numel()
    ours = Translators(lm.arch.n_layers + 1, args.hidden).to(dev)
    opt_a = torch.optim.SGD(ours.parameters(), lr=1.0, momentum=0.9, nesterov=True)
    peer = PeerLens.from_model(lm.model).to(dev)
    for p in peer.unembed.parameters():
        p.requires_grad_(False)
    opt_b = torch.optim.SGD([p for p in peer.parameters() if p.requires_grad], lr=1.0,
                            momentum=0.9, nesterov=True)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step_ours() -> None:
        states, final = forward_states(lm, inputs)
        loss = tuned_loss(lm, ours, states, final, mask) / tokens
        opt_a.zero_grad(set_to_none=True)
        loss.backward()
        opt_a.step()
        sync()

    def step_peer() -> None:
        with torch.no_grad():
            out = lm.model(**inputs, output_hidden_states=True)
        final = out.logits.float().log_softmax(-1)
        loss = 0.0
        for i, h in enumerate(out.hidden_states[:-1]):
            logq = peer(h, i).float().log_softmax(-1)
            loss = loss + (final.exp() * (final - logq)).sum(-1).sum()
        loss = loss / tokens
        opt_b.zero_grad(set_to_none=True)
        loss.backward()
        opt_b.step()
        sync()

    # the same maths: identical translators give the same loss
    with torch.no_grad():
        states, final = forward_states(lm, inputs)
        ref = float(tuned_loss(lm, ours, states, final, mask))
        out = lm.model(**inputs, output_hidden_states=True)
        f = F.log_softmax(out.logits.float(), -1)
        peer_loss = sum(float((f.exp() * (f - peer(h, i).float().log_softmax(-1))).sum())
                        for i, h in enumerate(out.hidden_states[:-1]))
    res = rotate({"reprlab": step_ours, "tuned-lens": step_peer}, args.repeats)
    a, b = res["reprlab"], res["tuned-lens"]
    print(f"(b) tuned-lens training step, random Llama d={args.hidden} L={args.layers} "
          f"V={args.vocab}, {args.tuned_batch}x{args.seq} = {tokens} tokens per step, device "
          f"{dev}, {torch.get_num_threads()} thread(s); initial loss reprlab {ref:.4f} vs "
          f"tuned-lens {peer_loss:.4f} nats")
    print(f"  reprlab    {tokens / a['wall']:9.0f} tokens/s (cpu {tokens / a['cpu']:9.0f})")
    print(f"  tuned-lens {tokens / b['wall']:9.0f} tokens/s (cpu {tokens / b['cpu']:9.0f})")
    print(f"  ratio reprlab / tuned-lens: {b['wall'] / a['wall']:.2f}x wall, "
          f"{b['cpu'] / a['cpu']:.2f}x cpu   [{load()}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="a,b")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=4, help="decoder prompt tokens")
    ap.add_argument("--tokens", default="4,8,16")
    ap.add_argument("--k", type=int, default=8, help="GRPO samples per activation (c)")
    ap.add_argument("--tuned-batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--peer-path", default="")
    args = ap.parse_args()
    args.tokens = [int(t) for t in args.tokens.split(",")]
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parts = args.parts.split(",")
    if "a" in parts:
        part_a(args)
    if "b" in parts:
        part_b(args)
    if "c" in parts:
        part_c(args)


if __name__ == "__main__":
    main()
