"""Text columns in tables: read as categories, encoded one-hot by the model's preprocessing, by every door —
Python, ``nnkit train``/``predict``, a saved model and the exported ONNX graph."""
import numpy as np
import pytest

import nnkit
from nnkit.data.preprocessing import MissingValueError, UnknownCategoryError
from nnkit.tools.cli import main

REGIONS = ("north", "south", "east")


def _homes(path, n=240, seed=0, extra=None):
    """size, region (text), rooms, label: the label depends on the region, so the category has to be read."""
    rng = np.random.default_rng(seed)
    rows = ["size,region,rooms,label"]
    for i in range(n):
        region = REGIONS[int(rng.integers(3))]
        size = rng.normal(100, 20)
        label = "dear" if (size > 100) ^ (region == "south") else "cheap"
        rows.append(f"{size:.3f},{region},{int(rng.integers(1, 6))},{label}")
    rows += extra or []
    path.write_text("\n".join(rows) + "\n")
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_column_of_text_is_read_as_categories_and_a_mixed_one_is_an_error(tmp_path):
    t = nnkit.datasets.load_csv(_homes(tmp_path / "h.csv", n=5))
    assert t.X.dtype == object and t.feature_names == ["size", "region", "rooms"]
    assert all(isinstance(v, str) for v in t.X[:, 1]) and all(isinstance(v, float) for v in t.X[:, 0])
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("a,b,label\n1,south,0\n2,3,1\n")
    with pytest.raises(ValueError, match=r"column 'b', row 2: 'south' is not a number.*categorical=\['b'\]"):
        nnkit.datasets.load_csv(mixed)
    t = nnkit.datasets.load_csv(mixed, categorical=["b"])  # named: kept as text, "3" stays "3"
    assert list(t.X[:, 1]) == ["south", "3"]
    codes = tmp_path / "codes.csv"
    codes.write_text("a,zip,label\n1,101,0\n2,202,1\n3,101,0\n")
    assert nnkit.datasets.load_csv(codes).X.dtype != object  # numbers stay numbers unless named
    t = nnkit.datasets.load_csv(codes, categorical=[1])
    pre = nnkit.Preprocessing.fit(t)
    assert pre.categories == [None, ["101", "202"]] and pre.classes == [0, 1] and pre.label == "label"
    gap = tmp_path / "gap.csv"
    gap.write_text("a,region,label\n1,south,0\n2,,1\n3,north,0\n")
    with pytest.raises(ValueError, match=r"column 'region' has a missing value in row 3"):
        nnkit.datasets.load_csv(gap)
    assert nnkit.datasets.load_csv(gap, missing="keep").X[1, 1] is None


def test_one_hot_values_names_and_order():
    X = np.array([[1.0, "south", 3.0], [2.0, "north", 5.0], [3.0, "south", 1.0], [4.0, "east", 3.0]], dtype=object)
    pre = nnkit.Preprocessing.fit(X, feature_names=["a", "region", "b"], scale=False)
    assert pre.text_columns == [1] and pre.n_columns == 3 and pre.n_features == 5
    assert pre.encoded_names() == ["a", "b", "region=east", "region=north", "region=south"]
    np.testing.assert_array_equal(pre.transform(X), [[1, 3, 0, 0, 1], [2, 5, 0, 1, 0], [3, 1, 0, 0, 1],
                                                     [4, 3, 1, 0, 0]])
    scaled = nnkit.Preprocessing.fit(X, feature_names=["a", "region", "b"]).transform(X)
    num = np.array([[1, 3], [2, 5], [3, 1], [4, 3]], dtype=float)
    np.testing.assert_allclose(scaled[:, :2], (num - num.mean(0)) / num.std(0))  # the numbers scaled ...
    np.testing.assert_array_equal(scaled[:, 2:], pre.transform(X)[:, 2:])  # ... the one-hot block not


def test_an_unseen_category_is_named_with_its_row_or_ignored_and_a_missing_one_imputed():
    X = np.array([[1.0, "a"], [2.0, "b"], [3.0, "b"]], dtype=object)
    pre = nnkit.Preprocessing.fit(X, feature_names=["x", "kind"])
    new = np.array([[1.0, "b"], [2.0, "zebra"]], dtype=object)
    with pytest.raises(UnknownCategoryError, match=r"column 'kind', row 2: 'zebra' is not a category seen in "
                                                   r"training \(a, b\).*handle_unknown='ignore'") as info:
        pre.transform(new)
    assert (info.value.row, info.value.value) == (1, "zebra")
    ignore = nnkit.Preprocessing.fit(X, feature_names=["x", "kind"], handle_unknown="ignore")
    np.testing.assert_array_equal(ignore.transform(new)[:, 1:], [[0, 1], [0, 0]])
    gap = np.array([[1.0, None], [2.0, "a"]], dtype=object)
    with pytest.raises(MissingValueError, match="column 'kind' has a missing value in row 1"):
        pre.transform(gap)
    imputing = nnkit.Preprocessing.fit(X, feature_names=["x", "kind"], impute="most_frequent")
    assert imputing.category_fill == [None, "b"]
    np.testing.assert_array_equal(imputing.transform(gap)[:, 1:], [[0, 1], [1, 0]])


def test_an_identifier_column_and_bad_arguments_are_refused():
    ids = np.array([[float(i), f"user{i}"] for i in range(50)], dtype=object)
    with pytest.raises(ValueError, match=r"'id' holds 50 distinct values, more than max_categories=20"):
        nnkit.Preprocessing.fit(ids, feature_names=["x", "id"], max_categories=20)
    with pytest.raises(ValueError, match="handle_unknown must be 'error' or 'ignore'"):
        nnkit.Preprocessing.fit(ids, handle_unknown="skip")
    with pytest.raises(ValueError, match=r"categorical: no column 'nope'"):
        nnkit.Preprocessing.fit(ids, feature_names=["x", "id"], categorical=["nope"])
    with pytest.raises(ValueError, match=r"column 'x', row 2: 'oops' is not a number"):
        nnkit.Preprocessing.fit(np.array([[1.0, "a"], ["oops", "b"]], dtype=object), feature_names=["x", "id"])
    with pytest.raises(ValueError, match="damaged"):
        nnkit.Preprocessing.from_info({"feature_names": ["a"], "categories": [["x", "x"]]})
    with pytest.raises(ValueError, match="damaged"):
        nnkit.Preprocessing.from_info({"feature_names": ["a"], "categories": [[1, 2]]})


def test_every_door_of_a_model_takes_the_raw_rows(tmp_path):
    t = nnkit.datasets.load_csv(_homes(tmp_path / "h.csv"))
    pre = nnkit.Preprocessing.fit(t)
    model = nnkit.Sequential.mlp([pre.n_features, 16, 2], seed=0)
    model.preprocessing = pre
    before = model.predict(t.X)
    model.fit(t.X, t.y, loss="cross_entropy", optimizer=nnkit.optim.Adam(0.02), epochs=60, verbose=0)
    assert not np.allclose(model.predict(t.X), before)
    assert model.evaluate(t.X, t.y, loss="cross_entropy")["accuracy"] > 0.9  # the region is read
    assert set(model.predict_labels(t)) <= {"cheap", "dear"}
    plain_twin = nnkit.Sequential.mlp([pre.n_features, 16, 2], seed=0)
    plain_twin.load_state_dict(model.state_dict())  # the same network fed the encoded rows by hand
    np.testing.assert_allclose(model.predict(t.X), plain_twin.predict(pre.transform(t.X)), rtol=1e-6)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = nnkit.load(path)
    assert loaded.preprocessing.categories == pre.categories
    np.testing.assert_array_equal(loaded.predict(t.X), model.predict(t.X))
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"rooms": t.X[:, 2].astype(float), "region": t.X[:, 1], "size": t.X[:, 0].astype(float)})
    np.testing.assert_allclose(model.predict(frame), model.predict(t.X), rtol=1e-6)  # columns matched by name
    plain = nnkit.Sequential.mlp([3, 4, 2])
    with pytest.raises(TypeError, match="text columns goes through a preprocessing"):
        plain.fit(t.X, t.y, loss="cross_entropy", epochs=1)
    with pytest.raises(UnknownCategoryError, match="'0.0' is not a category"):  # numbers where text was
        model.predict(np.zeros((2, 3)))
    strict = nnkit.load(path, backend="array_api_strict")  # an array of the backend holds no text
    with pytest.raises(TypeError, match="raw rows on the host"):
        strict.predict(strict.backend.asarray(np.zeros((2, 3))))
    np.testing.assert_allclose(strict.backend.to_numpy(strict.predict(t.X)), model.predict(t.X), rtol=1e-6)


def test_nnkit_train_and_predict_with_a_text_column(capsys, tmp_path):
    data = _homes(tmp_path / "h.csv")
    model = tmp_path / "m.npz"
    code, out, err = run(capsys, "train", "--data", data, "--hidden", "16", "--epochs", "60",
                         "--save", model)
    assert code == 0, err
    assert "1 of text: 5 inputs one-hot" in out
    new = tmp_path / "new.csv"
    new.write_text("size,region,rooms\n120,south,2\n90,north,3\n80,west,1\n")
    code, _, err = run(capsys, "predict", model, new)
    assert code == 2 and "column 'region', row 4: 'west' is not a category seen in training (east, north, south)" \
        in err and "--handle-unknown ignore" in err
    new.write_text("size,region,rooms\n120,south,2\n90,north,3\n")
    code, out, err = run(capsys, "predict", model, new)
    assert code == 0, err
    assert out.splitlines()[1:] == list(nnkit.load(model).predict_labels(nnkit.datasets.load_csv(new, label=None)))
    ignoring = tmp_path / "i.npz"
    code, _, err = run(capsys, "train", "-q", "--data", data, "--epochs", "2", "--handle-unknown", "ignore",
                       "--save", ignoring)
    assert code == 0, err
    new.write_text("size,region,rooms\n80,west,1\n")
    code, out, err = run(capsys, "predict", ignoring, new)
    assert code == 0 and len(out.splitlines()) == 2, err
    codes = tmp_path / "codes.csv"
    codes.write_text("a,zip,label\n" + "".join(f"{i},{100 + i % 3},{i % 2}\n" for i in range(40)))
    code, out, err = run(capsys, "train", "--data", codes, "--epochs", "2", "--categorical", "zip")
    assert code == 0 and "1 of text: 4 inputs one-hot" in out, err


def test_the_onnx_graph_encodes_the_text_columns(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    t = nnkit.datasets.load_csv(_homes(tmp_path / "h.csv", n=40))
    for unknown in ("error", "ignore"):
        pre = nnkit.Preprocessing.fit(t, handle_unknown=unknown)
        model = nnkit.Sequential.mlp([pre.n_features, 8, 2], seed=1)
        model.preprocessing = pre
        path = tmp_path / f"{unknown}.onnx"
        model.export(path)
        sess = ort.InferenceSession(str(path))
        assert [(i.name, i.type) for i in sess.get_inputs()] == [("input", "tensor(float)"),
                                                                  ("region", "tensor(string)")]
        feeds = {"input": t.X[:, [0, 2]].astype(np.float32), "region": t.X[:, 1].astype(str)}
        np.testing.assert_allclose(sess.run(["output"], feeds)[0], model.predict(t.X), rtol=1e-5, atol=1e-6)
        west = {"input": np.array([[90.0, 2.0]], np.float32), "region": np.array(["west"])}
        if unknown == "ignore":
            np.testing.assert_allclose(sess.run(["output"], west)[0],
                                       model.predict(np.array([[90.0, "west", 2.0]], dtype=object)), rtol=1e-5)
        else:
            with pytest.raises(Exception, match="Unknown Category"):
                sess.run(["output"], west)
