"""Bad input: a clear ValueError/TypeError naming the problem, and the model unchanged."""
import numpy as np
import pytest

import nnkit
from nnkit.optim import SGD


def model_on(backend, n_out=3):
    return nnkit.Sequential([nnkit.Dense(4, 5), nnkit.ReLU(), nnkit.Dense(5, n_out)],
                            backend=backend, dtype="float64", seed=0)


def unchanged(model, before):
    after = model.state_dict()
    return all(np.array_equal(after[k], before[k]) for k in before)


GOOD_X = np.random.default_rng(0).normal(size=(6, 4))
GOOD_Y = np.array([0, 1, 2, 0, 1, 2])


def bad_cases():
    nan_x = GOOD_X.copy()
    nan_x[2, 1] = np.nan
    inf_x = GOOD_X.copy()
    inf_x[0, 0] = np.inf
    return [
        ("1-D X", GOOD_X[0], GOOD_Y[:1], "cross_entropy", ValueError, "2-D"),
        ("3-D X", GOOD_X[None], GOOD_Y, "cross_entropy", ValueError, "2-D"),
        ("wrong features", GOOD_X[:, :3], GOOD_Y, "cross_entropy", ValueError, "3 features but the model expects 4"),
        ("length mismatch", GOOD_X, GOOD_Y[:5], "cross_entropy", ValueError, "same length"),
        ("label too large", GOOD_X, np.array([0, 1, 2, 3, 1, 2]), "cross_entropy", ValueError, "[0, 2]"),
        ("negative label", GOOD_X, np.array([0, -1, 2, 0, 1, 2]), "cross_entropy", ValueError, "[0, 2]"),
        ("non-integer label", GOOD_X, np.array([0, 1.5, 2, 0, 1, 2]), "cross_entropy", ValueError, "integer"),
        ("one-hot too narrow", GOOD_X, np.eye(2)[[0, 1, 0, 1, 0, 1]], "cross_entropy", ValueError, "(6, 3)"),
        ("rows not summing to 1", GOOD_X, np.full((6, 3), 0.5), "cross_entropy", ValueError, "summing to 1"),
        ("NaN in X", nan_x, GOOD_Y, "cross_entropy", ValueError, "NaN"),
        ("inf in X", inf_x, GOOD_Y, "cross_entropy", ValueError, "NaN or infinity"),
        ("NaN in y", GOOD_X, np.full((6, 3), np.nan), "mse", ValueError, "NaN"),
        ("string X", np.array([["a"] * 4] * 6), GOOD_Y, "cross_entropy", TypeError, "numeric"),
        ("object X", [[1, 2, 3, "x"]] * 6, GOOD_Y, "cross_entropy", TypeError, "numeric"),
        ("ragged X", [[1, 2, 3, 4], [1, 2]], GOOD_Y[:2], "cross_entropy", TypeError, "read the padding as data"),
        ("empty X", np.zeros((0, 4)), np.zeros(0, dtype=int), "cross_entropy", ValueError, "empty"),
        ("unknown loss", GOOD_X, GOOD_Y, "hinge", ValueError, "'mse'"),
        ("mse target shape", GOOD_X, np.zeros((6, 2)), "mse", ValueError, "expected (6, 3)"),
        ("bce target range", GOOD_X, np.full((6, 3), 2.0), "binary_cross_entropy", ValueError, "[0, 1]"),
        ("bool labels", GOOD_X, np.ones(6, dtype=bool), "cross_entropy", TypeError, "integers"),
    ]


CASES = bad_cases()


@pytest.mark.parametrize("X,y,loss,exc,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_model_unchanged(make_backend, X, y, loss, exc, match):
    model = model_on(make_backend())
    before = model.state_dict()
    with pytest.raises(exc, match=match.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        model.train_step(X, y, loss, SGD(0.1))
    assert unchanged(model, before)
    with pytest.raises(exc):
        model.value_and_grad(X, y, loss)


def test_predict_rejects_bad_X(make_backend):
    model = model_on(make_backend())
    with pytest.raises(ValueError, match="expects 4"):
        model.predict(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(GOOD_X, batch_size=0)


def test_array_of_another_library_is_refused():
    torch = pytest.importorskip("torch")
    model = model_on("numpy")
    before = model.state_dict()
    with pytest.raises(TypeError, match="torch.*backend 'numpy'"):
        model.train_step(torch.zeros((6, 4)), GOOD_Y, "cross_entropy", SGD(0.1))
    assert unchanged(model, before)


def test_strict_array_on_numpy_model_is_refused():
    xp = pytest.importorskip("array_api_strict")
    with pytest.raises(TypeError, match="array_api_strict"):
        model_on("numpy").predict(xp.zeros((2, 4)))


@pytest.mark.parametrize("args,exc,match", [
    ((0, 3), ValueError, "in_features must be a positive integer"),
    ((-2, 3), ValueError, "positive integer"),
    ((2.5, 3), TypeError, "positive integer"),
    ((True, 3), TypeError, "positive integer"),
    ((2, "3"), TypeError, "out_features"),
])
def test_bad_layer_sizes(args, exc, match):
    with pytest.raises(exc, match=match):
        nnkit.Dense(*args)


def test_mismatched_layers_fail_when_built():
    with pytest.raises(ValueError, match=r"layer 2 Dense\(7, 3\) expects 7 input features, but the layer before it "
                                         r"gives \(B, 8\)"):
        nnkit.Sequential([nnkit.Dense(4, 8), nnkit.ReLU(), nnkit.Dense(7, 3)])


@pytest.mark.parametrize("layers,exc,match", [
    ([], ValueError, "at least one layer"),
    ([nnkit.Dense(2, 2), nnkit.Dense(3, 1)], ValueError, r"layer 1 Dense\(3, 1\) expects 3 input features"),
    ([nnkit.Dense(2, 2), "relu"], TypeError, "not an nnkit Layer"),
])
def test_bad_layer_lists(layers, exc, match):
    with pytest.raises(exc, match=match):
        nnkit.Sequential(layers)


def test_unknown_backend_dtype_initializer_activation_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown backend 'jax2'.*'numpy', 'cupy', 'torch', 'array_api_strict'"):
        nnkit.Sequential([nnkit.Dense(2, 2)], backend="jax2")
    with pytest.raises(ValueError, match="unknown dtype 'float16'.*float32, float64"):
        nnkit.Sequential([nnkit.Dense(2, 2)], dtype="float16")
    with pytest.raises(ValueError, match="unknown initializer 'glorot'.*glorot_uniform"):
        nnkit.Dense(2, 2, init="glorot")
    with pytest.raises(ValueError, match="LeakyReLU alpha"):
        nnkit.LeakyReLU(-1)
    with pytest.raises(ValueError, match="not an array library"):
        nnkit.get_backend(np.random)


def test_bad_state_dicts_leave_model_unchanged(make_backend):
    model = model_on(make_backend())
    good = model.state_dict()
    before = model.state_dict()
    missing = {k: v for k, v in good.items() if k != "2.b"}
    extra = {**good, "4.W": np.zeros((1, 1))}
    misshapen = {**good, "0.W": np.zeros((5, 4))}
    text = {**good, "0.b": np.array(["a"] * 5)}
    for state, exc, match in ((missing, ValueError, "missing keys \\['2.b'\\]"),
                              (extra, ValueError, "unexpected keys \\['4.W'\\]"),
                              (misshapen, ValueError, "'0.W' has shape \\(5, 4\\), expected \\(4, 5\\)"),
                              (text, TypeError, "'0.b' must be numeric"),
                              ([1, 2], TypeError, "must be a dict")):
        with pytest.raises(exc, match=match):
            model.load_state_dict(state)
        assert unchanged(model, before)


def test_bad_optimizer_arguments():
    with pytest.raises(ValueError, match="lr must lie in"):
        SGD(-0.1)
    with pytest.raises(TypeError, match="Optimizer"):
        model_on("numpy").train_step(GOOD_X, GOOD_Y, "cross_entropy", "sgd")
