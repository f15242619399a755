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

from . import plots as plots_
from ..backends.threads import set_threads, threads_arg
from ..data.files import VERSION, atomic_write
from ..data.preprocessing import MissingValueError, Preprocessing, UnknownCategoryError

__all__ = ["main"]

SYNTHETIC = ("digits", "spirals", "moons", "xor")

EPILOG_TRAIN = """examples:
  nnkit train                                   # an MLP on the bundled 8x8 digits
  nnkit train --data spirals --hidden 64 64 --epochs 200 --plot curves.png
  nnkit train --data my.csv --label species --save model.npz
  nnkit train --backend cupy --dtype float32    # on an NVIDIA GPU (pip install 'nnkit[cuda12]')
  nnkit train --data plays.txt --task lm --save gpt.npz     # a character-level GPT on a text file
  nnkit generate gpt.npz --prompt "ROMEO:" --tokens 200 --temperature 0.8 --top-k 20
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help with the examples as written and every option's default shown, once: an option whose help states
    its default itself (``default: ...``), or has none to state, gets no second ``(default: ...)``."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)


class CLIError(Exception):
    """A problem the user can fix: printed as one line, exit status 2."""


def _parser():
    p = argparse.ArgumentParser(
        prog="nnkit",
        description="nnkit: train small neural networks with hand-derived backprop on NumPy, CuPy, PyTorch or JAX.",
    )
    p.add_argument("--version", action="version", version=f"nnkit {VERSION}")
    sub = p.add_subparsers(dest="command", metavar="{train,predict,generate,data,explain,export,bench}")
    sub.required = True

    t = sub.add_parser("train", help="train an MLP, a CNN, a recurrent net or a character GPT (default: an MLP on the "
                                     "bundled digits)",
                       description="Train a network on a table, a signal or a text file and report its test score:\n"
                                   "an MLP (--hidden), a CNN (--conv), a recurrent net (--rnn), or a character-level\n"
                                   "GPT on a text file (--task lm); a classifier, or a regressor (--task regression).",
                       epilog=EPILOG_TRAIN, formatter_class=_HelpFormatter)
    d = t.add_argument_group("data")
    d.add_argument("--data", default="digits", metavar="NAME|PATH",
                   help="digits (bundled, default), spirals, moons, xor, or a .csv / .npz file")
    d.add_argument("--label-file", default=None, metavar="LABELS.npy",
                   help="with --data FILE.npy: the labels, one per row (default: the last column of FILE.npy); "
                        "a .npy is memory-mapped and streamed, a batch at a time")
    d.add_argument("--label", default=None, metavar="COLUMN",
                   help="label column of a CSV (name or 0-based index; default 'label') or array of an NPZ (default 'y')")
    d.add_argument("--delimiter", default=None, metavar="CHAR",
                   help="CSV delimiter (default: detected among , ; tab |)")
    d.add_argument("--encoding", default="utf-8-sig", help="CSV text encoding (default UTF-8)")
    d.add_argument("--impute", choices=("mean", "median", "most_frequent"), default=None,
                   help="fill missing feature values with the training part's column mean/median/most "
                        "frequent value (saved with the model; default: a missing value is an error)")
    d.add_argument("--categorical", nargs="+", default=None, metavar="COLUMN",
                   help="CSV columns to encode as categories, one-hot (a column that holds only text always is; "
                        "name integer codes here)")
    d.add_argument("--handle-unknown", choices=("error", "ignore"), default="error",
                   help="a category not seen in training, at prediction: an error naming it and its row, or "
                        "ignore: an all-zero one-hot block (default: error)")
    d.add_argument("--task", choices=("classification", "regression", "lm"), default="classification",
                   help="classification (softmax cross-entropy, default), regression (MSE), or lm: a character-level "
                        "GPT on a UTF-8 text file (--data corpus.txt; the last 10%% validates; see 'language model')")
    d.add_argument("--test-size", type=float, default=0.2, metavar="F",
                   help="fraction held out for the final test")
    m = t.add_argument_group("model")
    m.add_argument("--hidden", type=int, nargs="+", default=[256, 128], metavar="N",
                   help="hidden layer widths (default: 256 128)")
    m.add_argument("--activation", default="relu",
                   choices=("relu", "leaky_relu", "gelu", "silu", "elu", "softplus", "tanh", "sigmoid"),
                   help="hidden activation")
    m.add_argument("--dropout", type=float, default=0.0, metavar="P",
                   help="dropout probability after each hidden activation (default 0: none)")
    m.add_argument("--norm", choices=("batch", "layer"), default=None,
                   help="BatchNorm or LayerNorm after each hidden Dense (default: none)")
    m.add_argument("--conv", type=int, nargs="+", default=None, metavar="C",
                   help="convolution channels, e.g. --conv 16 32: a CNN (3×3 convolutions, ReLU, 2×2 max-pooling) "
                        "before the --hidden layers; a table of n = s² features is read as s×s images (the digits "
                        "as 8×8), otherwise as signals of length n")
    m.add_argument("--rnn", choices=("rnn", "gru", "lstm"), default=None,
                   help="a recurrent network: a table of n features is read as a signal of n steps of one feature, "
                        "one recurrent layer per --hidden width (e.g. --rnn gru --hidden 32), its final state into "
                        "a Dense to the outputs")
    m.add_argument("--bidirectional", action="store_true", help="with --rnn: each recurrent layer runs both ways")
    m.add_argument("--residual", action="store_true",
                   help="residual connections Y = X + f(X) around hidden layers of unchanged width")
    o = t.add_argument_group("training")
    o.add_argument("--optimizer", default="adam", choices=("adam", "adamw", "sgd", "rmsprop"), help="the update rule")
    o.add_argument("--lr", type=float, default=None, help="learning rate (default: the optimizer's; adam 1e-3)")
    o.add_argument("--lr-find", action="store_true",
                   help="instead of training, run the learning-rate range test (100 steps from 1e-7 to 10 on a copy "
                        "of the model), print the suggested rate, and draw the curve with --plot")
    o.add_argument("--epochs", type=int, default=60, help="passes over the training part")
    o.add_argument("--batch-size", type=int, default=64, help="rows per training step")
    o.add_argument("--validation-split", type=float, default=0.0, metavar="F",
                   help="fraction of the training part held out (shuffled, stratified by class) for "
                        "validation curves and early stopping (default 0: train on all of it; the test "
                        "part is always held out)")
    o.add_argument("--early-stopping", type=int, default=0, metavar="PATIENCE",
                   help="stop when val_loss has not improved for PATIENCE epochs and keep the best weights")
    o.add_argument("--schedule", choices=("none", "cosine", "step", "plateau"), default="none",
                   help="learning-rate schedule: cosine (warm-up, then cosine decay to --min-lr over --epochs), step "
                        "(× --gamma every --step-size epochs), plateau (× --gamma when --monitor stalls for "
                        "--lr-patience epochs)")
    o.add_argument("--warmup-epochs", type=int, default=0, help="with --schedule cosine: linear warm-up epochs")
    o.add_argument("--min-lr", type=float, default=0.0, help="with --schedule cosine or plateau: the lowest rate")
    o.add_argument("--step-size", type=int, default=10, help="with --schedule step: epochs between decays")
    o.add_argument("--gamma", type=float, default=0.1, help="with --schedule step or plateau: the decay factor")
    o.add_argument("--lr-patience", type=int, default=5, help="with --schedule plateau: epochs without improvement")
    o.add_argument("--monitor", default="val_loss",
                   help="the log --save-best and --schedule plateau watch (val_loss, val_accuracy, loss, ...)")
    o.add_argument("--backend", default="numpy", help="numpy (default), cupy, torch, jax or array_api_strict")
    o.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="the weights' float type")
    o.add_argument("--precision", default=None, choices=("mixed_bfloat16", "mixed_float16", "tf32"),
                   help="mixed precision: float32 weights, bfloat16/float16 matmuls (torch, jax, cupy), "
                        "or TF32 on CUDA (default: compute in --dtype)")
    o.add_argument("--seed", type=int, default=0, help="seeds the weights, shuffles and the split")
    lm = t.add_argument_group("language model (--task lm): nanoGPT's GPT, AdamW on matrices, warm-up and cosine "
                              "decay per step, clipping at norm 1")
    lm.add_argument("--block-size", type=int, default=64, metavar="T", help="context length in characters")
    lm.add_argument("--n-layer", type=int, default=4, help="Transformer blocks")
    lm.add_argument("--n-head", type=int, default=4, help="attention heads per block")
    lm.add_argument("--n-embd", type=int, default=128, help="width")
    lm.add_argument("--steps-per-epoch", type=int, default=100, metavar="K",
                    help="random windows of --batch-size drawn per epoch: --epochs × K steps in all")
    lm.add_argument("--warmup", type=int, default=None, metavar="STEPS",
                    help="linear warm-up steps (default: 100, cut to a tenth of the run for a shorter one)")
    out = t.add_argument_group("output")
    out.add_argument("--save", default=None, metavar="MODEL.npz",
                     help="save the trained model (atomic write); Ctrl-C or SIGTERM saves it as of the last finished "
                          "step, then exits (130, 143)")
    out.add_argument("--checkpoint", default=None, metavar="CKPT.npz",
                     help="write a checkpoint (model, optimizer, epoch, random state) after every epoch and on SIGTERM")
    out.add_argument("--resume", action="store_true",
                     help="with --checkpoint: continue from it when it exists, to --epochs in all (a fresh start "
                          "when it does not)")
    out.add_argument("--save-best", action="store_true",
                     help="with --save and a --validation-split: keep the epoch whose --monitor was best (the file "
                          "is written at each new best; the test is reported for that model)")
    out.add_argument("--plot", default=None, metavar="CURVES.png",
                     help="plot loss and accuracy curves (needs matplotlib: pip install 'nnkit[plot]')")
    out.add_argument("--plot-diagnostics", default=None, metavar="DIAG.png",
                     help="record per-layer gradient norms, weight norms, update ratios and inactive ReLUs "
                          "(GradientStats) and draw them")
    out.add_argument("--plot-boundary", default=None, metavar="REGIONS.png",
                     help="draw the class regions and the training points (two-feature data)")
    out.add_argument("--log-dir", default=None, metavar="DIR",
                     help="record the run in DIR: metrics.csv (a row per epoch, always) and TensorBoard event files "
                          "when tensorboardX is installed (pip install 'nnkit[tensorboard]'; tensorboard --logdir DIR)")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar, only the result")

    g = sub.add_parser("generate", help="sample text from a saved language model (nnkit train --task lm)",
                       description="Sample characters after a prompt from a model saved by 'nnkit train --task lm' "
                                   "(the context cropped to its block size).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("model", metavar="MODEL.npz")
    g.add_argument("--prompt", default="\n", help="the text to continue (its characters must be in the vocabulary)")
    g.add_argument("--tokens", type=int, default=200, help="characters to generate")
    g.add_argument("--temperature", type=float, default=1.0, help="> 1 flatter, < 1 sharper than the model's own")
    g.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest characters only")
    g.add_argument("--seed", type=int, default=0, help="the same seed gives the same text")
    g.add_argument("--backend", default="numpy", help="numpy (default), cupy, torch, jax")

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
    pr.add_argument("--skip-unknown", action="store_true",
                    help="score the rows whose label is a known class and report how many were not scored (default: "
                         "a label never seen in training is an error naming it and its row)")
    pr.add_argument("--delimiter", default=None, metavar="CHAR", help="CSV delimiter (default: detected)")
    pr.add_argument("--encoding", default="utf-8-sig", help="CSV text encoding (default UTF-8)")
    pr.add_argument("--backend", default="numpy", help="numpy, cupy, torch, jax or array_api_strict")
    pr.add_argument("--chunk-rows", type=int, default=65536, metavar="N",
                    help="rows read and predicted at a time, for files larger than memory")

    da = sub.add_parser("data", help="write a bundled or synthetic data set as CSV",
                        description="Write digits, spirals, moons or xor as a CSV file (a header row, "
                                    "then one row per example), e.g. to try 'nnkit predict'.")
    da.add_argument("name", choices=SYNTHETIC)
    da.add_argument("-o", "--out", required=True, metavar="DATA.csv", help="the CSV file to write")
    da.add_argument("--rows", type=int, default=None, metavar="N", help="only the first N rows")
    da.add_argument("--seed", type=int, default=0, help="seed of the synthetic generators")
    da.add_argument("--no-label", action="store_true", help="leave out the label column")

    xp_ = sub.add_parser("explain", help="one training step with its numbers: forward, loss, backward, update",
                         description="Print one training step of a network, every formula with its numbers: the "
                                     "worked 2-2-2 example (--example worked) or a saved model on the first "
                                     "rows of a CSV with its label column.")
    xp_.add_argument("model", nargs="?", help="a saved model (.npz)")
    xp_.add_argument("data", nargs="?", help="a .csv with the feature columns and the label column")
    xp_.add_argument("--example", choices=("worked",), default=None,
                     help="a 2-2-2 sigmoid network (inputs 0.95, 0.06; targets 0.05, 0.82)")
    xp_.add_argument("--rows", type=int, default=4, help="how many rows of DATA make the batch")
    xp_.add_argument("--label", default=None, metavar="COLUMN", help="the label column (default: the training label)")
    xp_.add_argument("--lr", type=float, default=0.01, help="learning rate of the SGD step shown")
    xp_.add_argument("--markdown", action="store_true", help="Markdown instead of plain text")

    ex = sub.add_parser("export", help="write a saved model as ONNX, for ONNX Runtime and other runtimes",
                        description="Write the inference graph of a saved model (its preprocessing included) "
                                    "as an ONNX file; ONNX Runtime's outputs equal 'nnkit predict''s.")
    ex.add_argument("model", help="the saved model (.npz)")
    ex.add_argument("out", metavar="MODEL.onnx", help="the ONNX file to write (atomic)")
    ex.add_argument("--opset", type=int, default=17, help="ONNX opset")

    sub.add_parser("bench", help="run the CPU/GPU benchmark report (nnkit bench --help for its options)")
    for command in sub.choices.values():  # every --help shows each option's default
        command.formatter_class = _HelpFormatter
        command.add_argument("--threads", type=threads_arg, default=None, metavar="N",
                             help="CPU threads of the BLAS libraries and PyTorch (default: one per physical core; "
                                  "1 is often fastest on a busy machine)")
    return p


# -- data ------------------------------------------------------------------------------------------
def _load_data(args):
    """(X, y, classes, feature_names, label_name, description) for ``nnkit train``."""
    from ..data import datasets

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
    if os.path.isdir(path):
        raise CLIError(f"--data {name!r} is a directory: give a .csv or .npz file")
    regression = args.task == "regression"
    if path.lower().endswith((".txt", ".text", ".md")):
        raise CLIError(f"--data {name!r} is a text file: to train a character-level GPT on it, add --task lm "
                       "(a table for --task classification/regression is a .csv or .npz)")
    if path.lower().endswith(".npz"):
        table = datasets.load_npz(path, label=args.label or "y", regression=regression)
    else:
        table = datasets.load_csv(path, label=args.label if args.label is not None else "label",
                                  regression=regression, delimiter=args.delimiter, encoding=args.encoding,
                                  missing="keep" if args.impute else "error", categorical=args.categorical)
    names = table.feature_names if table.header else None
    return table.X, table.y, table.classes, names, table.label_name, path


# -- commands --------------------------------------------------------------------------------------
def cmd_train(args):
    """``nnkit train``: one path for every source — a table in memory or a memory-mapped file streamed."""
    from ..models import Sequential, load
    from ..training.callbacks import EarlyStopping, GradientStats
    from ..training.optim import get_optimizer

    if args.task == "lm":
        return _train_lm(args)
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise CLIError(f"{flag} must be a positive integer, got {value}")
    if any(h < 1 for h in args.hidden):
        raise CLIError(f"--hidden widths must be positive integers, got {' '.join(map(str, args.hidden))}")
    if not 0.0 <= args.dropout < 1.0:
        raise CLIError(f"--dropout must be a probability in [0, 1), got {args.dropout}")
    if not 0.0 < args.test_size < 1.0:
        raise CLIError(f"--test-size must be a fraction in (0, 1), got {args.test_size}")
    if not 0.0 <= args.validation_split < 1.0:
        raise CLIError(f"--validation-split must be a fraction in [0, 1), got {args.validation_split}")
    if args.early_stopping and args.validation_split == 0.0:
        raise CLIError("--early-stopping watches the validation loss: give a --validation-split > 0")
    plots = (("--save", args.save), ("--plot", args.plot), ("--plot-diagnostics", args.plot_diagnostics),
             ("--plot-boundary", args.plot_boundary))
    if any(path for flag, path in plots[1:]):
        _check_matplotlib()
    for flag, path in plots:
        if path:
            _check_output(flag, path)
    _check_resume(args)

    records = _run_records(args.log_dir) + _schedule_and_best(args)  # checked before any work
    data = _streamed_data(args) if args.data.lower().endswith(".npy") else _memory_data(args)
    try:
        if args.rnn and args.conv:
            raise CLIError("--rnn and --conv build different networks: give one of them")
        if args.rnn:
            model = Sequential.rnn(data.n_features, args.rnn, args.hidden, n_outputs=data.n_out,
                                   bidirectional=args.bidirectional, backend=args.backend, dtype=args.dtype,
                                   seed=args.seed, precision=args.precision)
        elif args.conv:
            if any(c < 1 for c in args.conv):
                raise CLIError(f"--conv channels must be positive integers, got {' '.join(map(str, args.conv))}")
            model = Sequential.cnn(data.n_features, args.conv, hidden=args.hidden, n_outputs=data.n_out,
                                   activation=args.activation, backend=args.backend, dtype=args.dtype,
                                   seed=args.seed, precision=args.precision)
        else:
            model = Sequential.mlp([data.n_features, *args.hidden, data.n_out], args.activation,
                                   backend=args.backend, dtype=args.dtype, seed=args.seed, dropout=args.dropout,
                                   norm=args.norm, residual=args.residual, precision=args.precision)
    except (RuntimeError, ValueError) as exc:  # backend not installed / no device / a precision it cannot run
        raise CLIError(str(exc)) from None
    model.preprocessing = data.pre
    model.info["source"] = data.source
    regression = data.regression
    loss = "mse" if regression else "cross_entropy"
    metrics = ["mae"] if regression else ["accuracy"]
    optimizer = get_optimizer(args.optimizer, **({} if args.lr is None else {"lr": args.lr}))
    say = (lambda *a: None) if args.quiet else print
    say(f"data: {data.description}")
    say(model.summary())
    if args.lr_find:
        return _lr_find(model, data, loss, args)
    # the held-out side of the curves: the validation part, or (for the picture only) the test part, which
    # nothing is tuned on — early stopping needs --validation-split
    held_out = "validation" if data.validation is not None else "held-out test"
    watch = data.validation if data.validation is not None else (data.test if args.plot else None)
    callbacks = [GradientStats()] if args.plot_diagnostics else []
    callbacks += records
    t0 = time.perf_counter()
    history = _fit(model, args, *data.train, loss=loss, optimizer=optimizer, epochs=args.epochs,
                   batch_size=args.batch_size, validation_data=watch, callbacks=callbacks,
                   early_stopping=(EarlyStopping(patience=args.early_stopping) if args.early_stopping else None),
                   metrics=metrics, verbose=0 if args.quiet else 1)
    if history is None:
        return 130
    seconds = time.perf_counter() - t0
    if args.save_best and os.path.exists(args.save):  # the best epoch's model, as the file holds it
        model = load(args.save, backend=args.backend)
    _report_test(model, model.evaluate(*data.test, loss, metrics=metrics), history, seconds, regression,
                 None if args.save_best else args.save)
    if args.save_best:
        print(f"kept the best epoch by {args.monitor} in {args.save}" if os.path.exists(args.save) else
              f"no epoch had a finite {args.monitor}: nothing saved to {args.save}")
    shape = f"{data.source}: {'-'.join(map(str, [data.n_features, *args.hidden, data.n_out]))} {args.activation}"
    if args.plot:
        plots_.training_curves(history, args.plot, title=shape, held_out=held_out)
        print(f"wrote {args.plot}")
    if args.plot_diagnostics:
        plots_.gradient_diagnostics(history, args.plot_diagnostics, title=shape)
        print(f"wrote {args.plot_diagnostics}")
    if args.plot_boundary:
        X, y, classes = data.boundary
        labels = np.asarray(classes, dtype=object)[y] if classes is not None else y
        plots_.decision_boundary(model, X, labels, args.plot_boundary, title=shape, class_names=classes)
        print(f"wrote {args.plot_boundary}")
    return 0


def _check_resume(args):
    """--checkpoint and --resume, checked before any work."""
    if args.resume and not args.checkpoint:
        raise CLIError("--resume continues from a checkpoint: give --checkpoint CKPT.npz")
    if args.checkpoint:
        _check_output("--checkpoint", args.checkpoint)


def _fit(model, args, *data, **kwargs):
    """``model.fit`` with --checkpoint/--resume; stopped by Ctrl-C (the history, or None) or SIGTERM (exit 143), it
    saves --save as of the last finished step first."""
    from ..training.loop import Terminated

    try:
        history = model.fit(*data, checkpoint=args.checkpoint, resume=args.resume, **kwargs)
    except Terminated:
        _save_stopped(model, args, "SIGTERM")
        raise
    if history.interrupted:
        _save_stopped(model, args, "Ctrl-C")
        return None
    return history


def _save_stopped(model, args, why):
    """A run stopped by ``why``: the model as of its last finished step into --save, said on standard error."""
    where = f"; the checkpoint {args.checkpoint} resumes it (--resume)" if args.checkpoint else ""
    if args.save and getattr(args, "save_best", False):  # the file holds the best epoch: keep it
        print(f"nnkit train: {why}: stopped in epoch {model.epoch + 1}; {args.save} keeps the best epoch so far"
              f"{where}", file=sys.stderr)
    elif args.save:
        model.save(args.save)
        print(f"nnkit train: {why}: stopped in epoch {model.epoch + 1}; saved the model as of its last finished "
              f"step to {args.save}{where}", file=sys.stderr)
    else:
        print(f"nnkit train: {why}: stopped; nothing saved (--save MODEL.npz keeps the model){where}", file=sys.stderr)


def _train_lm(args):
    """``nnkit train --task lm``: a character-level GPT (``Sequential.gpt``) on a text file, trained on random
    windows of its first 90 % (``TokenWindows``, ``steps_per_epoch``), validated on 200 windows of the rest."""
    from ..models import Sequential
    from ..training import optim
    from ..data.text import CharTokenizer, TokenWindows, read_text

    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--block-size", args.block_size),
                        ("--n-layer", args.n_layer), ("--n-head", args.n_head), ("--n-embd", args.n_embd),
                        ("--steps-per-epoch", args.steps_per_epoch)):
        if value < 1:
            raise CLIError(f"{flag} must be a positive integer, got {value}")
    if args.n_embd % args.n_head:
        raise CLIError(f"--n-embd ({args.n_embd}) must be a multiple of --n-head ({args.n_head})")
    if not 0.0 <= args.dropout < 1.0:
        raise CLIError(f"--dropout must be a probability in [0, 1), got {args.dropout}")
    total = args.epochs * args.steps_per_epoch
    cut = None
    if args.warmup is None:  # 100 steps, or a tenth of a shorter run (said below)
        args.warmup = min(100, total // 10)
        cut = args.warmup if args.warmup < 100 else None
    if not 0 <= args.warmup < total:
        raise CLIError(f"--warmup must be in [0, {total}) (the run's --epochs × --steps-per-epoch steps), got "
                       f"{args.warmup}")
    if args.data in SYNTHETIC:
        raise CLIError("--task lm trains on a UTF-8 text file: --data corpus.txt")
    for flag, path in (("--save", args.save), ("--plot", args.plot)):
        if path:
            _check_output(flag, path)
    _check_resume(args)
    if args.plot:
        _check_matplotlib()
    text = read_text(args.data)
    tok = CharTokenizer.fit(text)
    ids = tok.encode(text)
    split = int(0.9 * len(ids))
    T = args.block_size
    if split <= T + 1 or len(ids) - split <= T + 1:
        raise CLIError(f"{args.data}: {len(ids)} characters are too few for windows of --block-size {T} in both the "
                       "training 90 % and the validation 10 %")
    rng = np.random.default_rng(args.seed)
    val = TokenWindows(ids[split:], T)
    Xv, Yv = val[rng.integers(0, len(val), size=min(200, len(val)))]
    try:
        model = Sequential.gpt(tok.vocab_size, T, args.n_embd, args.n_layer, args.n_head, dropout=args.dropout,
                               backend=args.backend, dtype=args.dtype, seed=args.seed, precision=args.precision)
    except (RuntimeError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    model.tokenizer = tok
    model.info["source"] = os.path.basename(args.data)
    lr = 1e-3 if args.lr is None else args.lr
    opt = optim.AdamW(lr, betas=(0.9, 0.99), weight_decay=0.1, clip_norm=1.0, decay="matrices")
    schedule = optim.CosineLR(total, warmup=args.warmup, min_lr=lr / 10, steps_per_epoch=args.steps_per_epoch,
                              lr=lr)
    say = (lambda *a: None) if args.quiet else print
    say(f"data: {args.data}, {len(ids):,} characters, vocabulary {tok.vocab_size}; {total:,} steps of "
        f"{args.batch_size} × {T}")
    if cut is not None:
        say(f"warm-up: {cut} steps, a tenth of this {total}-step run (--warmup sets it)")
    say(model.summary())
    t0 = time.perf_counter()
    history = _fit(model, args, TokenWindows(ids[:split], T), loss="cross_entropy", optimizer=opt,
                   epochs=args.epochs, batch_size=args.batch_size, steps_per_epoch=args.steps_per_epoch,
                   validation_data=(Xv, Yv), callbacks=[schedule] + _run_records(args.log_dir),
                   verbose=0 if args.quiet else 1)
    if history is None:
        return 130
    seconds = time.perf_counter() - t0
    print(f"validation loss {history['val_loss'][-1]:.4f} nats/char after {total:,} steps ({seconds:.1f} s)")
    if args.save:
        model.save(args.save)
        print(f"saved {args.save}")
    if args.plot:
        plots_.training_curves(history, args.plot, title=f"GPT on {os.path.basename(args.data)}")
        print(f"wrote {args.plot}")
    return 0


def cmd_generate(args):
    """``nnkit generate MODEL.npz --prompt ...``: text sampled from a saved language model."""
    from ..models import load

    if args.tokens < 0:
        raise CLIError(f"--tokens must be a non-negative integer, got {args.tokens}")
    try:
        model = load(args.model, backend=args.backend)
    except (RuntimeError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    if model.tokenizer is None:
        raise CLIError(f"{args.model} is not a language model (it has no tokenizer): train one with "
                       "'nnkit train --data corpus.txt --task lm --save MODEL.npz'")
    print(model.generate(args.prompt, args.tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed))
    return 0


def _lr_find(model, data, loss, args):
    """``nnkit train --lr-find``: the range test on the training part, its suggestion, and the curve (--plot)."""
    from .lr_finder import lr_find

    if len(data.train) != 2:
        raise CLIError("--lr-find takes data held in memory (a table), not a streamed .npy file")
    result = lr_find(model, *data.train, loss, optimizer=args.optimizer, batch_size=args.batch_size)
    if result.suggestion is None:
        print("lr-find: the loss did not fall over 1e-7 .. 10; try another optimizer or scaled inputs")
    else:
        print(f"lr-find: suggested learning rate {result.suggestion:.3g} (--optimizer {args.optimizer}; "
              f"train with --lr {result.suggestion:.3g})")
    if args.plot:
        result.plot(args.plot, title=f"{data.source}: learning-rate range test ({args.optimizer})")
        print(f"wrote {args.plot}")
    return 0


def _run_records(log_dir):
    """``--log-dir DIR``: a CSVLogger (DIR/metrics.csv) and, with tensorboardX installed, TensorBoard event
    files every 50 steps and epoch; the folder is made and checked writable before training."""
    if log_dir is None:
        return []
    from ..training.callbacks import CSVLogger, TensorBoard

    try:
        os.makedirs(log_dir, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"--log-dir {log_dir!r}: cannot make the folder ({exc.strerror or exc})") from None
    if not os.access(log_dir, os.W_OK):
        raise CLIError(f"--log-dir {log_dir!r}: the folder is not writable")
    records = [CSVLogger(os.path.join(log_dir, "metrics.csv"))]
    import importlib.util

    if importlib.util.find_spec("tensorboardX") is None:
        print(f"--log-dir {log_dir}: writing metrics.csv; TensorBoard events need tensorboardX "
              "(pip install 'nnkit[tensorboard]')", file=sys.stderr)
        return records
    try:
        records.append(TensorBoard(log_dir, every_n_steps=50))
    except RuntimeError as exc:
        raise CLIError(f"--log-dir {log_dir!r}: {exc}") from None
    return records


def _schedule_and_best(args):
    """The callbacks of --schedule and --save-best, their options checked before any work."""
    from ..training.callbacks import ModelCheckpoint
    from ..training import optim

    cbs = []
    if args.save_best:
        if not args.save:
            raise CLIError("--save-best keeps the best epoch in the --save file: give --save MODEL.npz")
        if args.monitor.startswith("val_") and not args.validation_split:
            raise CLIError(f"--save-best watches {args.monitor}: give a --validation-split > 0 (or --monitor loss)")
        cbs.append(ModelCheckpoint(args.save, monitor=args.monitor, save_best_only=True))
    try:
        if args.schedule == "cosine":
            cbs.append(optim.CosineLR(args.epochs, warmup=args.warmup_epochs, min_lr=args.min_lr))
        elif args.schedule == "step":
            cbs.append(optim.StepLR(args.step_size, gamma=args.gamma))
        elif args.schedule == "plateau":
            if args.monitor.startswith("val_") and not args.validation_split:
                raise CLIError(f"--schedule plateau watches {args.monitor}: give a --validation-split > 0 "
                               "(or --monitor loss)")
            cbs.append(optim.ReduceLROnPlateau(args.monitor, factor=args.gamma, patience=args.lr_patience,
                                               min_lr=args.min_lr))
    except (TypeError, ValueError) as exc:
        raise CLIError(f"--schedule {args.schedule}: {exc}") from None
    return cbs


class _TrainingData:
    """What ``nnkit train`` trains on, wherever it came from: ``train`` (the arguments of ``fit``),
    ``validation`` and ``test`` (None or what ``fit``/``evaluate`` take), the fitted :class:`Preprocessing`
    ``pre``, the sizes, a one-line ``description`` and, for ``--plot-boundary``, the raw rows."""

    def __init__(self, train, validation, test, pre, n_features, n_out, regression, source, description,
                 boundary=None):
        self.train, self.validation, self.test, self.pre = train, validation, test, pre
        self.n_features, self.n_out, self.regression = n_features, n_out, regression
        self.source, self.description, self.boundary = source, description, boundary


def _memory_data(args):
    """A table in memory (a bundled or synthetic set, a CSV, an .npz): split into train / validation / test
    parts, the preprocessing fitted on the training part; the parts stay raw rows, which the model (carrying the
    preprocessing) fills and scales itself, as it does for every caller."""
    X, y, classes, features, label_name, source = _load_data(args)
    regression = args.task == "regression"
    if args.plot_boundary and (X.shape[1] != 2 or regression):
        raise CLIError(f"--plot-boundary draws two-feature classification data; {source} has {X.shape[1]} features"
                       + (" and a regression target" if regression else ""))
    (Xtr, ytr), (Xte, yte) = _split(X, y, args.test_size, args.seed, regression, "test")
    validation = None
    if args.validation_split:  # shuffled, and stratified by class: a class-sorted file validates on every class
        (Xtr, ytr), validation = _split(Xtr, ytr, args.validation_split, args.seed + 1, regression, "validation")
    try:
        pre = Preprocessing.fit(Xtr, feature_names=features, impute=args.impute, classes=classes,
                                task=args.task, label=label_name, handle_unknown=args.handle_unknown)
    except MissingValueError as exc:  # the command line's own fix
        raise CLIError(f"{source}: column {exc.column} has a missing value in row {exc.row + 1} of the training "
                       "part: fill them in, or impute them: --impute mean|median|most_frequent") from None
    except ValueError as exc:
        raise CLIError(f"{source}: {exc}") from None
    text = f" ({len(pre.text_columns)} of text: {pre.n_features} inputs one-hot)" if pre.text_columns else ""
    description = (f"{source}: {Xtr.shape[0]} train / {Xte.shape[0]} test rows, {X.shape[1]} features{text}"
                   + ("" if regression else f", {len(classes)} classes"))
    return _TrainingData((Xtr, ytr), validation, (Xte, yte), pre, pre.n_features,
                         1 if regression else len(classes), regression, source, description, (X, y, classes))


class _ScaledRows:
    """A dataset over memory-mapped rows [start, stop): ``ds[idx]`` reads those raw rows with their targets (the
    model's preprocessing scales them on the way in) — ``nnkit train``'s pipeline without the file in memory."""

    def __init__(self, X, y, pre, start, stop):
        self.X, self.y, self.pre, self.start, self.stop = X, y, pre, start, stop

    def __len__(self):
        return self.stop - self.start

    def __getitem__(self, idx):
        rows = np.asarray(idx) + self.start
        order = np.argsort(rows, kind="stable")  # the file read in order, handed back in the asked order
        X = np.empty((len(rows), self.X.shape[1]), dtype=np.float64)
        X[order] = self.X[rows[order]]
        return X, self.y[rows]


def _streamed_data(args):
    """``nnkit train --data FILE.npy [--label-file LABELS.npy]``: the memory-mapped file read a batch at a time;
    the test part is the last rows, the validation part the rows before it, and the scaling is fitted in
    chunks of the training rows (``Preprocessing.fit(..., chunk=)``)."""
    path = os.path.expanduser(args.data)
    if not os.path.isfile(path):
        raise CLIError(f"no such data file: {args.data!r}")
    if args.impute:
        raise CLIError("--impute is not offered for streamed .npy data (imputing needs every value in memory)")
    if args.plot_boundary:
        raise CLIError("--plot-boundary draws two-feature data held in memory, not a streamed .npy file")
    X = _open_npy(path)
    if args.label_file:
        if not os.path.isfile(args.label_file):
            raise CLIError(f"no such label file: {args.label_file!r}")
        y_all = _open_npy_1d(args.label_file, X.shape[0])
    else:
        if X.shape[1] < 2:
            raise CLIError(f"{path}: the last column is the label, and nothing is left for features")
        X, y_all = X[:, :-1], X[:, -1]  # views of the file
    n = X.shape[0]
    regression = args.task == "regression"
    y_host = np.asarray(y_all, dtype=np.float64)  # one number a row: the labels are read whole
    if not np.all(np.isfinite(y_host)):
        raise CLIError(f"{args.label_file or path}: the labels hold NaN or infinity")
    if regression:
        classes, targets = None, y_host.astype(np.float32)
    else:
        values, targets = np.unique(y_host, return_inverse=True)
        if len(values) < 2:
            raise CLIError(f"{args.label_file or path}: only one class ({values[0]:g}) among the labels")
        classes = [int(v) if float(v).is_integer() else float(v) for v in values]
    n_test = max(1, int(round(n * args.test_size)))
    n_train = n - n_test
    n_val = int(round(n_train * args.validation_split))
    n_fit = n_train - n_val
    if n_fit < 2:
        raise CLIError(f"{path}: {n} rows leave no training rows after the test and validation parts")
    try:
        pre = Preprocessing.fit(X, feature_names=[f"x{j}" for j in range(X.shape[1])], classes=classes,
                                task=args.task, rows=n_fit, chunk=65536)
    except ValueError as exc:
        raise CLIError(f"{path}: {exc}") from None
    part = lambda a, b: _ScaledRows(X, targets, pre, a, b)  # noqa: E731
    n_out = 1 if regression else len(classes)
    description = (f"{path} (memory-mapped, streamed): {n_fit} train / {n_val} validation / {n_test} test rows, "
                   f"{X.shape[1]} features" + ("" if regression else f", {n_out} classes"))
    return _TrainingData((part(0, n_fit),), part(n_fit, n_train) if n_val else None, (part(n_train, n), None), pre,
                         X.shape[1], n_out, regression, path, description)


def _report_test(model, result, history, seconds, regression, save):
    """The test line of ``nnkit train`` (and the model saved, when asked)."""
    epochs = len(history["loss"])
    note = " (interrupted)" if history.interrupted else (
        " (early stop, best epoch kept)" if history.stopped_epoch is not None else "")
    where = f"({epochs} epochs in {seconds:.1f} s on {model.backend.name}{note})"
    if regression:
        print(f"test MSE: {2 * result['loss']:.6g}   test MAE: {result['mae']:.6g}   {where}")
    else:
        print(f"test accuracy: {100 * result['accuracy']:.2f}%   test loss: {result['loss']:.4f}   {where}")
    if save:
        model.save(save)
        print(f"saved the model to {save}")


def _open_npy_1d(path, rows):
    try:
        y = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise CLIError(f"{path}: not a readable .npy array ({exc})") from None
    if y.ndim != 1 or y.shape[0] != rows or y.dtype.kind not in "biuf":
        raise CLIError(f"{path}: expected {rows} numeric labels (one per row of the data), got {y.shape} {y.dtype}")
    return y


def cmd_predict(args):
    """``nnkit predict MODEL.npz DATA``: a CSV read in chunks (``--chunk-rows``), a memory-mapped .npy or an
    .npz; the predictions written as they are made (an --out file atomically, at the end)."""
    from ..models import load
    from ..data.datasets import Table, iter_csv, load_npz

    if not os.path.exists(args.model):
        raise CLIError(f"no such model file: {args.model!r}")
    if not os.path.exists(args.data):
        raise CLIError(f"no such data file: {args.data!r}")
    if os.path.isdir(args.data):
        raise CLIError(f"{args.data!r} is a directory: give a .csv, .npy or .npz file")
    if args.chunk_rows < 1:
        raise CLIError(f"--chunk-rows must be a positive integer, got {args.chunk_rows}")
    if args.out:
        _check_output("--out", args.out)
    try:
        model = load(args.model, backend=args.backend)
    except RuntimeError as exc:
        raise CLIError(str(exc)) from None
    pre = model.preprocessing
    label = args.label if args.label is not None else ((pre.label if pre else None) or None)
    lower = args.data.lower()
    if lower.endswith(".npz"):
        tables = iter([load_npz(args.data, label=label or "y", require_label=False)])
    elif lower.endswith(".npy"):
        X = _open_npy(args.data)
        tables = (Table(X[s:s + args.chunk_rows], None, None, None, None, args.data)
                  for s in range(0, X.shape[0], args.chunk_rows))
    else:
        text = [pre.feature_names[j] for j in pre.text_columns] if pre is not None and pre.feature_names else None
        tables = iter_csv(args.data, label=label or "label", delimiter=args.delimiter, encoding=args.encoding,
                          missing="keep" if pre is not None and pre.imputes else "error", chunk_rows=args.chunk_rows, categorical=text or None)
    score = {"right": 0, "rows": 0, "label": None, "lines": 0, "unknown": 0, "unknown_names": set(), "offset": 0}

    def read(tables):
        try:
            yield from tables
        except ValueError as exc:
            hint = " — if that column is the label, name it: --label COLUMN" if "is not a number" in str(exc) \
                and args.label is None else ""
            raise CLIError(f"{exc}{hint}") from None

    def lines():
        regression = pre is not None and pre.task == "regression"
        for n, table in enumerate(read(tables)):
            if not getattr(table, "header", True):  # no column names: the columns are taken in the training order
                table.feature_names = None
            if pre is None and (table.X.shape[1] != model.n_features_in or table.X.dtype == object):
                text = [n for n, v in zip(table.feature_names or [], table.X[0]) if isinstance(v, str)]
                hint = f" — column {text[0]!r} holds text: if it is the label, name it: --label {text[0]}" \
                    if text and args.label is None else ""
                raise CLIError(f"{args.data}: {table.X.shape[1]} feature columns, but the model expects "
                               f"{model.n_features_in}{hint}" if table.X.shape[1] != model.n_features_in else
                               f"{args.data}: the model takes numbers only{hint or ' (a column holds text)'}")
            try:
                result = model.predict_labels(table, proba=True)
            except (MissingValueError, UnknownCategoryError) as exc:  # the row in the file, the fix in CLI words
                line = score["offset"] + exc.row + 1 + bool(getattr(table, "header", False))
                what = (f"{exc.value[:40]!r} is not a category seen in training ({exc.known}); train with "
                        "--handle-unknown ignore to encode it as zeros" if isinstance(exc, UnknownCategoryError) else
                        "a missing value: fill it in, or train with --impute")
                raise CLIError(f"{args.data}: column {exc.column}, row {line}: {what}") from None
            except ValueError as exc:
                raise CLIError(f"{args.data}: {exc}") from None
            if regression:
                values = np.asarray(result[0]).reshape(len(table.X), -1)
                if n == 0:
                    yield "prediction" if values.shape[1] == 1 else \
                        ",".join(f"prediction_{j}" for j in range(values.shape[1]))
                for row in values:
                    yield ",".join(f"{v:.9g}" for v in row)
                continue
            pred, proba = result
            if n == 0:
                names = pre.classes if pre is not None and pre.classes is not None else list(range(proba.shape[1]))
                yield ",".join(_csv_cell(h) for h in ["prediction"] + ([f"p_{c}" for c in names] if args.proba
                                                                        else []))
            for i, k in enumerate(pred):
                yield ",".join([_csv_cell(k)] + ([f"{p:.6f}" for p in proba[i]] if args.proba else []))
            if table.y is not None and table.classes is not None:
                truth = [str(table.classes[j]) for j in table.y]
                known = np.isin(np.array(truth, dtype=object), [str(c) for c in names])
                if not known.all():
                    i = int(np.argmin(known))
                    if not args.skip_unknown:
                        raise CLIError(f"{args.data}: label {truth[i]!r} in row {score['offset'] + i + 1} is not one of "
                                       f"the model's classes ({', '.join(map(str, names))}): a class never seen in "
                                       "training (--skip-unknown scores the other rows)")
                    score["unknown"] += int((~known).sum())
                    score["unknown_names"].update(t for t, k in zip(truth, known) if not k)
                score["right"] += sum(t == str(k) for t, k, ok in zip(truth, pred, known) if ok)
                score["rows"] += int(known.sum())
                score["label"] = table.label_name
            score["offset"] += len(table.X)

    def write(f):
        for line in lines():
            f.write((line + "\n").encode())
            score["lines"] += 1

    if args.out:
        atomic_write(args.out, write)  # rows written as they come, into a temporary file renamed at the end
    else:
        for line in lines():
            sys.stdout.write(line + "\n")
            score["lines"] += 1
    if score["rows"]:
        print(f"accuracy against the file's {score['label']!r} column: {100 * score['right'] / score['rows']:.2f}%",
              file=sys.stderr)
    if score["unknown"]:
        print(f"{score['unknown']} row(s) not scored: their label ({', '.join(sorted(score['unknown_names']))}) is a "
              "class never seen in training", file=sys.stderr)
    if args.out:
        print(f"wrote {score['lines'] - 1} predictions to {args.out}", file=sys.stderr)
    return 0


def _open_npy(path):
    """A .npy file memory-mapped (rows read as needed), 2-D and numeric, else a CLIError naming it."""
    try:
        X = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise CLIError(f"{path}: not a readable .npy array ({exc})") from None
    if X.ndim != 2 or X.dtype.kind not in "biuf" or X.shape[0] == 0:
        raise CLIError(f"{path}: expected a non-empty 2-D numeric array (rows, columns), got {X.shape} {X.dtype}")
    return X


def _csv_cell(value):
    """A CSV cell: quoted when it holds a comma, a quote or a line break."""
    text = str(value)
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _split(X, y, fraction, seed, regression, what):
    """A shuffled split, stratified by class for classification; tiny data gets a clear error."""
    from ..data.datasets import train_test_split

    if not regression:
        classes, counts = np.unique(y, return_counts=True)
        few = classes[counts < 2]
        if few.size:
            raise CLIError(f"class {few[0]!r} has a single row: a {what} split needs at least 2 rows of "
                           "every class (more data, or fewer classes)")
        if np.ceil(fraction * len(y)) < len(classes) or len(y) - np.ceil(fraction * len(y)) < len(classes):
            raise CLIError(f"{len(y)} rows cannot be split into a {what} part holding all {len(classes)} "
                           f"classes with --{what}-{'size' if what == 'test' else 'split'} {fraction}: "
                           "more data or another fraction")
    return train_test_split(X, y, test_size=fraction, seed=seed, stratify=not regression)


def _check_output(flag, path):
    """An output path is checked before any training: not a directory, its folder there and writable."""
    from ..data.files import check_writable

    try:
        check_writable(path, flag)
    except OSError as exc:
        raise CLIError(str(exc)) from None


def cmd_data(args):
    from ..data import datasets

    if args.rows is not None and args.rows < 1:
        raise CLIError(f"--rows must be a positive integer, got {args.rows}")
    _check_output("--out", args.out)
    if args.name == "digits":
        (Xtr, ytr), (Xte, yte) = datasets.load_digits(seed=args.seed)
        X, y = np.concatenate([Xtr, Xte]), np.concatenate([ytr, yte])
        names = [f"p{i}" for i in range(X.shape[1])]
    else:
        X, y = getattr(datasets, f"make_{args.name}")(seed=args.seed)
        names = [f"x{i}" for i in range(X.shape[1])]
    X, y = X[:args.rows], y[:args.rows]
    header = names + ([] if args.no_label else ["label"])
    lines = [",".join(header)]
    lines += [",".join([f"{v:.9g}" for v in row] + ([] if args.no_label else [str(int(c))])) for row, c in zip(X, y)]
    _write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {len(X)} rows of {args.name} to {args.out}", file=sys.stderr)
    return 0


# -- output ----------------------------------------------------------------------------------------
def _check_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError("--plot, --plot-diagnostics and --plot-boundary need matplotlib, which is not installed: "
                       "pip install 'nnkit[plot]'") from None


def _write_text(path, text):
    try:
        atomic_write(path, lambda f: f.write(text.encode()))
    except OSError as exc:
        raise CLIError(f"cannot write {path!r}: {exc.strerror}") from None


def cmd_explain(args):
    """``nnkit explain --example worked`` or ``nnkit explain MODEL.npz DATA.csv --rows 4``."""
    from .explain import worked_example
    from ..training.optim import SGD

    if args.example == "worked":
        if args.model or args.data:
            raise CLIError("give either --example worked or MODEL.npz DATA.csv, not both")
        _, report = worked_example()
    else:
        from ..models import load
        from ..data.datasets import load_csv

        if not args.model or not args.data:
            raise CLIError("give MODEL.npz DATA.csv (a saved model and rows with their label), or --example worked")
        for path in (args.model, args.data):
            if not os.path.isfile(path):
                raise CLIError(f"no such file: {path!r}")
        if isinstance(args.rows, bool) or args.rows < 1:
            raise CLIError(f"--rows must be a positive integer, got {args.rows}")
        if not args.lr > 0:
            raise CLIError(f"--lr must be a positive number, got {args.lr}")
        model = load(args.model, precision=None)
        pre = model.preprocessing
        label = args.label if args.label is not None else ((pre.label if pre else None) or "label")
        text = [pre.feature_names[j] for j in pre.text_columns] if pre is not None and pre.feature_names else None
        table = load_csv(args.data, label=label, require_label=True,
                         missing="keep" if pre is not None and pre.imputes else "error", categorical=text or None)
        X = pre.columns(table)[:args.rows] if pre is not None else table.X[:args.rows]  # raw: the model scales
        regression = pre is not None and pre.task == "regression"
        if regression:
            y = np.asarray(table.y, dtype=np.float64)[:args.rows]
        else:
            names = [str(c) for c in (pre.classes if pre is not None and pre.classes is not None
                                      else range(model.n_outputs))]
            given = [str(table.classes[j]) if table.classes is not None else str(j) for j in table.y[:args.rows]]
            unknown = sorted(set(given) - set(names))
            if unknown:
                raise CLIError(f"{args.data}: labels {unknown} are not among the model's classes {names}")
            y = np.array([names.index(v) for v in given])
        report = model.explain(X, y, "mse" if regression else "cross_entropy", optimizer=SGD(args.lr))
    print(report.to_markdown() if args.markdown else report)
    return 0


def cmd_export(args):
    """``nnkit export MODEL.npz MODEL.onnx``: the saved model's inference graph as ONNX."""
    if not os.path.exists(args.model):
        raise CLIError(f"no such model file: {args.model!r}")
    if not os.path.isfile(args.model):
        raise CLIError(f"{args.model!r} is not a file: give the saved model (.npz)")
    _check_output("MODEL.onnx", args.out)
    from ..models import load

    model = load(args.model, precision=None)  # the float32 master weights: inference needs no 16-bit policy
    model.export(args.out, opset=args.opset)
    print(f"wrote {args.out} (ONNX opset {args.opset}; inputs: input (batch, {model.n_features_in}))")
    return 0


def main(argv=None):
    """Entry point of the ``nnkit`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the benchmark report has its own options (nnkit bench --help)
        from .bench import main as bench_main

        return bench_main(argv[1:], prog="nnkit bench")
    args = _parser().parse_args(argv)
    if args.threads is not None:
        set_threads(args.threads)
    command = {"train": cmd_train, "predict": cmd_predict, "generate": cmd_generate, "data": cmd_data,
               "export": cmd_export, "explain": cmd_explain}[args.command]
    try:
        return command(args)
    except (CLIError, OSError, ValueError, TypeError, RuntimeError) as exc:
        print(f"nnkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nnkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
