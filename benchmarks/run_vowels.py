"""Japanese Vowels: variable-length sequences (7 to 29 steps of 12 features), nnkit's GRU beside PyTorch's packed GRU.

    pip download --no-deps aeon==1.6.0 -d data/        # the wheel ships the UCI data set as .ts files
    python -m benchmarks.run_vowels --data data/aeon-1.6.0-py3-none-any.whl [--seeds 0 1 2] [--out FILE.md]

Nine speakers said the vowels "ae"; each utterance is a sequence of 12 LPC cepstrum coefficients, 7 to 29 steps
long (Kudo, Toyama & Shimbo, 1999; the UCI archive's split: 270 training and 370 test sequences).  The task is
the speaker.  Both frameworks train GRU(12, 64) → its last valid state → Dense(64, 9) on the sequences as they are
— nnkit from the list of (T_i, 12) arrays (padded per batch, the mask stopping the recurrence at each end),
PyTorch through ``pack_padded_sequence`` — from the same initial weights, Adam 3e-3, batch 16, 60 epochs, each
with its own shuffle, float32, 2 threads.  Reported per seed: test accuracy and training seconds.

``--data`` takes the aeon wheel (or any zip holding ``JapaneseVowels_TRAIN.ts``/``_TEST.ts``) or a folder with
the two files.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import zipfile

import numpy as np

import nnkit
from nnkit.tools.bench import output_file, report

MAX_BYTES = 64 * 2 ** 20  # a .ts file larger than this is refused before it is read


def parse_ts(text, name="the file"):
    """(sequences, labels) of a variable-length multivariate ``.ts`` file (the time-series classification
    archive's format): one case per data line, channels separated by ``:``, values by ``,``, the class label
    last.  Returns a list of (T_i, channels) float arrays and the labels as strings; a malformed line is a
    ValueError naming it."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip().lower() == "@data") + 1
    except StopIteration:
        raise ValueError(f"{name}: no @data line (not a .ts file)") from None
    seqs, labels = [], []
    for i, line in enumerate(lines[start:], start + 1):
        if not line.strip():
            continue
        *channels, label = line.strip().split(":")
        if not channels:
            raise ValueError(f"{name}, line {i}: expected channels separated by ':' and a class label last")
        try:
            rows = [np.array([float(v) for v in c.split(",")]) for c in channels]
        except ValueError:
            raise ValueError(f"{name}, line {i}: a value is not a number") from None
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"{name}, line {i}: the channels have different lengths {[len(r) for r in rows]}")
        if not np.all(np.isfinite(rows)):
            raise ValueError(f"{name}, line {i}: missing or infinite values")
        seqs.append(np.stack(rows, axis=1))
        labels.append(label.strip())
    if not seqs:
        raise ValueError(f"{name}: no cases after @data")
    return seqs, labels


def read_split(path, split):
    """The text of ``JapaneseVowels_<split>.ts`` in a zip (the aeon wheel) or a folder."""
    fname = f"JapaneseVowels_{split}.ts"
    if os.path.isdir(path):
        full = os.path.join(path, fname)
        if os.path.getsize(full) > MAX_BYTES:
            raise SystemExit(f"{full}: larger than {MAX_BYTES} bytes")
        with open(full, encoding="utf-8") as f:
            return f.read()
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith("/" + fname) or n == fname]
        if not names:
            raise SystemExit(f"{path}: holds no {fname} (expected aeon's wheel)")
        if z.getinfo(names[0]).file_size > MAX_BYTES:
            raise SystemExit(f"{path}: {fname} is larger than {MAX_BYTES} bytes")
        return z.read(names[0]).decode("utf-8")


def load(path):
    """(X_train, y_train, X_test, y_test): lists of (T_i, 12) float32 arrays and integer labels 0..8."""
    Xtr, ltr = parse_ts(read_split(path, "TRAIN"), "TRAIN")
    Xte, lte = parse_ts(read_split(path, "TEST"), "TEST")
    classes = sorted(set(ltr), key=lambda c: (len(c), c))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(lte) - set(index))
    if unknown:
        raise SystemExit(f"the test split has classes the training split lacks: {unknown}")
    f32 = [np.asarray(x, dtype=np.float32) for x in Xtr], [np.asarray(x, dtype=np.float32) for x in Xte]
    return f32[0], np.array([index[c] for c in ltr]), f32[1], np.array([index[c] for c in lte])


def nnkit_model(hidden, classes, seed):
    return nnkit.Sequential([nnkit.GRU(12, hidden, return_sequences=False), nnkit.Dense(hidden, classes)],
                            dtype="float32", seed=seed)


def run_nnkit(data, seed, epochs, hidden=64, lr=3e-3, batch=16):
    Xtr, ytr, Xte, yte = data
    model = nnkit_model(hidden, 9, seed)
    t0 = time.perf_counter()
    model.fit(Xtr, ytr, loss="cross_entropy", optimizer=nnkit.optim.Adam(lr), epochs=epochs, batch_size=batch,
              verbose=0)
    seconds = time.perf_counter() - t0
    return model.evaluate(Xte, yte, "cross_entropy")["accuracy"], seconds


def run_torch(data, seed, epochs, hidden=64, lr=3e-3, batch=16):
    """PyTorch's packed GRU with nnkit's initial weights for the same seed, its own shuffle."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence

    Xtr, ytr, Xte, yte = data
    start = nnkit_model(hidden, 9, seed)
    gru, dense = start.layers
    rnn, head = torch.nn.GRU(12, hidden, batch_first=True), torch.nn.Linear(hidden, 9)
    with torch.no_grad():
        for name in gru.param_names:
            getattr(rnn, name + "_l0").copy_(torch.from_numpy(np.asarray(gru.params[name])))
        head.weight.copy_(torch.from_numpy(np.asarray(dense.params["W"]).T))
        head.bias.copy_(torch.from_numpy(np.asarray(dense.params["b"])))

    def logits(seqs):
        padded, lengths = nnkit.data.pad_sequences(seqs)
        packed = pack_padded_sequence(torch.from_numpy(padded), torch.from_numpy(lengths), batch_first=True,
                                      enforce_sorted=False)
        _, h = rnn(packed)
        return head(h[0])

    opt = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=lr)
    gen = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = gen.permutation(len(Xtr))
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(logits([Xtr[i] for i in idx]), torch.from_numpy(ytr[idx]))
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        pred = logits(Xte).argmax(1).numpy()
    return float(np.mean(pred == yte)), seconds


def table(rows, seeds):
    head = "| framework | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | train s/run |"
    out = [head, "|---|" + "---:|" * (len(seeds) + 2)]
    for name, accs, secs in rows:
        out.append(f"| {name} | " + " | ".join(f"{100 * a:.1f}%" for a in accs)
                   + f" | {100 * statistics.mean(accs):.1f}% | {statistics.mean(secs):.1f} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_vowels", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="aeon's wheel, a zip or a folder with JapaneseVowels_*.ts")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=output_file, help="also write the table to this Markdown file")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    data = load(a.data)
    lengths = [len(x) for x in data[0] + data[2]]
    print(f"{len(data[0])} training and {len(data[2])} test sequences, {min(lengths)} to {max(lengths)} steps",
          file=sys.stderr)
    rows = []
    for name, fn in (("nnkit, NumPy float32 (list of sequences)", run_nnkit),
                     ("PyTorch eager, float32 (pack_padded_sequence)", run_torch)):
        accs, secs = [], []
        for seed in a.seeds:
            acc, sec = fn(data, seed, a.epochs)
            accs.append(acc)
            secs.append(sec)
            print(f"{name}, seed {seed}: {100 * acc:.1f}% in {sec:.1f} s", file=sys.stderr)
        rows.append((name, accs, secs))
    out = table(rows, a.seeds)
    report(out, a.out)
    return rows


if __name__ == "__main__":
    main()
