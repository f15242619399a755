"""Pictures for learners: training curves with the held-out side, gradient diagnostics, decision boundaries, the
learning-rate range test, attention weights per head, a model's graph.

Each function draws with matplotlib (``pip install 'nnkit[plot]'``) on a ``matplotlib.figure.Figure`` of its
own — never through pyplot, so matplotlib's global backend and open figures are left as they were — and
returns it (a notebook shows it); given a ``path``, it also writes the PNG there, atomically.
"""
from __future__ import annotations

import numpy as np

from ..data.files import atomic_write

__all__ = ["training_curves", "gradient_diagnostics", "decision_boundary", "lr_curve", "attention", "model"]


def _figure(**kwargs):
    """A new Figure of its own (no pyplot: nothing global changes)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise RuntimeError("plots need matplotlib: pip install 'nnkit[plot]'") from None
    return Figure(**kwargs)


def _cmap(name):
    import matplotlib

    return matplotlib.colormaps[name]


def _save(fig, path):
    """Write ``fig`` as a PNG to ``path`` (atomically) when one is given; the figure, either way."""
    if path is not None:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    return fig


def training_curves(history, path=None, title="", held_out="validation"):
    """Loss (left) and accuracy or error (right, when recorded) per epoch: the training curves and the
    held-out ones (``val_*`` in the history, named ``held_out`` in the legend) side by side, so that
    overfitting — training loss falling while the held-out loss turns up — shows."""
    metric = next((k for k in ("accuracy", "mae", "mse") if k in history), None)
    fig = _figure(figsize=(10 if metric else 5, 4))
    axes = fig.subplots(1, 2 if metric else 1, squeeze=False)
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, key in zip(axes[0], ["loss"] + ([metric] if metric else [])):
        ax.plot(epochs, history[key], label=f"training {key}")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], label=f"{held_out} {key}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        if key == "loss":
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def gradient_diagnostics(history, path=None, title=""):
    """Four panels from :class:`nnkit.callbacks.GradientStats`' history: per layer and epoch the gradient
    norm, the weight norm, the update-to-weight ratio (log scales) and the fraction of inactive ReLU units."""
    panels = [("grad_norm", "‖∂L/∂W‖ (mean per step)", True), ("weight_norm", "‖W‖", True),
              ("update_ratio", "‖ΔW‖ / ‖W‖ (mean per step)", True), ("relu_inactive", "inactive ReLU units", False)]
    fig = _figure(figsize=(11, 7.5))
    axes = fig.subplots(2, 2)
    viridis = _cmap("viridis")
    for ax, (prefix, label, log) in zip(axes.flat, panels):
        keys = sorted((k for k in history if k.startswith(prefix + "/")), key=_layer_order)
        for i, k in enumerate(keys):
            ax.plot(np.arange(1, len(history[k]) + 1), history[k], label=k.split("/", 1)[1],
                    color=viridis(i / max(len(keys) - 1, 1)))
        ax.set_title(label)
        ax.set_xlabel("epoch")
        if log and keys:
            ax.set_yscale("log")
        if not keys:
            ax.text(0.5, 0.5, "no ReLU layers" if prefix == "relu_inactive" else "not recorded",
                    ha="center", va="center", transform=ax.transAxes)
        elif len(keys) <= 12:
            ax.legend(fontsize=7, title="layer (first = dark)", title_fontsize=7)
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _layer_order(key):
    parts = key.split("/", 1)[1].split(".")
    return [int(p) if p.isdigit() else 0 for p in parts]


def decision_boundary(model, X, y, path=None, title="", resolution=300, class_names=None):
    """The class regions of a two-feature classifier over the data's range, with the points on top.

    ``X`` are the model's *raw* two features (the model's preprocessing, when it carries one, is applied
    to the grid as to new data; otherwise X goes to the model as it is), ``y`` their labels (names or
    integers)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"a decision boundary needs two features, got X of shape {X.shape}")
    pad = 0.05 * (X.max(axis=0) - X.min(axis=0) + 1e-12)
    lo, hi = X.min(axis=0) - pad, X.max(axis=0) + pad
    g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution))
    grid = np.column_stack([g0.ravel(), g1.ravel()])
    labels = np.asarray(model.predict_labels(grid))
    y = np.asarray(y)
    names = list(class_names) if class_names is not None else sorted(set(labels.tolist()) | set(y.tolist()),
                                                                      key=str)
    index = {str(c): i for i, c in enumerate(names)}
    region = np.array([index[str(v)] for v in labels]).reshape(g0.shape)
    fig = _figure(figsize=(6, 5.5))
    ax = fig.subplots()
    cmap = _cmap("tab10")
    ax.contourf(g0, g1, region, levels=np.arange(len(names) + 1) - 0.5, cmap=cmap, vmin=0, vmax=9, alpha=0.3)
    for c in names:
        mask = np.array([str(v) == str(c) for v in y])
        if mask.any():
            ax.scatter(X[mask, 0], X[mask, 1], s=12, color=cmap(index[str(c)]), edgecolor="k", linewidth=0.3,
                       label=str(c))
    ax.set_xlabel("feature 0")
    ax.set_ylabel("feature 1")
    ax.legend(title="class", fontsize=8)
    ax.set_title(title or "decision regions and training points")
    fig.tight_layout()
    return _save(fig, path)


def lr_curve(result, path=None, title=""):
    """The learning-rate range test of :func:`nnkit.lr_find`: the (smoothed) loss against the learning rate on a
    log scale, the suggested rate marked."""
    fig = _figure(figsize=(6, 4.5))
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, alpha=0.3, label="loss per step")
    ax.plot(result.lrs, result.smoothed, label="smoothed")
    if result.suggestion is not None:
        ax.axvline(result.suggestion, color="k", linestyle="--", linewidth=1,
                   label=f"suggested lr {result.suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    finite = np.asarray(result.smoothed)[np.isfinite(result.smoothed)]
    if finite.size:
        ax.set_ylim(finite.min() - 0.05 * abs(finite.min()), min(finite.max(), 4 * finite.min() + 1e-12))
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title or "learning-rate range test")
    fig.tight_layout()
    return _save(fig, path)


def attention(P, path=None, tokens=None, example=0, title=""):
    """The attention weights of each head as heatmaps, one panel a head: row = the query position, column = the
    key it looks at, each row summing to 1.  ``P`` (batch, heads, T, T) — ``report.values["P{i}"]`` from
    ``model.explain`` on a short input — or a report's array for one example (heads, T, T); ``tokens`` labels the
    positions (a string's characters, a list of words)."""
    P = np.asarray(P, dtype=np.float64)
    if P.ndim == 4:
        P = P[example]
    if P.ndim != 3 or P.shape[1] != P.shape[2]:
        raise ValueError(f"attention weights must be (batch, heads, T, T) or (heads, T, T), got shape {P.shape}")
    heads, T = P.shape[0], P.shape[1]
    labels = list(tokens)[:T] if tokens is not None else None
    fig = _figure(figsize=(3.2 * heads + 0.6, 3.4))
    axes = fig.subplots(1, heads, squeeze=False)[0]
    for h, ax in enumerate(axes):
        im = ax.imshow(P[h], vmin=0.0, vmax=1.0, cmap=_cmap("viridis"))
        ax.set_title(f"head {h}")
        ax.set_xlabel("key")
        ax.set_ylabel("query" if h == 0 else "")
        if labels is not None and T <= 40:
            ax.set_xticks(range(len(labels)), labels)
            ax.set_yticks(range(len(labels)), labels)
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def model(net, path=None, title=""):
    """A picture of a model's graph: its inputs on top, each node (a layer call, with its output shape) a box on
    the row of its depth — one more than the deepest node it reads — and an arrow from each value to each node that
    reads it; the outputs named at the bottom.  A chain is a column of boxes."""
    plan = net.plan
    shapes = net.value_shapes()
    depth, label = {}, {}
    for slot, name in zip(plan.inputs, net.input_names):
        depth[slot], label[slot] = 0, f"input {name}\n" + _shape(shapes[slot])
    edges = []
    for i, (layer, src, dst, srcs, _, _) in enumerate(plan.forward_order):
        reads = [src] if srcs is None else list(srcs)
        depth[dst] = 1 + max(depth[v] for v in reads)
        label[dst] = f"{i}: {layer!r}"[:48] + "\n" + _shape(shapes[dst])
        edges += [(v, dst) for v in dict.fromkeys(reads)]
    rows = {}
    for slot in sorted(depth, key=lambda v: (depth[v], v)):
        rows.setdefault(depth[slot], []).append(slot)
    width = max(len(r) for r in rows.values())
    fig = _figure(figsize=(max(4.0, 3.2 * width), 1.1 * (len(rows) + 1)))
    ax = fig.add_subplot()
    ax.set_axis_off()
    where = {}
    for d, slots in rows.items():
        for k, slot in enumerate(slots):
            where[slot] = ((k + 0.5) * width / len(slots), -d)
    outputs = {v: n for n, v in zip(net.output_names, plan.outputs)}
    for v, u in edges:
        (x0, y0), (x1, y1) = where[v], where[u]
        ax.annotate("", xy=(x1, y1 + 0.28), xytext=(x0, y0 - 0.28),
                    arrowprops={"arrowstyle": "->", "color": "0.4", "lw": 1})
    for slot, (x, y) in where.items():
        face = "#dbe9f6" if slot in plan.inputs else ("#fde2c8" if slot in outputs else "white")
        text = label[slot] + (f"\n→ {outputs[slot]}" if slot in outputs else "")
        ax.text(x, y, text, ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round,pad=0.4", "facecolor": face, "edgecolor": "0.3"})
    ax.set_xlim(0, width)
    ax.set_ylim(-len(rows) + 0.4, 0.6)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _shape(shape):
    return "(B, ...)" if shape is None else "(B" + "".join(f", {'?' if d is None else d}" for d in shape) + ")"

