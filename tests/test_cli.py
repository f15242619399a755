"""The command line: nnkit train / predict / bench, python -m nnkit, and its error messages."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import nnkit
import nnkit.tools.bench
from nnkit.tools.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_defaults_reach_97_percent_on_digits(capsys):
    code, out, err = run(capsys, "train", "--quiet")
    assert code == 0, err
    acc = float(re.search(r"test accuracy: ([\d.]+)%", out).group(1))
    assert acc >= 97.0, out


def test_train_save_then_predict_csv(capsys, tmp_path):
    model_path = str(tmp_path / "model.npz")
    code, out, err = run(capsys, "train", "--quiet", "--epochs", "10", "--save", model_path)
    assert code == 0, err
    model = nnkit.load(model_path)
    assert model.info["classes"] == list(range(10)) and len(model.info["mean"]) == 64
    # a CSV of the test digits with their label column; predict must drop it and score against it
    _, (Xte, yte) = nnkit.datasets.load_digits()
    csv = tmp_path / "digits.csv"
    rows = ["," .join([f"p{i}" for i in range(64)] + ["label"])]
    rows += [",".join([f"{v:g}" for v in x] + [str(c)]) for x, c in zip(Xte, yte)]
    csv.write_text("\n".join(rows) + "\n")
    pred = tmp_path / "pred.csv"
    code, out, err = run(capsys, "predict", model_path, str(csv), "--out", str(pred), "--proba")
    assert code == 0, err
    lines = pred.read_text().splitlines()
    assert lines[0].split(",")[:2] == ["prediction", "p_0"] and len(lines) == 1 + len(yte)
    predicted = np.array([int(l.split(",")[0]) for l in lines[1:]])
    assert np.mean(predicted == yte) > 0.9
    assert "accuracy against the file's 'label' column" in err
    # the same file without its label column, to standard output
    no_label = tmp_path / "nolabel.csv"
    no_label.write_text("\n".join(",".join(r.split(",")[:64]) for r in rows) + "\n")
    code, out, err = run(capsys, "predict", model_path, str(no_label))
    assert code == 0, err
    assert out.splitlines()[0] == "prediction" and len(out.splitlines()) == 1 + len(yte)


def test_train_on_own_csv_with_named_label_and_string_classes(capsys, tmp_path):
    X, y = nnkit.datasets.make_moons(n_samples=300, seed=1)
    names = np.array(["left", "right"])[y]
    p = tmp_path / "moons.csv"
    p.write_text("a,b,side\n" + "\n".join(f"{a},{b},{c}" for (a, b), c in zip(X, names)) + "\n")
    code, out, err = run(capsys, "train", "--quiet", "--data", str(p), "--label", "side", "--hidden", "32",
                         "--epochs", "60", "--lr", "0.01", "--early-stopping", "20", "--validation-split", "0.2")
    assert code == 0, err
    assert float(re.search(r"test accuracy: ([\d.]+)%", out).group(1)) > 90


def test_train_regression(capsys, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=400)
    p = tmp_path / "r.npz"
    np.savez(p, X=X, y=y)
    code, out, err = run(capsys, "train", "-q", "--data", str(p), "--task", "regression", "--hidden", "16",
                         "--epochs", "80", "--lr", "0.01")
    assert code == 0, err
    assert float(re.search(r"test MSE: ([\d.e-]+)", out).group(1)) < 0.1


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "nowhere.csv"], "no such file"),
    (["train", "--backend", "cupy"], "cupy"),
    (["train", "--backend", "tensorflow"], "unknown backend 'tensorflow'"),
    (["train", "--epochs", "0"], "--epochs must be a positive integer"),
    (["train", "--early-stopping", "3", "--validation-split", "0"], "validation"),
    (["train", "--save", "/no/such/folder/m.npz"], "does not exist"),
    (["predict", "missing.npz", "x.csv"], "no such model file"),
])
def test_errors_are_one_line_and_exit_2(capsys, argv, message):
    if argv[-1] == "cupy" and nnkit.tools.bench.why_unavailable("cupy") is None:
        pytest.skip("cupy is usable here")
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.startswith(f"nnkit {argv[0]}: error:")


def test_bad_label_column(capsys, tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("x,y,label\n1,2,0\n3,4,1\n")
    code, _, err = run(capsys, "train", "--data", str(p), "--label", "kind")
    assert code == 2 and "no column named 'kind'; the columns are x, y, label" in err


def test_predict_wrong_width(capsys, tmp_path):
    m = tmp_path / "m.npz"
    assert run(capsys, "train", "-q", "--data", "xor", "--epochs", "2", "--save", str(m))[0] == 0
    p = tmp_path / "d.csv"
    p.write_text("1,2,3\n4,5,6\n")
    code, _, err = run(capsys, "predict", str(m), str(p))
    assert code == 2 and "3 feature columns, but the model expects 2" in err


def test_plot_without_matplotlib_says_how_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code, _, err = run(capsys, "train", "--plot", "c.png")
    assert code == 2 and "pip install 'nnkit[plot]'" in err


def test_plot_writes_png(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    code, _, err = run(capsys, "train", "-q", "--data", "spirals", "--epochs", "3", "--plot", str(png))
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_bench_writes_a_report(capsys, tmp_path):
    out = tmp_path / "bench.md"
    code, _, err = run(capsys, "bench", "--quick", "--no-sweep", "--targets", "numpy", "--shapes", "S",
                       "--dtypes", "float32", "--out", str(out))
    assert code == 0, err
    text = out.read_text()
    assert "| S 64-128-64-10 ×64 | float32 | numpy |" in text and "BLAS" in text
    row = next(line for line in text.splitlines() if line.startswith("| S 64-128-64-10 ×64 | float32 | numpy |"))
    assert re.search(r"\| [\d.]+ ms( ⚠)? \| [\d.]+ ms–[\d.]+ ms \|", row), row  # each figure with its spread


def test_bench_figures_carry_their_spread_and_doubtful_ones_are_flagged():
    from nnkit.tools.bench import Timing, doubtful, measure

    calls = []
    t = measure({"f": lambda: calls.append(1)}, seconds=0.01)["f"]
    assert isinstance(t, Timing) and t.lo <= t <= t.hi and len(calls) > 10
    assert doubtful(Timing(1.0, 0.95, 1.05), 0.5) is None
    assert doubtful(Timing(1.0, 0.6, 1.4), 0.5) == "spread 80%"
    assert doubtful(Timing(0.4, 0.39, 0.41), 0.5) == "below its floor (0.80×)"


def test_bench_measures_a_doubtful_group_once_more_and_keeps_the_second_figures(monkeypatch):
    from nnkit.tools import bench
    from nnkit.tools.bench import Timing

    rounds, said = [], []

    def fake(groups, *a):
        rounds.append(sorted(groups))
        figures = {"a|step": Timing(1.0, 0.5, 1.6) if len(rounds) == 1 else Timing(1.1, 1.0, 1.2),  # 110 %, 18 %
                   "a|floor": Timing(0.5, 0.49, 0.51), "b|step": Timing(0.2, 0.19, 0.21),
                   "b|floor": Timing(0.3, 0.29, 0.31), "c|step": Timing(0.1, 0.1, 0.1)}
        return {k: v for k, v in figures.items() if k.split("|")[0] in groups}

    monkeypatch.setattr(bench, "_measure", fake)
    groups = {"a": {"a|step": None, "a|floor": None}, "b": {"b|step": None, "b|floor": None},
              "c": {"c|step": None}}
    times = bench.measure(groups, floors={"a|step": "a|floor", "b|step": "b|floor"}, log=said.append)
    assert rounds[1] == ["a", "b"]  # a: its spread; b: below its floor; c: nothing doubtful — once more each
    assert times["a|step"] == 1.1 and len(rounds) == 2
    assert "a (step: spread 110%)" in said[0] and "b (step: below its floor (0.67×))" in said[0]


def test_every_bench_table_shows_each_figure_with_its_spread(tmp_path):
    from nnkit.tools.bench import Timing, epoch_markdown, write_markdown

    t = Timing(0.002, 0.0019, 0.0021)
    wild = Timing(0.002, 0.001, 0.003)
    results = {"kernels": [{"target": "numpy", "dense_forward": t, "dense_backward": wild}],
               "conv": [{"shape": "CIFAR", "target": "numpy", "forward": t, "backward": t, "floor": Timing(0.005),
                         "peer": None}],
               "cnn": [{"target": "numpy", "step": t, "peer": None}],
               "sweep": [{"target": "numpy", "kernel": "train_step", "batch": 64, "seconds": t}]}
    write_markdown(results, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "| numpy | 2.000 ms (1.900 ms–2.100 ms) | 2.000 ms (1.000 ms–3.000 ms) ⚠ |" in text  # kernels
    assert "| CIFAR | numpy | 2.000 ms (1.900 ms–2.100 ms) | 2.000 ms (1.900 ms–2.100 ms) | 5.000 ms | 0.80 ⚠ below " \
        "its floor |" in text
    assert "| numpy | 2.000 ms (1.900 ms–2.100 ms) | — |" in text  # the CNN step
    assert "| numpy | train_step | 32,000 (30,476–33,684) |" in text  # the sweep's samples/s
    rows = epoch_markdown([{"what": "GEMM floor (NumPy)", "step": Timing(1e-4, 0.9e-4, 1.1e-4)},
                           {"what": "nnkit fit", "step": Timing(2e-4, 1e-4, 3e-4)}])
    assert "| nnkit fit | 200.0 | 100.0–300.0 ⚠ | 2.00 | — |" in rows


@pytest.mark.parametrize("stop", ["Ctrl-C", "SIGTERM"])
def test_a_stopped_bench_keeps_the_rows_it_measured(stop, capsys, tmp_path, monkeypatch):
    import signal
    from nnkit.tools import bench
    from nnkit.tools.bench import Timing

    row = {"shape": "S", "dtype": "float32", "target": "numpy", "batch": 64, "sizes": [64, 128, 64, 10],
           "step": Timing(0.001, 0.00095, 0.00105), "floor": Timing(0.0005), "tight": Timing(0.0004), "peer": None,
           "peer_name": None, "flops": 1e6}

    def run_report(progress=None, **kw):
        progress({"targets": ["numpy"], "steps": [row], "kernels": [], "sweep": [], "unavailable": {},
                  "skipped": {}})
        if stop == "SIGTERM":
            os.kill(os.getpid(), signal.SIGTERM)
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_report", run_report)
    out = tmp_path / "b.md"
    code = main(["bench", "--quick", "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == (143 if stop == "SIGTERM" else 130)
    assert f"stopped ({stop})" in err
    text = out.read_text()
    assert f"Stopped ({stop}) before the run ended" in text and "| S 64-128-64-10 ×64 | float32 | numpy |" in text
    assert signal.getsignal(signal.SIGTERM) is not None  # the handler of before is back


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf", "1e9", "fast"])
def test_bench_refuses_bad_seconds(capsys, bad):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--quick", "--seconds", bad])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --seconds: expected" in err and repr(bad) in err


@pytest.mark.parametrize("flag", ["--out", "--plot"])
def test_bench_refuses_an_output_it_cannot_write_before_timing(capsys, tmp_path, flag):
    for bad, says in ((tmp_path / "missing" / "r.md", "does not exist"), (tmp_path, "is a directory")):
        with pytest.raises(SystemExit) as exit_:
            main(["bench", "--quick", flag, str(bad)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and f"argument {flag}:" in err and says in err


@pytest.mark.parametrize("script,args,says", [
    ("run_step_budget", ["--out", "{tmp}"], "is a directory"),
    ("run_epoch", ["--out", "{tmp}"], "is a directory"),
    ("run_epoch", ["--seconds", "0"], "argument --seconds"),
    ("run_mnist1d", ["--out", "{missing}"], "does not exist"),
    ("run_mnist1d", ["--epochs", "0"], "argument --epochs: expected a number of epochs in [1, 100000]"),
    ("run_mnist1d", ["--seeds", "0", "-3"], "argument --seeds: expected a seed"),
    ("run_mnist1d", ["--backend", "nope"], "unknown backend 'nope'"),
    ("run_mnist1d", ["--precisions", "mixed_bfloat16"], "backend 'numpy' cannot"),
    ("run_stream", ["--gb", "nan"], "argument --gb: expected a size in GB in (0, 1024]"),
    ("run_stream", ["--gb", "1024"], "free in"),
    ("run_stream", ["--backends", "numpy", "nope"], "--backends nope: unknown backend"),
    ("run_stream", ["--out", "{missing}"], "does not exist"),
    ("run_peer", ["--runs", "0"], "argument --runs: expected --runs in [1, 100]"),
    ("run_peer", ["--out", "{tmp}"], "is a directory"),
])
def test_benchmark_scripts_refuse_bad_arguments_before_any_work(capsys, tmp_path, monkeypatch, script, args, says):
    import importlib

    monkeypatch.syspath_prepend(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if script == "run_stream":  # a disk far smaller than 1 TB, whatever this machine has
        import shutil

        monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**11, 10**11 - 10**9, 10**9))
    mod = importlib.import_module(f"benchmarks.{script}")
    argv = [a.format(missing=tmp_path / "missing" / "t.md", tmp=tmp_path) for a in args]
    with pytest.raises(SystemExit) as exit_:
        mod.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and says in err, err


def test_run_peer_times_the_torch_step_against_pytorchs(capsys, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.syspath_prepend(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import run_peer

    out = tmp_path / "peer.md"
    run_peer.main(["--shape", "S", "--rounds", "3", "--runs", "2", "--out", str(out)])
    text = out.read_text()
    assert text == capsys.readouterr().out
    assert text.count("\n| 1 |") == 1 and "\n| 2 |" in text and "median ratio over 2 runs:" in text


def test_python_dash_m_help():
    res = subprocess.run([sys.executable, "-m", "nnkit", "train", "--help"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(nnkit.__file__)))
    assert res.returncode == 0
    assert "--hidden" in res.stdout and "--backend" in res.stdout and "examples:" in res.stdout


def test_text_progress_bar_without_tqdm(monkeypatch, capsys):
    """Without tqdm (the core install) a terminal still gets a progress bar."""
    import io

    from nnkit.training import loop as training

    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    fake = io.StringIO()
    fake.isatty = lambda: True
    monkeypatch.setattr(sys, "stderr", fake)
    bar = training._Progress(1, n_batches=4, epochs=2)
    for epoch in range(2):
        bar.start(epoch)
        for _ in range(4):
            bar.step()
        bar.end(epoch, {"loss": 0.5 / (epoch + 1), "time": 0.1})
    bar.close()
    text = fake.getvalue()
    assert "epoch 2/2 [" + "#" * 30 + "] 8/8  loss=0.25" in text and text.endswith("\n")


def test_version_and_help_list_every_command(capsys):
    import nnkit

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"nnkit {nnkit.__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("train", "predict", "data", "explain", "export", "bench"):
        assert command in out


def test_train_a_language_model_then_generate(capsys, tmp_path):
    """nnkit train --task lm on a text file (a tiny GPT, a few steps), then nnkit generate from the saved model:
    the validation loss reported, the text reproducible from its seed, an unknown character named."""
    corpus = tmp_path / "plays.txt"
    corpus.write_text(("ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east.\n\n" * 30))
    model_path = tmp_path / "gpt.npz"
    code, out, err = run(capsys, "train", "--data", str(corpus), "--task", "lm", "--block-size", "16",
                         "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--epochs", "2",
                         "--steps-per-epoch", "10", "--warmup", "4", "--batch-size", "4", "--save", str(model_path),
                         "--quiet")
    assert code == 0, err
    val = float(re.search(r"validation loss ([\d.]+) nats/char after 20 steps", out).group(1))
    assert 0 < val < np.log(30)
    model = nnkit.load(model_path)
    assert model.tokenizer is not None and model.layers[1].max_len == 16
    code, out, err = run(capsys, "generate", str(model_path), "--prompt", "ROMEO", "--tokens", "30", "--seed", "1")
    assert code == 0, err
    assert out.startswith("ROMEO") and len(out.rstrip("\n")) == 35
    again = run(capsys, "generate", str(model_path), "--prompt", "ROMEO", "--tokens", "30", "--seed", "1")[1]
    assert again == out
    code, out, err = run(capsys, "generate", str(model_path), "--prompt", "ROMEZ", "--tokens", "5")
    assert code == 2 and "'Z'" in err and "position 4" in err
    code, _, err = run(capsys, "generate", str(model_path), "--prompt", "", "--tokens", "5")
    assert code == 2 and "empty" in err
    code, _, err = run(capsys, "train", "--data", str(corpus), "--task", "lm", "--n-embd", "30", "--n-head", "4")
    assert code == 2 and "multiple of --n-head" in err
    code, _, err = run(capsys, "train", "--quiet", "--epochs", "1", "--save", str(tmp_path / "mlp.npz"))
    code, _, err = run(capsys, "generate", str(tmp_path / "mlp.npz"))
    assert code == 2 and "not a language model" in err


def test_train_schedule_save_best_log_dir_and_defaults_in_help(capsys, tmp_path, monkeypatch):
    import importlib.util

    log = tmp_path / "logs"
    best = tmp_path / "best.npz"
    code, out, err = run(capsys, "train", "--data", "spirals", "--epochs", "6", "--validation-split", "0.2",
                         "--schedule", "cosine", "--warmup-epochs", "2", "--save", str(best), "--save-best",
                         "--log-dir", str(log), "--quiet")
    assert code == 0, err
    assert "kept the best epoch by val_loss" in out and best.exists()
    rows = (log / "metrics.csv").read_text().splitlines()
    assert len(rows) == 7 and "lr" in rows[0]
    lrs = [float(r.split(",")[rows[0].split(",").index("lr")]) for r in rows[1:]]
    assert lrs[0] < lrs[1] and lrs[-1] < lrs[1]  # warm-up, then the cosine decay
    # tensorboardX missing: the CSV is still written and the run goes on (checked before any work)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboardX" else real(name, *a))
    code, out, err = run(capsys, "train", "--data", "xor", "--epochs", "2", "--log-dir", str(tmp_path / "l2"), "--quiet")
    assert code == 0 and "tensorboardX" in err and (tmp_path / "l2" / "metrics.csv").exists()
    code, _, err = run(capsys, "train", "--save-best", "--quiet")
    assert code == 2 and "give --save" in err
    code, _, err = run(capsys, "train", "--save", str(best), "--save-best", "--quiet")
    assert code == 2 and "--validation-split" in err
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    assert "(default: 60)" in help_text and "(default: adam)" in help_text


def test_predict_names_an_unknown_class_and_can_skip_it(capsys, tmp_path):
    rng = np.random.default_rng(0)
    rows = ["a,b,label"] + [f"{x:.3f},{y:.3f},{'big' if x + y > 0 else 'small'}" for x, y in rng.normal(size=(80, 2))]
    train = tmp_path / "train.csv"
    train.write_text("\n".join(rows) + "\n")
    model = tmp_path / "m.npz"
    assert run(capsys, "train", "--data", str(train), "--epochs", "5", "--save", str(model), "--quiet")[0] == 0
    new = tmp_path / "new.csv"
    new.write_text("a,b,label\n1,1,big\n-1,-1,small\n0.5,0.5,huge\n")
    code, out, err = run(capsys, "predict", str(model), str(new))
    assert code == 2 and "'huge' in row 3" in err and "--skip-unknown" in err
    code, out, err = run(capsys, "predict", str(model), str(new), "--skip-unknown")
    assert code == 0 and "1 row(s) not scored" in err and "huge" in err and "accuracy" in err
    # a model saved from the Python API, its label column named: predict drops it by that name
    X = rng.normal(size=(80, 2))
    y = np.where(X.sum(axis=1) > 0, "big", "small")
    api = nnkit.Sequential.mlp([2, 8, 2], seed=0)
    api.preprocessing = nnkit.Preprocessing.fit(X, feature_names=["a", "b"], classes=["big", "small"],
                                                label="diagnosis")
    api.fit(X, y, loss="cross_entropy", epochs=3, verbose=0)
    api.save(tmp_path / "api.npz")
    named = tmp_path / "named.csv"
    named.write_text("a,b,diagnosis\n1,1,big\n-1,-1,small\n")
    code, out, err = run(capsys, "predict", str(tmp_path / "api.npz"), str(named))
    assert code == 0, err
    plain = nnkit.Sequential.mlp([2, 8, 2], seed=0)
    plain.save(tmp_path / "plain.npz")
    code, out, err = run(capsys, "predict", str(tmp_path / "plain.npz"), str(named))
    assert code == 2 and "--label" in err


@pytest.mark.slow
def test_bench_epoch_report_times_every_row_it_lists():
    """The small network's epoch report (left out of ``nnkit bench --quick``): each row timed, the table written."""
    from nnkit.tools.bench import epoch_markdown, run_epoch_report

    rows = run_epoch_report(seconds=0.01, log=lambda *a: None)
    assert rows and all(r["step"] > 0 for r in rows)
    table = "\n".join(epoch_markdown(rows))
    assert all(r["what"] in table for r in rows)
