"""Numerically stable building blocks written once for any array-API namespace.

The Array API standard has no ``sigmoid``, ``softmax`` or ``logsumexp``; the
naive formulas overflow for logits of a few hundred.  These versions never
exponentiate a positive number, so logits of +-1000 give finite results and no
warnings in float32 and float64.
"""
from __future__ import annotations

from typing import Any

import array_api_compat

__all__ = ["Array", "namespace_of", "device_of", "sigmoid", "softmax", "logsumexp", "softplus"]

Array = Any  # an array of any array-API library (NumPy, CuPy, torch, JAX, ...): the type hints' name for one

_NAMESPACES: dict[type, object] = {}


def namespace_of(x):
    """The array-API namespace of ``x`` (array-api-compat's), cached by array type.

    ``array_namespace`` inspects its argument each call (a few µs); the answer depends only on
    the type, and a training step asks it several times.
    """
    kind = type(x)
    xp = _NAMESPACES.get(kind)
    if xp is None:
        xp = _NAMESPACES[kind] = array_api_compat.array_namespace(x)
    return xp


def device_of(x):
    """The device ``x`` lives on (array-api-compat's ``device``): for creating arrays beside it."""
    return array_api_compat.device(x)


def register_namespace(kind, xp):
    """Make ``namespace_of`` answer ``xp`` for arrays of type ``kind`` (the backend module's hook)."""
    _NAMESPACES[kind] = xp


_OWN: dict = {}


def own_kernel(xp, name):
    """The namespace's own faster form of an operation, ``xp.<name>`` (``scan``, ``relu_grad``, ``affine``,
    ``matmul_tn``, ``sub_scaled``, ``conv_kernels``), or None where it has none — looked up once per namespace (a
    missing module attribute costs ~2 µs each time)."""
    key = (xp, name)
    try:
        return _OWN[key]
    except KeyError:
        found = _OWN[key] = getattr(xp, name, None)
        return found


def affine(xp, X, W, b):
    """Z = X·W + b for X (..., i), W (i, o), b (o,) → (..., o) — by the namespace's own form where it has one
    (``xp.affine``: the product and the bias in one kernel), else the product and the bias added in place on it
    (a rebinding on immutable arrays)."""
    own = own_kernel(xp, "affine")
    if own is not None:
        return own(X, W, b)
    Z = X @ W
    Z += b
    return Z


_SUB_SCALED: dict = {}


def sub_scaled(p, g, lr):
    """p ← p − lr·g in place (an SGD step; ``lr`` a float or a 0-d array), ``g`` free to be overwritten — by the
    namespace's own one-kernel form where it has one (``xp.sub_scaled``), else lr·g formed in g's own buffer and
    subtracted (a rebinding on immutable arrays).  Returns the new p.  Called per parameter per step, so the form
    is found once per array type."""
    fn = _SUB_SCALED.get(type(p))
    if fn is None:
        fn = _SUB_SCALED[type(p)] = own_kernel(namespace_of(p), "sub_scaled") or _sub_scaled
    return fn(p, g, lr)


def _sub_scaled(p, g, lr):
    g *= lr
    p -= g
    return p


def matmul_tn(xp, A, B):
    """Aᵀ·B for A (n, i), B (n, o) → (i, o) — a weight's gradient Xᵀ·dZ — by the namespace's own form where it
    has one (``xp.matmul_tn``: the same product in a faster orientation), else ``A.T @ B``."""
    own = own_kernel(xp, "matmul_tn")
    return own(A, B) if own is not None else A.T @ B


def scan(xp, body, carry, xs, reverse=False):
    """The loop ``for t: carry, y_t = body(carry, x_t)`` over the leading axis of ``xs``; ``(carry, ys)``.

    ``xs`` is a tuple (tuples nest) of arrays whose axis 0 is the loop's axis (None entries stay None in x_t);
    ``ys`` holds each step's outputs stacked on axis 0, at their step's index (``reverse=True`` runs t from the
    last to the first, as ``jax.lax.scan``).  A backend may give its namespace a ``scan`` with these
    semantics — JAX's is ``lax.scan`` while a step is being compiled, so the loop is compiled once, not
    unrolled T times; elsewhere this is a Python loop.
    """
    loop = own_kernel(xp, "scan")
    if loop is not None:
        return loop(body, carry, xs, reverse)
    return python_scan(xp, body, carry, xs, reverse)


def python_scan(xp, body, carry, xs, reverse=False):
    """:func:`scan` as a Python loop (every backend's eager form)."""
    leaves = [x for x in tree_flatten(xs)[0] if x is not None]
    if not leaves:
        raise ValueError("scan needs at least one array in xs (its axis 0 is the loop's axis)")
    T = leaves[0].shape[0]
    ys = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        carry, ys[t] = body(carry, tree_map(lambda x: None if x is None else x[t, ...], xs))
    return carry, _stack_steps(xp, ys)


def tree_flatten(tree):
    """``(leaves, spec)``: the leaves of nested tuples, lists and dicts in order, and the structure they sit in
    (hashable: the same structure gives the same spec)."""
    leaves = []

    def walk(node):
        if isinstance(node, (tuple, list)):
            return type(node), tuple(walk(item) for item in node)
        if isinstance(node, dict):
            return dict, tuple((k, walk(v)) for k, v in node.items())
        leaves.append(node)
        return None
    return leaves, walk(tree)


def tree_unflatten(spec, leaves):
    """The tree of structure ``spec`` (from :func:`tree_flatten`) holding ``leaves`` in order."""
    it = iter(leaves)

    def build(node):
        if node is None:
            return next(it)
        kind, parts = node
        if kind is dict:
            return {k: build(part) for k, part in parts}
        return kind(build(part) for part in parts)
    return build(spec)


def tree_map(fn, tree):
    """``tree`` with ``fn`` applied to each leaf (tuples, lists and dicts kept)."""
    leaves, spec = tree_flatten(tree)
    return tree_unflatten(spec, [fn(x) for x in leaves])


def _stack_steps(xp, ys):
    """Per-step outputs (tuples nest) stacked on a new axis 0, entry by entry."""
    first = ys[0]
    if isinstance(first, (tuple, list)):
        return tuple(_stack_steps(xp, [y[i] for y in ys]) for i in range(len(first)))
    return None if first is None else xp.stack(ys, axis=0)


def sigmoid(xp, z):
    """σ(z) = 1 / (1 + e^{-z}), computed from e = e^{-|z|} ∈ (0, 1]:

    σ(z) = 1/(1+e) for z ≥ 0 and e/(1+e) for z < 0.
    """
    e = xp.exp(-xp.abs(z))
    r = 1.0 / (1.0 + e)
    return xp.where(z >= 0, r, e * r)


def softplus(xp, z):
    """log(1 + e^{z}) = max(z, 0) + log1p(e^{-|z|})."""
    return xp.maximum(z, 0.0) + xp.log1p(xp.exp(-xp.abs(z)))


def logsumexp(xp, z, axis=-1):
    """log Σ_k e^{z_k} along ``axis`` (kept as a size-1 axis): m + log Σ e^{z-m}, m = max z."""
    m = xp.max(z, axis=axis, keepdims=True)
    return m + xp.log(xp.sum(xp.exp(z - m), axis=axis, keepdims=True))


def softmax(xp, z, axis=-1):
    """softmax(z)_k = e^{z_k - m} / Σ_j e^{z_j - m}, m = max_j z_j (row-wise for (batch, K))."""
    e = xp.exp(z - xp.max(z, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)

