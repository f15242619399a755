"""nnkit.datasets: the bundled digits, the synthetic problems, the CSV/NPZ loaders, the split."""
import os

import numpy as np
import pytest

import nnkit
from nnkit import datasets

DATA = os.path.join(os.path.dirname(nnkit.__file__), "data")


def test_digits_are_bundled_small_and_attributed():
    size = os.path.getsize(os.path.join(DATA, "digits.npz"))
    assert size < 100_000
    with np.load(os.path.join(DATA, "digits.npz"), allow_pickle=False) as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape == (1797, 8, 8)
        assert f["labels"].dtype == np.uint8 and f["labels"].shape == (1797,)
    text = open(os.path.join(DATA, "DIGITS_LICENSE.md")).read()
    assert "CC BY 4.0" in text and "Alpaydin" in text
    assert "CC BY 4.0" in datasets.load_digits.__doc__


def test_load_digits_split():
    (Xtr, ytr), (Xte, yte) = datasets.load_digits()
    assert Xtr.shape == (1437, 64) and Xte.shape == (360, 64)
    assert Xtr.dtype == np.float32 and ytr.dtype == np.int64
    assert 0.0 <= Xtr.min() and Xtr.max() <= 1.0
    # stratified: every digit is in both parts, in about the same proportion
    assert sorted(set(yte.tolist())) == list(range(10))
    counts = np.bincount(yte, minlength=10) / np.bincount(np.concatenate([ytr, yte]), minlength=10)
    assert np.all(np.abs(counts - 0.2) < 0.02)
    (Xtr2, _), _ = datasets.load_digits()
    np.testing.assert_array_equal(Xtr, Xtr2)
    (Xo, _), _ = datasets.load_digits(seed=1)
    assert not np.array_equal(Xtr, Xo)
    (raw, _), _ = datasets.load_digits(scale=False, images=True)
    assert raw.shape[1:] == (8, 8) and raw.max() == 16.0 and np.all(raw == np.round(raw))


def test_digits_match_scikit_learn():
    sk = pytest.importorskip("sklearn.datasets")
    d = sk.load_digits()
    (X, y), (Xt, yt) = datasets.load_digits(scale=False, test_size=0.5)
    ours = np.concatenate([X, Xt]), np.concatenate([y, yt])
    key = lambda X, y: sorted(map(tuple, np.column_stack([X, y]).astype(int).tolist()))  # noqa: E731
    assert key(*ours) == key(d.data, d.target)


@pytest.mark.parametrize("make, k", [(datasets.make_spirals, 3), (datasets.make_moons, 2), (datasets.make_xor, 2)])
def test_synthetic(make, k):
    X, y = make(seed=3)
    assert X.ndim == 2 and X.shape[1] == 2 and X.dtype == np.float32
    assert y.dtype == np.int64 and sorted(set(y.tolist())) == list(range(k))
    X2, y2 = make(seed=3)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(X, make(seed=4)[0])


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="n_samples"):
        datasets.make_spirals(n_samples=0)
    with pytest.raises(ValueError, match="n_classes"):
        datasets.make_spirals(n_classes=1)


def test_spirals_are_learnable():
    X, y = datasets.make_spirals(n_samples=300, seed=0)
    model = nnkit.Sequential([nnkit.Dense(2, 64, init="he_uniform"), nnkit.ReLU(),
                              nnkit.Dense(64, 64, init="he_uniform"), nnkit.ReLU(), nnkit.Dense(64, 3)],
                             dtype="float64", seed=0)
    model.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.Adam(0.01), epochs=150, batch_size=32, verbose=0)
    assert model.evaluate(X, y, "cross_entropy")["accuracy"] > 0.9


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_load_csv_header_names_and_string_labels(tmp_path):
    p = _write(tmp_path / "iris.csv", "a,b,species\n1,2,setosa\n3,4,virginica\n5,6,setosa\n")
    t = datasets.load_csv(p, label="species")
    np.testing.assert_array_equal(t.X, [[1, 2], [3, 4], [5, 6]])
    assert t.y.tolist() == [0, 1, 0] and t.classes == ["setosa", "virginica"]
    assert t.feature_names == ["a", "b"] and t.label_name == "species"
    X, y = t
    assert X.dtype == np.float32 and y.dtype == np.int64


def test_load_csv_by_index_without_header(tmp_path):
    p = _write(tmp_path / "d.csv", "0,1.5,2\n1,2.5,3\n0,3.5,4\n")
    t = datasets.load_csv(p, label=0)
    assert t.y.tolist() == [0, 1, 0] and t.classes == [0, 1]
    np.testing.assert_array_equal(t.X, [[1.5, 2], [2.5, 3], [3.5, 4]])
    assert datasets.load_csv(p, label=-1).classes == [2, 3, 4]


def test_load_csv_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        datasets.load_csv(tmp_path / "missing.csv")
    p = _write(tmp_path / "d.csv", "x,y,label\n1,2,0\n3,4,1\n")
    with pytest.raises(ValueError, match="no column named 'kind'; the columns are x, y, label"):
        datasets.load_csv(p, label="kind")
    with pytest.raises(ValueError, match="out of range"):
        datasets.load_csv(p, label=7)
    bad = _write(tmp_path / "bad.csv", "x,y,label\n1,oops,0\n3,4,1\n")
    with pytest.raises(ValueError, match="feature cells must be numbers"):
        datasets.load_csv(bad)
    ragged = _write(tmp_path / "r.csv", "x,y,label\n1,2,0\n3,1\n")
    with pytest.raises(ValueError, match="row 3 has 2 cells, expected 3"):
        datasets.load_csv(ragged)
    frac = _write(tmp_path / "f.csv", "x,label\n1,0.5\n2,1.5\n")
    with pytest.raises(ValueError, match="non-integer"):
        datasets.load_csv(frac)
    assert datasets.load_csv(frac, regression=True).y.tolist() == [0.5, 1.5]
    one = _write(tmp_path / "o.csv", "x,label\n1,0\n2,0\n")
    with pytest.raises(ValueError, match="single class"):
        datasets.load_csv(one)
    nolabel = datasets.load_csv(p, label="kind", require_label=False)
    assert nolabel.y is None and nolabel.X.shape == (2, 3)


def test_load_npz(tmp_path):
    p = str(tmp_path / "d.npz")
    np.savez(p, X=np.arange(12.0).reshape(4, 3), y=np.array([3, 5, 3, 5]))
    t = datasets.load_npz(p)
    assert t.X.shape == (4, 3) and t.y.tolist() == [0, 1, 0, 1] and t.classes == [3, 5]
    with pytest.raises(ValueError, match="no label array named 'target'"):
        datasets.load_npz(p, label="target")
    np.savez(p, X=np.arange(4.0), y=np.zeros(4))
    with pytest.raises(ValueError, match="2-D numeric"):
        datasets.load_npz(p)
    open(p, "wb").write(b"not a zip")
    with pytest.raises(ValueError, match="not a readable data file"):
        datasets.load_npz(p)


def test_train_test_split_keeps_class_proportions():
    y = np.array([0] * 50 + [1] * 30 + [2] * 20)
    X = np.arange(100.0).reshape(-1, 1)
    (Xa, ya), (Xb, yb) = datasets.train_test_split(X, y, test_size=0.3, seed=0)
    assert np.bincount(yb).tolist() == [15, 9, 6]
    assert sorted(np.concatenate([Xa, Xb]).ravel().tolist()) == X.ravel().tolist()
    with pytest.raises(ValueError, match="test_size"):
        datasets.train_test_split(X, y, test_size=1.5)
    with pytest.raises(ValueError, match="same length"):
        datasets.train_test_split(X, y[:-1])
