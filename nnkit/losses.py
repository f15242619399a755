"""Losses: the (weighted) mean over a batch's rows — its examples, or its positions — of a loss summed over
output units.

Outputs are (B, K), or (B, T, K) — (B, ..., K) in general — for a model that answers at each position; each of
the N rows (N = B, or B·T) has a loss ℓ_n.  Each loss returns the 0-d value and its gradient shaped as the output

    L = Σ_n w_n ℓ_n / Σ_n w_n  (w_n = 1 without weights: L = (1/N) Σ_n ℓ_n),   ∂L/∂out_n = (w_n/Σw) ∂ℓ_n/∂out_n,

so the gradient carries the 1/N (or w/Σw).  A loss states only its terms and their gradient per element
(:meth:`Loss.elementwise`); :class:`Loss` does the reduction, the weights and the masking (a zero weight removes
a position) once.  ``CrossEntropy`` and ``BinaryCrossEntropy`` take *logits* (the last Dense layer's Z) and fold
the softmax/sigmoid in, which is both stable and gives the short gradients below.
"""
from __future__ import annotations

from .backends.functional import device_of, namespace_of

from .backends import functional as F

__all__ = ["Loss", "MSE", "CrossEntropy", "BinaryCrossEntropy", "Poisson", "LOSSES", "get_loss", "as_rows", "check_rows",
           "OutputsLoss"]


class Loss:
    r"""Base class: a loss states its value and gradient at each element once (:meth:`elementwise`); this class
    reduces them — over every position, with the weights, the masking.

    Outputs are (B, ..., K): one row of K outputs per example (B, K), or per position (B, T, K) for a sequence
    model — N = B·T rows in all.  Targets are (B, ..., K) values, or (B, ...) integer class labels for a loss that
    ``keeps_labels`` (cross-entropy; a one-output loss reads them as (B, ..., 1) values).  Weights ``w`` are (B,)
    per example — the same at each of its positions — or (B, ...) per position; a zero weight removes a position
    (padding, a masked token).  With ℓ_n the loss of row n (its elements summed over K):

        L = Σ_n w_n ℓ_n / Σ_n w_n   (L = (1/N) Σ_n ℓ_n without weights; 0 when every weight is 0),
        ∂L/∂out_n = (w_n / Σw) G_n   (B, ..., K), with G_n = ∂ℓ_n/∂out_n.

    That is the mean over the batch's tokens that PyTorch's ``F.cross_entropy`` takes over flattened positions
    (``ignore_index`` = weight 0), not a mean per sequence.
    """

    name = "loss"
    keeps_labels = False  # True: (B, ...) integer class targets stay labels (never a one-hot)

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
        check_rows(y, n_rows)
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
    def elementwise(self, out, T):
        """``(ℓ, G)`` for rows ``out`` (N, K) against ``T`` — (N, K) values, or (N,) labels where the loss
        ``keeps_labels``: ℓ (N, K) the loss's terms, whose sum over K is row n's loss ℓ_n (or ℓ (N,) the rows'
        losses themselves), and G = ∂ℓ_n/∂out_n (N, K), a fresh array.  Each loss states its maths here, once."""
        raise NotImplementedError

    def value_and_grad(self, out, T, w=None):
        """(L as a 0-d array, ∂L/∂out shaped as ``out``): the weighted mean over every row (position) of
        ``out`` (B, ..., K) — see the class docstring; ``w`` is None, (B,) or (B, ...)."""
        xp = namespace_of(out)
        Z, T, share = as_rows(out, T, w, self.keeps_labels)
        ell, G = self.elementwise(Z, T)
        if share is None:
            inv_n = 1.0 / Z.shape[0]
            value = inv_n * xp.sum(ell)
            G *= inv_n  # in place on the fresh gradient: G/N
        else:  # share: (N,) the weight of each row
            total = xp.sum(share)
            share = share / xp.where(total > 0, total, xp.ones_like(total))
            value = xp.sum(share * (ell if ell.ndim == 1 else xp.sum(ell, axis=1)))
            G = G * xp.reshape(share, (-1, 1))
        return value, (G if out.ndim == 2 else xp.reshape(G, tuple(out.shape)))

    def value(self, out, T, w=None):
        """The loss alone (a 0-d array)."""
        return self.value_and_grad(out, T, w)[0]

    def predict(self, out):
        """What the model's output means as a prediction (identity here; probabilities for logits)."""
        return out


def as_rows(out, T, w=None, keeps_labels=True):
    """``(Z (N, K), T, w)``: outputs (B, ..., K) as their N rows, the targets as (N, K) values or (N,) labels
    (labels only where ``keeps_labels``; for one output they are (N, 1) values), the weights ``w`` — (B,) per
    example, the same at each of its positions, or (B, ...) per position — as (N,), or None.  A (B, K) output
    with (B,) or (B, K) targets and (B,) weights is returned as it is."""
    xp = namespace_of(out)
    K = out.shape[-1]
    if out.ndim == 2 and (T.ndim == 2 or keeps_labels):
        Z = out
    else:
        Z = xp.reshape(out, (-1, K))
        if T.ndim == out.ndim:
            T = xp.reshape(T, (-1, K))
        elif T.ndim == out.ndim - 1 and (keeps_labels or K == 1):
            T = xp.reshape(T, (-1,) if keeps_labels else (-1, 1))
        else:
            raise ValueError(f"targets of shape {tuple(T.shape)} do not fit outputs {tuple(out.shape)}: expected "
                             f"{tuple(out.shape)} values" + (f" or {tuple(out.shape[:-1])} class labels"
                                                             if keeps_labels or K == 1 else ""))
    if w is None:
        return Z, T, None
    positions = tuple(out.shape[1:-1])
    if w.ndim == 1 and positions:  # one weight per example, at each of its positions
        w = xp.broadcast_to(xp.reshape(w, (-1,) + (1,) * len(positions)), tuple(out.shape[:-1]))
    if tuple(w.shape) != tuple(out.shape[:-1]):
        raise ValueError(f"weights of shape {tuple(w.shape)} do not fit outputs {tuple(out.shape)}: expected "
                         f"({out.shape[0]},) per example" + (f" or {tuple(out.shape[:-1])} per position"
                                                            if positions else ""))
    return Z, T, (w if w.ndim == 1 else xp.reshape(w, (-1,)))


def check_rows(y, n_rows):
    """A target (or weights) with one row per row of X, else a ValueError saying both counts."""
    if y.shape[0] != n_rows:
        raise ValueError(f"X has {n_rows} rows but y has {y.shape[0]}: they must have the same length")


class MSE(Loss):
    """Quadratic cost: ℓ_n = ½‖a_n − y_n‖² per row.

    Elements ½(a − y)², gradient G = a − y;  unweighted L = (1/2N) Σ_n Σ_k (a_nk − y_nk)², ∂L/∂a = (a − y)/N.
    """

    name = "mse"

    def elementwise(self, A, T):
        """ℓ = ½(a − y)² (N, K), G = a − y."""
        diff = A - T
        return 0.5 * (diff * diff), diff


class CrossEntropy(Loss):
    r"""Softmax cross-entropy on logits Z (N, K) — one row per example, or per position of (B, T, K).

    Targets: integer labels (N,) in [0, K) — (B,) or (B, T), kept integers — or one-hot/probability rows
    (N, K).  With log p = Z − logsumexp(Z) (row-wise, stable, shifted by the row max):

        elements −y_nk log p_nk,  ℓ_n = −Σ_k y_nk log p_nk,  G = softmax(Z) − y   (N, K).

    For labels t (N,), y_nk = [k = t_n]: ℓ_n = −log p_{n, t_n} and G = softmax(Z) − [k = t_n], the indicator a
    comparison made inside the expression — target memory O(N), never a stored (N, K) one-hot.
    """

    keeps_labels = True
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
            check_rows(y, n_rows)
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

    def elementwise(self, Z, T):
        """ℓ = −y ⊙ log softmax(Z) (N, K) — or −log p at each label (N,) — and G = softmax(Z) − y."""
        xp = namespace_of(Z)
        # shift by the row max: exact for the largest logit, so p keeps full precision even at |Z| ~ 1e3
        shifted = Z - xp.max(Z, axis=1, keepdims=True)
        e = xp.exp(shifted)
        s = xp.sum(e, axis=1, keepdims=True)
        log_p = shifted
        log_p -= xp.log(s)  # in place: shifted is not needed any more
        G = e / s
        if T.ndim == 1:  # labels: y_nk = [k = t_n], compared here, never stored
            y = xp.astype(xp.reshape(T, (-1, 1)) == xp.arange(Z.shape[1], dtype=T.dtype, device=device_of(Z)),
                          Z.dtype)
            G -= y
            return -xp.vecdot(y, log_p), G  # ℓ_n = −Σ_k y_nk log p_nk = −log p_{n, t_n} (one term is not 0)
        G -= T
        ell = T * log_p
        ell *= -1.0  # in place: exact, one array fewer
        return ell, G

    def predict(self, Z):
        """Class probabilities softmax(Z)."""
        return F.softmax(namespace_of(Z), Z, axis=1)


class BinaryCrossEntropy(Loss):
    """Sigmoid cross-entropy on logits Z (N, K), targets y ∈ [0, 1] of the same shape.

    Elements −y log σ(z) − (1−y) log(1−σ(z)) = softplus(z) − z·y (stable: max(z, 0) − z·y + log(1 + e^{−|z|})),
    G = σ(Z) − y   (N, K).
    """

    name = "binary_cross_entropy"

    def _check_values(self, xp, y):
        if y.shape[0] and not bool(xp.all((y >= 0) & (y <= 1))):
            raise ValueError("BinaryCrossEntropy targets must lie in [0, 1]")

    def elementwise(self, Z, T):
        """ℓ = softplus(Z) − Z ⊙ y, G = σ(Z) − y."""
        xp = namespace_of(Z)
        return F.softplus(xp, Z) - Z * T, F.sigmoid(xp, Z) - T

    def predict(self, Z):
        """Probabilities σ(Z)."""
        return F.sigmoid(namespace_of(Z), Z)


class Poisson(Loss):
    """Poisson regression on the log-rate z (the model's linear output), targets y ≥ 0 (counts, rates).

    The negative log-likelihood without its y-only terms: elements e^{z} − y·z, G = e^{Z} − y (N, K); the
    prediction is the rate e^{z}.  e^{z} is taken of min(z, log(max float)) so that a rate beyond the dtype's
    range saturates at its largest number instead of overflowing (no inf, no warning, also for z ~ 1e3).
    """

    name = "poisson"

    def _check_values(self, xp, y):
        if y.shape[0] and not bool(xp.all(y >= 0)):
            raise ValueError("Poisson targets must be non-negative (counts or rates)")

    def _exp(self, Z):
        xp = namespace_of(Z)
        return xp.exp(xp.minimum(Z, 88.0 if Z.dtype == xp.float32 else 709.0))

    def elementwise(self, Z, T):
        """ℓ = e^{Z} − y ⊙ Z, G = e^{Z} − y."""
        rate = self._exp(Z)
        return rate - T * Z, rate - T

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


class OutputsLoss:
    r"""The loss of a model with several outputs: L = Σ_k c_k L_k, each output's loss L_k (its own :class:`Loss`,
    on its own targets) times its weight c_k (``loss_weights``, default 1).  Its gradient to output k is
    c_k ∂L_k/∂out_k: the outputs' backward passes start from these and meet where the graph joins.
    ``value_and_grad(outs, Ts, w)`` takes the lists of outputs and targets (``w``: None, or a list of each output's
    weights or Nones)."""

    keeps_labels = False

    def __init__(self, losses, weights=None, names=None, widths=None):
        self.losses = [get_loss(l) for l in losses]
        self.weights = [1.0] * len(self.losses) if weights is None else [float(c) for c in weights]
        if len(self.weights) != len(self.losses):
            raise ValueError(f"{len(self.weights)} loss weights for {len(self.losses)} outputs")
        bad = [c for c in self.weights if not c >= 0.0 or c == float("inf")]
        if bad:
            raise ValueError(f"loss weights must be finite and not negative, got {bad[0]!r}")
        self.names = names or [f"output_{k + 1}" for k in range(len(self.losses))]  # the logs' "{name}_loss"
        self.widths = widths  # each output's K (its metrics' shapes), when known
        self.name = "+".join(l.name for l in self.losses)

    def value_and_grad(self, outs, Ts, w=None):
        """(Σ_k c_k L_k, [c_k ∂L_k/∂out_k for each output])."""
        values, grads = [], []
        for k, (loss, c, out, T) in enumerate(zip(self.losses, self.weights, outs, Ts)):
            wk = w[k] if isinstance(w, list) else w  # one weight an example for every output, or a list
            v, d = loss.value_and_grad(out, T) if wk is None else loss.value_and_grad(out, T, wk)
            values.append(v)
            grads.append(d if c == 1.0 else c * d)
        return self._total(outs, values), grads

    def value(self, outs, Ts, w=None):
        """Σ_k c_k L_k alone (no gradient formed)."""
        values = []
        for k, (loss, out, T) in enumerate(zip(self.losses, outs, Ts)):
            wk = w[k] if isinstance(w, list) else w
            values.append(loss.value(out, T) if wk is None else loss.value(out, T, wk))
        return self._total(outs, values)

    def _total(self, outs, values):
        """Σ_k c_k L_k; each L_k kept with the outputs it scored (``parts_of``: the per-output logs read them
        rather than scoring the batch again)."""
        self._last = (outs, values)
        total = None
        for c, v in zip(self.weights, values):
            v = v if c == 1.0 else c * v
            total = v if total is None else total + v
        return total

    def parts_of(self, outs):
        """The outputs' losses L_k of the last evaluation, when it scored these very outputs (else None)."""
        last = getattr(self, "_last", None)
        return last[1] if last is not None and last[0] is outs else None

    def __repr__(self):
        return f"OutputsLoss({self.losses!r}, weights={self.weights!r})"

