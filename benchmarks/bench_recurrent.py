"""Recurrent kernels: the GRU forward and backward passes, and MNIST-1D's GRU baseline training step (a signal of
40 samples as 40 steps of one feature, a bidirectional GRU of hidden size 6, all 40 outputs flattened into
Dense(480, 10); Adam, batch 100) — nnkit on every CPU backend here against PyTorch's ``nn.GRU`` step.

Run:  pytest benchmarks/bench_recurrent.py --benchmark-enable
Times are reported, never asserted; CI runs each once (``--benchmark-disable``) so they cannot rot.
"""
import importlib.util

import numpy as np
import pytest

import nnkit

BATCH, STEPS, HIDDEN = 100, 40, 6
BACKENDS = ["numpy"] + (["torch"] if importlib.util.find_spec("torch") else [])


def gru_base(backend):
    return nnkit.Sequential([nnkit.Reshape((STEPS, 1)), nnkit.GRU(1, HIDDEN, bidirectional=True), nnkit.Flatten(),
                             nnkit.Dense(STEPS * 2 * HIDDEN, 10)], backend=backend, seed=0)


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((BATCH, STEPS)).astype(np.float32), rng.integers(0, 10, BATCH)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel", ["gru_forward", "gru_backward", "gru_forward_masked", "gru_backward_masked",
                                    "train_step"])
def test_gru_kernels(benchmark, backend, kernel):
    X, y = _data()
    model = gru_base(backend)
    loss, opt = nnkit.CrossEntropy(), nnkit.optim.Adam(1e-2)
    Xd, Td = nnkit.data.as_input(model, X), nnkit.data.as_target(model, y, BATCH, loss)
    gru = model.layers[1]
    seq = model.xp.reshape(Xd, (BATCH, STEPS, 1))
    dY = model.xp.ones((BATCH, STEPS, 2 * HIDDEN), dtype=model.backend.dtype, device=model.backend.device)
    lengths = np.random.default_rng(1).integers(1, STEPS + 1, BATCH)  # variable lengths: the padding mask
    mask = nnkit.data.mask_of(model, lengths, STEPS)
    gru.forward(seq, train=True, mask=mask if kernel.endswith("_masked") else None)
    fns = {"gru_forward": lambda: gru.forward(seq, train=True),
           "gru_backward": lambda: gru.backward(dY, need_dX=False),
           "gru_forward_masked": lambda: gru.forward(seq, train=True, mask=mask),
           "gru_backward_masked": lambda: gru.backward(dY, need_dX=False),
           "train_step": lambda: model.train_step(Xd, Td, loss, opt, check_input=False)}
    benchmark(fns[kernel])


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_torch_gru_base_step(benchmark):
    import torch

    X, y = _data()

    class GRUBase(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(1, HIDDEN, batch_first=True, bidirectional=True)
            self.out = torch.nn.Linear(STEPS * 2 * HIDDEN, 10)

        def forward(self, x):
            return self.out(self.gru(x.reshape(-1, STEPS, 1))[0].reshape(x.shape[0], -1))

    net = GRUBase()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()

    benchmark(step)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_run_char_lm_runs(tmp_path):
    """``python -m benchmarks.run_char_lm`` end to end on a small text (so the script cannot rot)."""
    from benchmarks import run_char_lm

    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 40)
    r = run_char_lm.main(["--data", str(text), "--steps", "3", "--out", str(tmp_path / "t.md")])
    assert np.isfinite(r["val_nnkit"]) and abs(r["val_nnkit"] - r["val_torch"]) < 1e-3
    assert "| nnkit, NumPy float32 |" in (tmp_path / "t.md").read_text()


def _ts(cases):
    head = "#made here\n@problemName JapaneseVowels\n@univariate false\n@dimensions 12\n@equalLength false\n@data\n"
    return head + "".join(":".join(",".join(f"{v:.3f}" for v in col) for col in x.T) + f":{c}\n" for x, c in cases)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_run_vowels_runs(tmp_path):
    """``python -m benchmarks.run_vowels`` end to end on a small folder of variable-length .ts files."""
    from benchmarks import run_vowels

    rng = np.random.default_rng(0)
    for split, n in (("TRAIN", 18), ("TEST", 9)):
        cases = [(rng.normal(size=(int(rng.integers(3, 9)), 12)) + c, str(c + 1)) for c in np.arange(n) % 9]
        (tmp_path / f"JapaneseVowels_{split}.ts").write_text(_ts(cases))
    rows = run_vowels.main(["--data", str(tmp_path), "--seeds", "0", "--epochs", "2", "--out", str(tmp_path / "t.md")])
    assert [len(accs) for _, accs, _ in rows] == [1, 1]
    assert "pack_padded_sequence" in (tmp_path / "t.md").read_text()


@pytest.mark.parametrize("text, words", [
    ("1,2:3,4:a\n", "no @data line"),
    ("@data\n1,2:3:a\n", "different lengths"),
    ("@data\n1,x:3,4:a\n", "not a number"),
    ("@data\n1,NaN:3,4:a\n", "missing or infinite"),
    ("@data\n\n", "no cases"),
])
def test_a_malformed_ts_file_is_named(text, words):
    from benchmarks import run_vowels

    with pytest.raises(ValueError, match=words):
        run_vowels.parse_ts(text, "f.ts")
