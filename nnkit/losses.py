"""Losses: the mean over the batch of a per-example loss summed over output units.

For a batch of B examples with outputs (B, K), each loss returns the 0-d value

    L = (1/B) Σ_n ℓ(out_n, y_n)

and its gradient ∂L/∂out (B, K), which carries the 1/B.  ``CrossEntropy`` and
``BinaryCrossEntropy`` take *logits* (the last Dense layer's Z) and fold the
softmax/sigmoid in, which is both stable and gives the short gradients below.
"""
from __future__ import annotations

from .functional import device_of, namespace_of

from . import functional as F

__all__ = ["Loss", "MSE", "CrossEntropy", "BinaryCrossEntropy", "Poisson", "LOSSES", "get_loss", "flatten_positions",
           "position_weights"]


def position_weights(w, mask):
    """The weight of every position: ``w`` (B,) per sequence or (B, T) per position, times the padding ``mask``
    (B, T) (1 at a real position, 0 at padding); None when both are None (every position counts once)."""
    if mask is None:
        return w
    if w is None:
        return mask
    return mask * (w[:, None] if w.ndim == 1 else w)


def flatten_positions(out, T, w=None, mask=None):
    """Per-position outputs as rows: ``(out (N, K), T (N,) or (N, K), w (N,) or None)``.

    A model whose output keeps positions — (B, T, K) for a sequence, (B, ..., K) in general — is scored at each
    of its N = B·T positions, as PyTorch's ``cross_entropy`` over the flattened tokens: the loss is the mean over
    the positions (weighted by ``position_weights(w, mask)``, so padding counts for nothing) and its gradient
    reshaped back is ∂L/∂out (B, T, K).  Targets are (B, T) integer classes — kept integers, (N,) here, O(B·T)
    memory — or (B, T, K) values.  A (B, K) output is returned as it is."""
    if out.ndim <= 2:
        return out, T, w
    xp = namespace_of(out)
    K = out.shape[-1]
    ww = position_weights(w, mask)
    if ww is not None and ww.ndim == 1:  # a weight per sequence, the same at each of its positions
        ww = xp.broadcast_to(ww[:, None], tuple(out.shape[:2]))
    flat_t = xp.reshape(T, (-1,)) if T.ndim == out.ndim - 1 else xp.reshape(T, (-1, K))
    return xp.reshape(out, (-1, K)), flat_t, None if ww is None else xp.reshape(ww, (-1,))


class Loss:
    """Base class.  Subclasses implement ``value_and_grad(out, T)`` and target checks."""

    name = "loss"

    def __repr__(self):
        return f"{type(self).__name__}()"

    # -- targets ----------------------------------------------------------------
    def check_target(self, y, n_outputs, n_rows, check_values=True):
        """Validate a target for outputs of width ``n_outputs``; return it shaped (B, K).

        Shape checks read no data; ``check_values`` also checks the values
        (finite, in range), which reads the array (a sync on a GPU).
        """
        xp = namespace_of(y)
        if y.ndim == 1 and n_outputs == 1:
            y = xp.reshape(y, (-1, 1))
        if y.ndim != 2 or y.shape[1] != n_outputs:
            raise ValueError(
                f"y has shape {tuple(y.shape)} but the model has {n_outputs} output(s): "
                f"expected ({n_rows}, {n_outputs})" + (f" or ({n_rows},)" if n_outputs == 1 else "")
            )
        _check_rows(y, n_rows)
        if not xp.isdtype(y.dtype, ("real floating", "integral")):
            raise TypeError(f"y must be numeric, got dtype {y.dtype}")
        if check_values:
            if xp.isdtype(y.dtype, "real floating") and not bool(xp.all(xp.isfinite(y))):
                raise ValueError("y contains NaN or infinity")
            self._check_values(xp, y)
        return y

    def _check_values(self, xp, y):
        pass

    def prepare_target(self, y, n_outputs, backend):
        """The checked target as a (B, K) array of the model's dtype on its device."""
        return backend.asarray(y, dtype=backend.dtype)

    # -- math ---------------------------------------------------------------------
    def value_and_grad(self, out, T, w=None):
        """(L as a 0-d array, ∂L/∂out of shape (B, K)); with sample weights ``w`` (B,) the weighted mean."""
        raise NotImplementedError

    def per_example(self, out, T):
        """(ℓ_n of shape (B,), G = ∂ℓ_n/∂out_n of shape (B, K)): each example's loss and its gradient."""
        raise NotImplementedError

    def _weighted(self, out, T, w):
        """L = Σ_n w_n ℓ_n / Σ_n w_n and ∂L/∂out = G ⊙ w/Σw (a batch whose weights are all 0 gives 0)."""
        xp = namespace_of(out)
        ell, G = self.per_example(out, T)
        total = xp.sum(w)
        share = w / xp.where(total > 0, total, xp.ones_like(total))
        return xp.sum(share * ell), G * xp.reshape(share, (-1, 1))

    def value(self, out, T, w=None):
        """The loss alone (a 0-d array)."""
        return self.value_and_grad(out, T, w)[0]

    def predict(self, out):
        """What the model's output means as a prediction (identity here; probabilities for logits)."""
        return out


def _check_rows(y, n_rows):
    if y.shape[0] != n_rows:
        raise ValueError(f"X has {n_rows} rows but y has {y.shape[0]}: they must have the same length")


class MSE(Loss):
    """Quadratic cost (seed 003): ℓ = ½‖y − a‖² per example.

    L = (1/2B) Σ_n Σ_k (a_nk − y_nk)²,   ∂L/∂a = (a − y)/B   (B, K).
    """

    name = "mse"

    def value_and_grad(self, A, T, w=None):
        if w is not None:
            return self._weighted(A, T, w)
        xp = namespace_of(A)
        inv_b = 1.0 / A.shape[0]
        diff = A - T
        return (0.5 * inv_b) * xp.sum(diff * diff), diff * inv_b

    def per_example(self, A, T):
        """ℓ_n = ½‖a_n − y_n‖², G = a − y."""
        diff = A - T
        return 0.5 * namespace_of(A).sum(diff * diff, axis=1), diff


class CrossEntropy(Loss):
    """Softmax cross-entropy on logits Z (B, K).

    Targets: integer labels (B,) in [0, K), or one-hot/probability rows (B, K).
    With log p = Z − logsumexp(Z) (row-wise, stable):

    L = −(1/B) Σ_n Σ_k y_nk log p_nk,   ∂L/∂Z = (softmax(Z) − y)/B   (B, K).

    Per-position targets (a sequence model's (B, T, K) logits, :func:`flatten_positions`) stay integer labels
    T (N,): L = −(1/N) Σ_n log p_{n, T_n} and ∂L/∂Z = (softmax(Z) − [k = T_n])/N; the indicator [k = T_n] is
    a comparison made inside the expression, never a stored (N, K) one-hot.
    """

    keeps_labels = True  # per-position class targets are kept as integer labels (see flatten_positions)

    name = "cross_entropy"

    def check_target(self, y, n_outputs, n_rows, check_values=True):
        xp = namespace_of(y)
        if n_outputs < 2:
            raise ValueError(
                "CrossEntropy needs a model with at least 2 outputs (one logit per class); "
                "for one output use BinaryCrossEntropy"
            )
        if y.ndim == 2 and y.shape[1] == 1 and xp.isdtype(y.dtype, "integral"):
            y = xp.reshape(y, (-1,))
        if y.ndim == 1:
            _check_rows(y, n_rows)
            if xp.isdtype(y.dtype, "bool") or not xp.isdtype(y.dtype, ("real floating", "integral")):
                raise TypeError(f"class labels must be integers, got dtype {y.dtype}")
            if check_values:
                if xp.isdtype(y.dtype, "real floating"):
                    if not bool(xp.all(xp.isfinite(y))):
                        raise ValueError("y contains NaN or infinity")
                    if not bool(xp.all(y == xp.floor(y))):
                        raise ValueError("class labels must be integers (0, 1, ..., K-1), got non-integer values")
                if y.shape[0] and not bool(xp.all((y >= 0) & (y < n_outputs))):
                    lo, hi = xp.min(y), xp.max(y)
                    raise ValueError(
                        f"class labels must lie in [0, {n_outputs - 1}] for a model with {n_outputs} "
                        f"outputs, got labels from {float(lo):g} to {float(hi):g}"
                    )
            return y
        if y.ndim != 2 or y.shape[1] != n_outputs:
            raise ValueError(
                f"y has shape {tuple(y.shape)}: CrossEntropy expects integer labels of shape ({n_rows},) "
                f"or one-hot/probability rows of shape ({n_rows}, {n_outputs})"
            )
        return super().check_target(y, n_outputs, n_rows, check_values)

    def _check_values(self, xp, y):
        if y.shape[0] == 0:
            return
        if not bool(xp.all((y >= 0) & (y <= 1))):
            raise ValueError("probability rows of y must lie in [0, 1]")
        if not bool(xp.all(xp.abs(xp.sum(y, axis=1) - 1.0) <= 1e-4)):
            raise ValueError("each row of y must be one-hot or a probability vector summing to 1")

    def prepare_target(self, y, n_outputs, backend):
        if y.ndim == 1:
            xp = backend.xp
            labels = backend.asarray(y)
            classes = xp.arange(n_outputs, device=backend.device)
            return xp.astype(xp.reshape(xp.astype(labels, classes.dtype), (-1, 1)) == classes, backend.dtype)
        return super().prepare_target(y, n_outputs, backend)

    def value_and_grad(self, Z, T, w=None):
        if w is not None:
            return self._weighted(Z, T, w)
        xp = namespace_of(Z)
        inv_b = 1.0 / Z.shape[0]
        if T.ndim == 1:  # integer labels (per-position targets)
            ell, G = self.per_example(Z, T)
            return inv_b * xp.sum(ell), G * inv_b
        # shift by the row max: exact for the largest logit, so p keeps full precision even at |Z| ~ 1e3
        shifted = Z - xp.max(Z, axis=1, keepdims=True)
        e = xp.exp(shifted)
        s = xp.sum(e, axis=1, keepdims=True)
        log_p = shifted
        log_p -= xp.log(s)  # in place: shifted is not needed any more
        dZ = e / s
        dZ -= T
        dZ *= inv_b  # in place on the fresh quotient: (softmax(Z) − y)/B
        return -inv_b * xp.sum(T * log_p), dZ

    def per_example(self, Z, T):
        """ℓ_n = −Σ_k y_nk log p_nk, G = softmax(Z) − y; for integer labels T (N,) y_nk = [k = T_n], compared
        on the fly."""
        xp = namespace_of(Z)
        shifted = Z - xp.max(Z, axis=1, keepdims=True)
        e = xp.exp(shifted)
        s = xp.sum(e, axis=1, keepdims=True)
        if T.ndim == 1:
            T = xp.astype(xp.reshape(T, (-1, 1)) == xp.arange(Z.shape[1], dtype=T.dtype, device=device_of(Z)),
                          Z.dtype)
        return -xp.sum(T * (shifted - xp.log(s)), axis=1), e / s - T

    def predict(self, Z):
        """Class probabilities softmax(Z)."""
        return F.softmax(namespace_of(Z), Z, axis=1)


class BinaryCrossEntropy(Loss):
    """Sigmoid cross-entropy on logits Z (B, K), targets y ∈ [0, 1] of the same shape.

    ℓ = Σ_k −y log σ(z) − (1−y) log(1−σ(z)) = Σ_k max(z, 0) − z·y + log(1 + e^{−|z|}),
    L = (1/B) Σ_n ℓ_n,   ∂L/∂Z = (σ(Z) − y)/B   (B, K).
    """

    name = "binary_cross_entropy"

    def _check_values(self, xp, y):
        if y.shape[0] and not bool(xp.all((y >= 0) & (y <= 1))):
            raise ValueError("BinaryCrossEntropy targets must lie in [0, 1]")

    def value_and_grad(self, Z, T, w=None):
        if w is not None:
            return self._weighted(Z, T, w)
        xp = namespace_of(Z)
        inv_b = 1.0 / Z.shape[0]
        value = inv_b * xp.sum(F.softplus(xp, Z) - Z * T)
        return value, (F.sigmoid(xp, Z) - T) * inv_b

    def per_example(self, Z, T):
        """ℓ_n = Σ_k softplus(z) − z·y, G = σ(Z) − y."""
        xp = namespace_of(Z)
        return xp.sum(F.softplus(xp, Z) - Z * T, axis=1), F.sigmoid(xp, Z) - T

    def predict(self, Z):
        """Probabilities σ(Z)."""
        return F.sigmoid(namespace_of(Z), Z)


class Poisson(Loss):
    """Poisson regression on the log-rate z (the model's linear output), targets y ≥ 0 (counts, rates).

    The negative log-likelihood without its y-only terms: ℓ = Σ_k e^{z} − y·z per example,
    L = (1/B) Σ_n ℓ_n,   ∂L/∂Z = (e^{Z} − y)/B   (B, K);  the prediction is the rate e^{z}.
    e^{z} is taken of min(z, log(max float)) so that a rate beyond the dtype's range saturates at its
    largest number instead of overflowing (no inf, no warning, also for z ~ 1e3).
    """

    name = "poisson"

    def _check_values(self, xp, y):
        if y.shape[0] and not bool(xp.all(y >= 0)):
            raise ValueError("Poisson targets must be non-negative (counts or rates)")

    def _exp(self, Z):
        xp = namespace_of(Z)
        return xp.exp(xp.minimum(Z, 88.0 if Z.dtype == xp.float32 else 709.0))

    def value_and_grad(self, Z, T, w=None):
        if w is not None:
            return self._weighted(Z, T, w)
        xp = namespace_of(Z)
        inv_b = 1.0 / Z.shape[0]
        rate = self._exp(Z)
        return inv_b * xp.sum(rate - T * Z), (rate - T) * inv_b

    def per_example(self, Z, T):
        """ℓ_n = Σ_k e^{z} − y·z, G = e^{Z} − y."""
        rate = self._exp(Z)
        return namespace_of(Z).sum(rate - T * Z, axis=1), rate - T

    def predict(self, Z):
        """The rate e^{Z}."""
        return self._exp(Z)


LOSSES = {"mse": MSE, "cross_entropy": CrossEntropy, "binary_cross_entropy": BinaryCrossEntropy,
          "poisson": Poisson}


def get_loss(loss):
    """A :class:`Loss` instance from an instance, a Loss class or a name."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, type) and issubclass(loss, Loss):
        return loss()
    try:
        return LOSSES[loss]()
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown loss {loss!r}: expected one of {', '.join(repr(k) for k in LOSSES)} or a Loss instance"
        ) from None
