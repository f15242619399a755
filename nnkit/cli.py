"""The ``nnkit`` command line: ``nnkit train``, ``nnkit predict``, ``nnkit bench``.

Also reachable as ``python -m nnkit``.  Errors (a missing file, a bad column, an unavailable
backend) print one line naming the problem and exit with status 2 — never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from .files import atomic_write

__all__ = ["main"]

SYNTHETIC = ("digits", "spirals", "moons", "xor")

EPILOG_TRAIN = """examples:
  nnkit train                                   # an MLP on the bundled 8x8 digits
  nnkit train --data spirals --hidden 64 64 --epochs 200 --plot curves.png
  nnkit train --data my.csv --label species --save model.npz
  nnkit train --backend cupy --dtype float32    # on an NVIDIA GPU (pip install 'nnkit[cuda12]')
"""


class CLIError(Exception):
    """A problem the user can fix: printed as one line, exit status 2."""


def _parser():
    p = argparse.ArgumentParser(
        prog="nnkit",
        description="nnkit: train small neural networks with hand-derived backprop on NumPy, CuPy or PyTorch.",
    )
    sub = p.add_subparsers(dest="command", metavar="{train,predict,bench}")
    sub.required = True

    t = sub.add_parser("train", help="train an MLP classifier (default: on the bundled digits)",
                       description="Train a multi-layer perceptron and report its test accuracy.",
                       epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = t.add_argument_group("data")
    d.add_argument("--data", default="digits", metavar="NAME|PATH",
                   help="digits (bundled, default), spirals, moons, xor, or a .csv / .npz file")
    d.add_argument("--label", default=None, metavar="COLUMN",
                   help="label column of a CSV (name or 0-based index; default 'label') or array of an NPZ (default 'y')")
    d.add_argument("--task", choices=("classification", "regression"), default="classification",
                   help="classification (softmax cross-entropy, default) or regression (MSE)")
    d.add_argument("--test-size", type=float, default=0.2, metavar="F",
                   help="fraction held out for the final test (default 0.2)")
    m = t.add_argument_group("model")
    m.add_argument("--hidden", type=int, nargs="+", default=[256, 128], metavar="N",
                   help="hidden layer widths (default: 256 128)")
    m.add_argument("--activation", default="relu",
                   choices=("relu", "leaky_relu", "tanh", "sigmoid"), help="hidden activation (default relu)")
    o = t.add_argument_group("training")
    o.add_argument("--optimizer", default="adam", choices=("adam", "adamw", "sgd", "rmsprop"))
    o.add_argument("--lr", type=float, default=None, help="learning rate (default: the optimizer's; adam 1e-3)")
    o.add_argument("--epochs", type=int, default=60)
    o.add_argument("--batch-size", type=int, default=64)
    o.add_argument("--validation-split", type=float, default=0.0, metavar="F",
                   help="fraction of the training part held out for validation curves and early stopping "
                        "(default 0: train on all of it; the test part is always held out)")
    o.add_argument("--early-stopping", type=int, default=0, metavar="PATIENCE",
                   help="stop when val_loss has not improved for PATIENCE epochs and keep the best weights")
    o.add_argument("--backend", default="numpy", help="numpy (default), cupy, torch, jax or array_api_strict")
    o.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    o.add_argument("--seed", type=int, default=0, help="seeds the weights, shuffles and the split (default 0)")
    out = t.add_argument_group("output")
    out.add_argument("--save", default=None, metavar="MODEL.npz", help="save the trained model (atomic write)")
    out.add_argument("--plot", default=None, metavar="CURVES.png",
                     help="plot loss and accuracy curves (needs matplotlib: pip install 'nnkit[plot]')")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar, only the result")

    pr = sub.add_parser("predict", help="predict with a saved model",
                        description="Predict the rows of a CSV or NPZ file with a model saved by "
                                    "'nnkit train --save' (or model.save with the same inputs).")
    pr.add_argument("model", help="the saved model (.npz)")
    pr.add_argument("data", help="a .csv (numeric feature columns, with or without the label column) or .npz")
    pr.add_argument("-o", "--out", default=None, metavar="PRED.csv",
                    help="where to write the predictions (default: standard output)")
    pr.add_argument("--label", default=None, metavar="COLUMN",
                    help="a label column to drop and score against (default: the training label's name, or 'label')")
    pr.add_argument("--proba", action="store_true", help="also write each class's probability")
    pr.add_argument("--backend", default="numpy")

    sub.add_parser("bench", help="run the CPU/GPU benchmark report (nnkit bench --help for its options)")
    return p


# -- data ------------------------------------------------------------------------------------------
def _load_data(args):
    """(X, y, classes, feature_names, label_name, description) for ``nnkit train``."""
    from . import datasets

    name = args.data
    if name == "digits":
        (Xtr, ytr), (Xte, yte) = datasets.load_digits(test_size=args.test_size, seed=args.seed)
        X, y = np.concatenate([Xtr, Xte]), np.concatenate([ytr, yte])
        return X, y, list(range(10)), None, None, "bundled 8x8 digits (UCI, CC BY 4.0)"
    if name in ("spirals", "moons", "xor"):
        X, y = getattr(datasets, f"make_{name}")(seed=args.seed)
        return X, y, sorted(set(y.tolist())), ["x0", "x1"], None, f"synthetic {name}"
    path = os.path.expanduser(name)
    if not os.path.exists(path):
        raise CLIError(f"--data {name!r}: no such file (and not one of {', '.join(SYNTHETIC)})")
    regression = args.task == "regression"
    if path.lower().endswith(".npz"):
        table = datasets.load_npz(path, label=args.label or "y", regression=regression)
    else:
        table = datasets.load_csv(path, label=args.label if args.label is not None else "label",
                                  regression=regression)
    return table.X, table.y, table.classes, table.feature_names, table.label_name, path


def _standardizer(X):
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    std[std == 0] = 1.0
    return mean, std


# -- commands --------------------------------------------------------------------------------------
def cmd_train(args):
    import nnkit
    from .datasets import train_test_split
    from .optim import get_optimizer

    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise CLIError(f"{flag} must be a positive integer, got {value}")
    if any(h < 1 for h in args.hidden):
        raise CLIError(f"--hidden widths must be positive integers, got {' '.join(map(str, args.hidden))}")
    if not 0.0 < args.test_size < 1.0:
        raise CLIError(f"--test-size must be a fraction in (0, 1), got {args.test_size}")
    if not 0.0 <= args.validation_split < 1.0:
        raise CLIError(f"--validation-split must be a fraction in [0, 1), got {args.validation_split}")
    if args.early_stopping and args.validation_split == 0.0:
        raise CLIError("--early-stopping watches the validation loss: give a --validation-split > 0")
    if args.plot:
        _check_matplotlib()
    if args.save:
        folder = os.path.dirname(os.path.abspath(args.save))
        if not os.path.isdir(folder):
            raise CLIError(f"--save {args.save!r}: the folder {folder!r} does not exist")

    X, y, classes, features, label_name, source = _load_data(args)
    regression = args.task == "regression"
    (Xtr, ytr), (Xte, yte) = train_test_split(X, y, test_size=args.test_size, seed=args.seed,
                                              stratify=not regression)
    order = np.random.default_rng(args.seed).permutation(Xtr.shape[0])  # files are often sorted by label;
    Xtr, ytr = Xtr[order], ytr[order]  # fit's validation split takes the last rows
    mean, std = _standardizer(Xtr)
    Xtr, Xte = ((Xtr - mean) / std).astype(np.float32), ((Xte - mean) / std).astype(np.float32)
    n_out = 1 if regression else len(classes)
    try:
        model = nnkit.Sequential.mlp([X.shape[1], *args.hidden, n_out], args.activation, backend=args.backend,
                                     dtype=args.dtype, seed=args.seed)
    except RuntimeError as exc:  # backend not installed / no device
        raise CLIError(str(exc)) from None
    model.info = {"task": args.task, "classes": classes, "feature_names": features, "label": label_name,
                  "mean": mean.tolist(), "std": std.tolist(), "source": source}
    loss = "mse" if regression else "cross_entropy"
    metrics = ["mae"] if regression else ["accuracy"]
    kwargs = {} if args.lr is None else {"lr": args.lr}
    optimizer = get_optimizer(args.optimizer, **kwargs)
    say = (lambda *a: None) if args.quiet else print
    say(f"data: {source}: {Xtr.shape[0]} train / {Xte.shape[0]} test rows, {X.shape[1]} features"
        + ("" if regression else f", {len(classes)} classes"))
    say(model.summary())
    t0 = time.perf_counter()
    history = model.fit(Xtr, ytr, loss=loss, optimizer=optimizer, epochs=args.epochs, batch_size=args.batch_size,
                        validation_split=args.validation_split,
                        early_stopping=(nnkit.EarlyStopping(patience=args.early_stopping)
                                        if args.early_stopping else None),
                        metrics=metrics, verbose=0 if args.quiet else 1)
    seconds = time.perf_counter() - t0
    result = model.evaluate(Xte, yte, loss, metrics=metrics)
    epochs = len(history["loss"])
    note = " (interrupted)" if history.interrupted else (
        f" (early stop, best epoch kept)" if history.stopped_epoch is not None else "")
    if regression:
        print(f"test MSE: {2 * result['loss']:.6g}   test MAE: {result['mae']:.6g}   "
              f"({epochs} epochs in {seconds:.1f} s on {model.backend.name}{note})")
    else:
        print(f"test accuracy: {100 * result['accuracy']:.2f}%   test loss: {result['loss']:.4f}   "
              f"({epochs} epochs in {seconds:.1f} s on {model.backend.name}{note})")
    if args.save:
        model.save(args.save)
        print(f"saved the model to {args.save}")
    if args.plot:
        write_curves(history, args.plot, title=f"{source}: {'-'.join(map(str, [X.shape[1], *args.hidden, n_out]))}")
        print(f"wrote {args.plot}")
    return 0


def cmd_predict(args):
    from . import load
    from .datasets import load_csv, load_npz

    if not os.path.exists(args.model):
        raise CLIError(f"no such model file: {args.model!r}")
    try:
        model = load(args.model, backend=args.backend)
    except RuntimeError as exc:
        raise CLIError(str(exc)) from None
    info = getattr(model, "info", None) or {}
    label = args.label if args.label is not None else (info.get("label") or None)
    if not os.path.exists(args.data):
        raise CLIError(f"no such data file: {args.data!r}")
    if args.data.lower().endswith(".npz"):
        table = load_npz(args.data, label=label or "y", require_label=False)
    else:
        table = load_csv(args.data, label=label or "label", require_label=args.label is not None)
    X = table.X
    if X.shape[1] != model.n_features_in:
        raise CLIError(f"{args.data}: {X.shape[1]} feature columns, but the model expects {model.n_features_in}"
                       + (f" ({', '.join(info['feature_names'])})" if info.get("feature_names") else ""))
    if "mean" in info:
        X = ((X - np.asarray(info["mean"], dtype=np.float32)) / np.asarray(info["std"], dtype=np.float32))
    out = model.backend.to_numpy(model.predict(X.astype(np.float32), batch_size=4096))
    classes = info.get("classes")
    lines = []
    if info.get("task", "classification") == "regression" or model.n_outputs == 1 and classes is None:
        lines.append("prediction")
        lines += [f"{v:.9g}" for v in out.reshape(-1)]
    else:
        from .losses import CrossEntropy

        proba = model.backend.to_numpy(CrossEntropy().predict(model.backend.asarray(out)))
        names = classes if classes is not None else list(range(out.shape[1]))
        pred = proba.argmax(axis=1)
        header = ["prediction"] + ([f"p_{c}" for c in names] if args.proba else [])
        lines.append(",".join(map(str, header)))
        for i, k in enumerate(pred):
            row = [str(names[k])] + ([f"{p:.6f}" for p in proba[i]] if args.proba else [])
            lines.append(",".join(row))
        if table.y is not None and table.classes is not None:
            truth = np.array([str(table.classes[j]) for j in table.y])
            acc = float(np.mean(truth == np.array([str(names[k]) for k in pred])))
            print(f"accuracy against the file's {table.label_name!r} column: {100 * acc:.2f}%", file=sys.stderr)
    text = "\n".join(lines) + "\n"
    if args.out:
        _write_text(args.out, text)
        print(f"wrote {len(lines) - 1} predictions to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


# -- output ----------------------------------------------------------------------------------------
def _check_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError("--plot needs matplotlib, which is not installed: pip install 'nnkit[plot]'") from None


def write_curves(history, path, title=""):
    """Loss (left) and accuracy (right, when recorded) per epoch, training and validation; atomic PNG."""
    _check_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = next((k for k in ("accuracy", "mae", "mse") if k in history), None)
    fig, axes = plt.subplots(1, 2 if metric else 1, figsize=(10 if metric else 5, 4), squeeze=False)
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, key in zip(axes[0], ["loss"] + ([metric] if metric else [])):
        ax.plot(epochs, history[key], label=f"train {key}")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def _write_text(path, text):
    try:
        atomic_write(path, lambda f: f.write(text.encode()))
    except OSError as exc:
        raise CLIError(f"cannot write {path!r}: {exc.strerror}") from None


def main(argv=None):
    """Entry point of the ``nnkit`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the benchmark report has its own options (nnkit bench --help)
        from .bench import main as bench_main

        return bench_main(argv[1:], prog="nnkit bench")
    args = _parser().parse_args(argv)
    command = {"train": cmd_train, "predict": cmd_predict}[args.command]
    try:
        return command(args)
    except (CLIError, FileNotFoundError, ValueError, TypeError, RuntimeError) as exc:
        print(f"nnkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nnkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
