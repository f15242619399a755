"""Real data in, trustworthy files out: the points of the 'real data' issue, one test (or more) each."""
import io
import os
import signal
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nnkit
from nnkit.tools.cli import main
from nnkit.data.files import atomic_write


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _moons_csv(path, order=("a", "b"), label="side", n=200, seed=1, delimiter=",", sort=False, gaps=0):
    X, y = nnkit.datasets.make_moons(n_samples=n, seed=seed)
    if sort:
        idx = np.argsort(y, kind="stable")
        X, y = X[idx], y[idx]
    names = np.array(["left", "right"])[y]
    cols = {"a": X[:, 0], "b": X[:, 1]}
    rows = [delimiter.join([*order, label])]
    for i in range(n):
        cells = [f"{cols[c][i]:.6f}" for c in order]
        if gaps and i % gaps == 3:
            cells[0] = ""
        rows.append(delimiter.join(cells + [names[i]]))
    path.write_text("\n".join(rows) + "\n")
    return path


# -- 2. writes leave nothing behind, with the user's umask ---------------------------------------------
def test_files_get_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o644
        os.umask(0o077)
        q = atomic_write(tmp_path / "b.bin", lambda f: f.write(b"x"))
        assert stat.S_IMODE(os.stat(q).st_mode) == 0o600
        os.chmod(p, 0o664)  # an existing file keeps its permissions
        atomic_write(p, lambda f: f.write(b"y"))
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o664
    finally:
        os.umask(old)


def test_a_save_killed_midway_leaves_the_old_file_and_the_next_save_cleans_up(tmp_path):
    path = tmp_path / "m.npz"
    nnkit.Sequential.mlp([2, 3], seed=0).save(path)
    before = path.read_bytes()
    code = textwrap.dedent(f"""
        import os, signal, numpy as np, nnkit
        from nnkit.data import files
        def write(f):
            f.write(b"PK half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        files.atomic_write({str(path)!r}, write)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert res.returncode == -signal.SIGKILL
    assert path.read_bytes() == before  # the old file, whole
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "m.npz"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".nnkit-")
    nnkit.Sequential.mlp([2, 3], seed=1).save(tmp_path / "other.npz")  # the next save to the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "other.npz"]


# -- 3. fit checks the checkpoint folder first -----------------------------------------------------------
def test_fit_checks_the_checkpoint_path_before_the_first_epoch(tmp_path):
    X, y = np.random.default_rng(0).normal(size=(20, 2)), np.arange(20) % 2
    model = nnkit.Sequential.mlp([2, 2], seed=0)
    before = model.state_dict()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.fit(X, y, loss="cross_entropy", epochs=2, verbose=0, checkpoint=tmp_path / "no" / "m.npz")
    with pytest.raises(IsADirectoryError):
        model.fit(X, y, loss="cross_entropy", epochs=2, verbose=0, checkpoint=tmp_path)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(PermissionError, match="not writable"):
            model.fit(X, y, loss="cross_entropy", epochs=2, verbose=0, checkpoint=ro / "m.npz")
    assert model.epoch == 0 and all(np.array_equal(model.state_dict()[k], v) for k, v in before.items())


# -- 4. features matched by name ---------------------------------------------------------------------------
def test_predict_matches_columns_by_name(capsys, tmp_path):
    train = _moons_csv(tmp_path / "train.csv")
    model = tmp_path / "m.npz"
    assert run(capsys, "train", "-q", "--data", train, "--label", "side", "--hidden", "16", "--epochs", "60",
               "--lr", "0.01", "--save", model)[0] == 0
    same = _moons_csv(tmp_path / "same.csv", seed=2)
    swapped = _moons_csv(tmp_path / "swapped.csv", order=("b", "a"), seed=2)
    outs = []
    for f in (same, swapped):
        code, out, err = run(capsys, "predict", model, f, "--proba")
        assert code == 0, err
        outs.append(out)
    assert outs[0] == outs[1]
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,c,side\n1,2,left\n")
    code, _, err = run(capsys, "predict", model, wrong)
    assert code == 2 and "missing column(s) b" in err and "unknown column(s) c" in err
    # the Python path: a loaded model, raw rows, class names
    m = nnkit.load(model)
    table = nnkit.datasets.load_csv(swapped, label="side")
    labels = m.predict_labels(table)
    cli_labels = [line.split(",")[0] for line in outs[1].splitlines()[1:]]
    assert list(labels) == cli_labels
    assert np.mean(labels == np.array(table.classes)[table.y]) > 0.8


# -- 5. missing values ----------------------------------------------------------------------------------------
def test_missing_values_are_named_or_imputed_from_the_training_part(capsys, tmp_path):
    gappy = _moons_csv(tmp_path / "gappy.csv", gaps=10)
    code, _, err = run(capsys, "train", "-q", "--data", gappy, "--label", "side")
    assert code == 2 and "column 'a' has a missing value in row 5" in err and "--impute" in err
    assert "Preprocessing.fit" not in err  # the fix in the command line's words
    table = nnkit.datasets.load_csv(gappy, label="side", missing="keep")
    with pytest.raises(ValueError, match=r"impute='mean'") as info:  # and in Python's
        nnkit.Preprocessing.fit(table.X, feature_names=table.feature_names)
    assert "--impute" not in str(info.value)
    model = tmp_path / "m.npz"
    code, out, err = run(capsys, "train", "-q", "--data", gappy, "--label", "side", "--impute", "median",
                         "--hidden", "16", "--epochs", "20", "--save", model)
    assert code == 0, err
    m = nnkit.load(model)
    assert m.info["impute"] == "median" and len(m.info["fill"]) == 2
    # the fill comes from the training part only: a median of the training rows' column a
    full = nnkit.datasets.load_csv(gappy, label="side", missing="keep")
    assert np.nanmin(full.X[:, 0]) <= m.info["fill"][0] <= np.nanmax(full.X[:, 0])
    code, out, err = run(capsys, "predict", model, gappy)
    assert code == 0, err and len(out.splitlines()) == 201
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,side\n1,2,left\n3,oops,right\n")
    code, _, err = run(capsys, "train", "-q", "--data", bad, "--label", "side")
    assert code == 2 and "column 'b', row 3: 'oops' is not a number" in err


def test_imputation_matches_the_strategies():
    X = np.array([[1.0, 5.0], [np.nan, 5.0], [3.0, np.nan], [10.0, 7.0]])
    for how, fill in (("mean", [14 / 3, 17 / 3]), ("median", [3.0, 5.0]), ("most_frequent", [1.0, 5.0])):
        pre = nnkit.Preprocessing.fit(X, impute=how, scale=False)
        np.testing.assert_allclose(pre.fill, fill)
        assert not np.isnan(pre.transform(X)).any()


# -- 6. robust CSV reading -----------------------------------------------------------------------------------------
def test_csv_delimiters_quoting_and_encodings(tmp_path):
    semi = tmp_path / "semi.csv"
    semi.write_text('a;b;"the; label"\n1,5;2;"x; y"\n3;4;z\n')
    with pytest.raises(ValueError, match="'1,5' is not a number"):  # a decimal comma is not silently misread
        nnkit.datasets.load_csv(semi, label="the; label")
    semi.write_text('a;b;"the; label"\n1.5;2;"x; y"\n3;4;z\n')
    t = nnkit.datasets.load_csv(semi, label="the; label")
    assert t.feature_names == ["a", "b"] and t.classes == ["x; y", "z"]
    tab = tmp_path / "tab.tsv"
    tab.write_text("a\tb\tlabel\n1\t2\t0\n3\t4\t1\n")
    assert nnkit.datasets.load_csv(tab).X.shape == (2, 2)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("größe,b,label\n1,2,ä\n3,4,ö\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.csv: not utf-8-sig text.*--encoding"):
        nnkit.datasets.load_csv(latin)
    assert nnkit.datasets.load_csv(latin, encoding="latin-1").feature_names == ["größe", "b"]
    bom = tmp_path / "bom.csv"
    bom.write_bytes("a,b,label\n1,2,0\n3,4,1\n".encode("utf-8-sig"))
    assert nnkit.datasets.load_csv(bom).feature_names == ["a", "b"]
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"a,b\x00c\n\x00\x01\x02")
    with pytest.raises(ValueError, match="bin.csv"):
        nnkit.datasets.load_csv(binary)


# -- 8. no traceback for a user's mistake -------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["data dir", "save dir", "save unwritable", "model is csv", "model dir",
                                  "predict data dir", "out dir"])
def test_cli_mistakes_are_one_line(case, capsys, tmp_path):
    csv = _moons_csv(tmp_path / "d.csv")
    model = tmp_path / "m.npz"
    nnkit.Sequential.mlp([2, 2], seed=0).save(model)
    argv = {
        "data dir": ["train", "--data", tmp_path],
        "save dir": ["train", "--data", "xor", "--save", tmp_path],
        "save unwritable": ["train", "--data", "xor", "--save", "/proc/nnkit-model.npz"],
        "model is csv": ["predict", csv, csv],
        "model dir": ["predict", tmp_path, csv],
        "predict data dir": ["predict", model, tmp_path],
        "out dir": ["predict", model, csv, "--out", tmp_path],
    }[case]
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    assert err.startswith(f"nnkit {argv[0]}: error:") and "Traceback" not in err and err.count("\n") == 1
    assert "allow_pickle" not in err
    if case == "save unwritable":
        assert "epoch" not in out  # refused before training


# -- 9. validation split stratified; tiny data ------------------------------------------------------------------
def test_validation_split_of_a_class_sorted_file_holds_every_class(capsys, tmp_path, monkeypatch):
    sorted_csv = _moons_csv(tmp_path / "sorted.csv", sort=True)
    seen = {}
    real_fit = nnkit.Sequential.fit

    def spy(self, X, y, **kw):
        seen["val_classes"] = set(np.asarray(kw["validation_data"][1]).tolist())
        return real_fit(self, X, y, **kw)

    monkeypatch.setattr(nnkit.Sequential, "fit", spy)
    code, _, err = run(capsys, "train", "-q", "--data", sorted_csv, "--label", "side", "--epochs", "2",
                       "--validation-split", "0.2")
    assert code == 0, err
    assert seen["val_classes"] == {0, 1}
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("a,b,label\n1,2,x\n3,4,y\n5,6,z\n7,8,x\n")
    code, _, err = run(capsys, "train", "-q", "--data", tiny)
    assert code == 2 and "single row" in err


# -- 10. number checks -----------------------------------------------------------------------------------------------
def test_infinite_hyperparameters_overflowing_inputs_and_string_regularizers():
    for make in (lambda: nnkit.optim.Adam(float("inf")), lambda: nnkit.optim.SGD(0.1, weight_decay=float("inf")),
                 lambda: nnkit.optim.SGD(0.1, clip_norm=float("inf")), lambda: nnkit.optim.L2(float("inf"))):
        with pytest.raises(ValueError, match="finite"):
            make()
    model = nnkit.Sequential.mlp([2, 3], seed=0)
    big = np.array([[1e39, 0.0], [1.0, 2.0]])
    before = model.state_dict()
    for call in (lambda: model.predict(big), lambda: model.evaluate(big, [0, 1], "cross_entropy"),
                 lambda: model.fit(big, [0, 1], loss="cross_entropy", epochs=1, verbose=0)):
        with pytest.raises(ValueError, match="beyond the range of the model's float32"):
            call()
    assert all(np.array_equal(model.state_dict()[k], v) for k, v in before.items())
    assert nnkit.Sequential.mlp([2, 3], dtype="float64").predict(big).shape == (2, 3)
    with pytest.raises(TypeError, match="L2"):
        model.fit(np.ones((4, 2)), [0, 1, 2, 0], loss="cross_entropy", epochs=1, verbose=0, regularizer="l2")


# -- 11. logs stay readable ----------------------------------------------------------------------------------------
def test_no_progress_bar_when_stderr_is_not_a_terminal(monkeypatch):
    pytest.importorskip("tqdm")
    fake = io.StringIO()
    monkeypatch.setattr(sys, "stderr", fake)
    X, y = np.random.default_rng(0).normal(size=(64, 2)), np.arange(64) % 2
    nnkit.Sequential.mlp([2, 2], seed=0).fit(X, y, loss="cross_entropy", epochs=5, batch_size=8, verbose=1)
    text = fake.getvalue()
    assert "\r" not in text and text.count("\n") == 5 and text.startswith("epoch 1/5")


# -- 12. the benchmark report goes where it is told -----------------------------------------------------------------
@pytest.mark.slow
def test_report_does_not_overwrite_the_tracked_results_by_default(monkeypatch, tmp_path):
    from nnkit.tools import bench

    written = []
    empty = {"targets": [], "steps": [], "kernels": [], "sweep": [], "unavailable": {}}
    monkeypatch.setattr(bench, "run_report", lambda **kw: empty)
    monkeypatch.setattr(bench, "run_conv_report", lambda *a, **kw: {})  # the timings are not what is tested
    monkeypatch.setattr(bench, "run_epoch_report", lambda *a, **kw: [])
    monkeypatch.setattr(bench, "write_markdown", lambda results, path, *a, **kw: written.append(path))
    monkeypatch.syspath_prepend(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    monkeypatch.chdir(tmp_path)
    import runpy

    monkeypatch.setattr(sys, "argv", ["report"])
    with pytest.raises(SystemExit):
        runpy.run_module("benchmarks.report", run_name="__main__")
    assert written == ["nnkit-bench.md"]
