"""Recurrent layers — ``RNN``, ``GRU``, ``LSTM`` — with backprop through time derived by hand.

Batch-first, as PyTorch's ``batch_first=True``: X (B, T, F) → Y (B, T, H·directions), or with
``return_sequences=False`` the final states (B, H·directions) as PyTorch's ``h_n`` holds them (the forward
direction's after the last step, the reverse direction's after its last step, which is the sequence's first).
Parameters are stored, named, laid out and initialised as PyTorch's, so they map one to one:
``weight_ih`` (G·H, F), ``weight_hh`` (G·H, H), ``bias_ih`` (G·H,), ``bias_hh`` (G·H,), and the same with
``_reverse`` for the backward direction of a bidirectional layer; G = 1 (RNN), 3 (GRU: r, z, n), 4 (LSTM: i, f,
g, o); every entry drawn from U(−1/√H, 1/√H).  The initial state is zero.

The forward pass projects every time step's input at once — XW = X·W_ihᵀ + b_ih, one GEMM over B·T rows —
and then runs the recurrence over t, keeping what each step's backward needs.  The backward pass runs t from
the last step to the first, carrying dh (and dc for the LSTM) backwards: at each step the gate Jacobians turn
dh into the gates' pre-activation gradients d(gates) (B, G·H), which give dW_hh += d(gates)ᵀ·h_{t−1},
db_hh += Σ_B d(gates) and dh_{t−1} = d(gates)·W_hh + (the direct path); the input side is summed over all
steps at the end: dW_ih = Σ_t d(gates_in)_tᵀ·x_t (one GEMM over B·T rows), db_ih = Σ d(gates_in), dX = d(gates_in)·W_ih.
Each direction of a bidirectional layer is this on the reversed sequence, with its own weights.

Both loops over t are written once as a step function handed to :func:`nnkit.functional.scan` (time on axis 0):
a Python loop when the step runs eagerly, the backend's loop primitive when it is compiled — ``lax.scan`` on JAX
with ``compile=True``, so the recurrence is compiled once, not unrolled into T copies, and the compile time does
not grow with T.

Under a mixed precision policy the input projection and the input side of the backward pass (dW_ih, dX: the
large GEMMs over B·T rows) run in the compute dtype; the recurrence itself — the hidden-to-hidden products, the
gate sums and nonlinearities, the states h and c and their gradients — stays in float32, where a long sequence
would otherwise lose digits step after step.

Variable lengths, as PyTorch's packed sequences: the padding mask m (B, T) is 1 at t < length_b and 0 after (a
prefix: sequences padded at their end, as ``nnkit.data`` pads them).  The meaning is PyTorch's: a sequence's
state is carried unchanged past its end, its outputs are zero there, its final state is the one of its last
valid step, and the reverse direction starts at each sequence's own last step.  Each direction gets there with
as little work per step as its padding allows:

* **Forward direction** (padding after the valid steps): the recurrence runs unmasked, s_t = step(s_{t−1}, x_t).
  Steps t < length_b never see the padding, so they are exact; the states after the end are never read: the
  outputs are y_t = m_t ⊙ h_t (zero at padding), and the final state is gathered at the last valid step,
  h_n = Σ_t e_t ⊙ h_t with e_t = m_t − m_{t+1} (1 only at t = length_b − 1).  Backward: dh_t receives
  m_t ⊙ dY_t (sequences) or e_t ⊙ dh_n (final state); every gradient arriving at a padded step is zero, so the
  padded steps carry zero back and add nothing to dW, db or dX.
* **Reverse direction** (the flipped sequence: its padding comes first): s_t = m_t ⊙ step(s_{t−1}, x_t), so the
  state stays zero through the padding and the first valid step starts from the zero state; its final state is
  that of step 0 (PyTorch's ``h_n`` of a packed sequence).  Backward: ds̃_t = m_t ⊙ ds_t goes into the step's gate
  Jacobians (zero at padding), and ds_{t−1} = (the step's Jacobian)ᵀ·ds̃_t — there is no direct path past m.

So a masked step costs one elementwise product in the reverse direction and none in the forward one.
"""
from __future__ import annotations

import math
from typing import Any

from ..backends import functional as F
from ..backends.functional import Array, device_of
from .core import Layer, ShapeError, check_size, own_torch_class

__all__ = ["RNN", "GRU", "LSTM"]


def _recurrent_torch_class(nn):
    """The PyTorch module class of nnkit's Recurrent (``nnkit.export.pytorch.Recurrent``)."""
    class Recurrent(nn.Module):
        """x (B, T, F) → the recurrent module's outputs (B, T, H·dirs), or its final states (B, H·dirs);
        with ``lengths`` (B,) the padded batch runs as a packed sequence (each sequence stops at its end,
        padded outputs zero), as nnkit's layer with the padding mask."""

        takes_lengths = True  # nnkit.export.pytorch.WithLengths hands it the batch's lengths

        def __init__(self, rnn, return_sequences=True):
            super().__init__()
            self.rnn, self.return_sequences = rnn, bool(return_sequences)

        def forward(self, x, lengths=None):
            """The outputs, or h_n's directions concatenated (the LSTM's h, not c)."""
            if lengths is None:
                out, state = self.rnn(x)
            else:
                rnn_utils = nn.utils.rnn
                packed = rnn_utils.pack_padded_sequence(x, lengths.cpu(), batch_first=True,
                                                        enforce_sorted=False)
                out, state = self.rnn(packed)
                out = rnn_utils.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]
            if self.return_sequences:
                return out
            h = state[0] if isinstance(state, tuple) else state
            return h.transpose(0, 1).reshape(x.shape[0], -1)

    return Recurrent


class _Recurrent(Layer):
    """The shared machinery: parameters per direction, the input projection, direction reversal, the output
    form.  A subclass states ``gates`` and implements ``_step``/``_step_back`` for one time step."""

    gates = 1
    torch_name = ""  # the torch.nn class: "RNN", "GRU", "LSTM"

    def __init__(self, input_size: int, hidden_size: int, bidirectional: bool = False,
                 return_sequences: bool = True) -> None:
        super().__init__()
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = check_size("hidden_size", hidden_size)
        self.bidirectional, self.return_sequences = bool(bidirectional), bool(return_sequences)
        suffixes = ("", "_reverse") if self.bidirectional else ("",)
        self.param_names = tuple(f"{n}{s}" for s in suffixes for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    @property
    def directions(self):
        return 2 if self.bidirectional else 1

    def param_shapes(self):
        G, H, Fi = self.gates * self.hidden_size, self.hidden_size, self.input_size
        shapes = {"weight_ih": (G, Fi), "weight_hh": (G, H), "bias_ih": (G,), "bias_hh": (G,)}
        return {f"{n}{s}": shape for s in (("", "_reverse") if self.bidirectional else ("",))
                for n, shape in shapes.items()}

    def build(self, backend, rng):
        super().build(backend, rng)
        bound = 1.0 / math.sqrt(self.hidden_size)
        self.params = {name: backend.asarray(rng.uniform(-bound, bound, size=shape), dtype=backend.dtype)
                       for name, shape in self.param_shapes().items()}

    def input_shape(self):
        return (None, self.input_size)

    def output_shape(self, in_shape):
        in_shape = tuple(in_shape)
        if len(in_shape) != 2 or in_shape[1] not in (None, self.input_size):
            raise ShapeError(f"expects (B, T, {self.input_size}) sequences")
        width = self.hidden_size * self.directions
        return (in_shape[0], width) if self.return_sequences else (width,)

    # -- forward -------------------------------------------------------------------------------------
    takes_mask = True
    onnx_lengths = True  # to_onnx passes the exported graph's lengths on as sequence_lens

    @property
    def keeps_positions(self):
        return self.return_sequences

    def forward(self, X: Array, train: bool = True, mask: Array | None = None) -> Array:
        """Y (B, T, H·dirs) — or the final states (B, H·dirs) — for X (B, T, F); keeps every step's values
        when ``train``.  ``mask`` (B, T): 1 at a sequence's steps, 0 at its padding (see the module docstring)."""
        xp = self.xp
        outs, finals, caches = [], [], []
        for d, suffix in enumerate(("", "_reverse")[:self.directions]):
            p = {k: self.params[k + suffix] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            Xd = xp.flip(X, axis=1) if d else X
            B, T = X.shape[0], X.shape[1]
            rows = xp.reshape(self.compute(Xd), (B * T, self.input_size))
            XW = xp.reshape(self.storage(rows @ self.compute(p["weight_ih"]).T) + p["bias_ih"],
                            (B, T, self.gates * self.hidden_size))  # the one big GEMM, in the compute dtype
            state = self._zero_state(xp, B, XW.dtype)  # the recurrence in the storage dtype (float32)
            M = None if mask is None else xp.astype(xp.flip(mask, axis=1) if d else mask, XW.dtype)[:, :, None]
            gate = M is not None and d  # the reverse direction: s_t = m_t ⊙ s̃_t keeps the zero state through padding

            def step(state, x, p=p):
                xw, m = x
                state, keep = self._step(xp, xw, state, p)
                if m is not None:
                    state = tuple(m * a for a in state)
                return state, (state[0], keep)

            # the loop over t: the backend's loop primitive (compiled once under compile=True), time on axis 0
            last, (hs, steps) = F.scan(xp, step, state, (_time_major(xp, XW), _time_major(xp, M) if gate else None))
            H = _time_major(xp, hs)  # (B, T, H)
            if M is not None and not d:
                H = H * M  # y_t = m_t ⊙ h_t: zero past each sequence's end
            outs.append(xp.flip(H, axis=1) if d else H)
            if M is not None and not d and not self.return_sequences:
                finals.append(xp.sum(H * _last_step(xp, M), axis=1))  # h_n = Σ_t e_t ⊙ h_t
            else:
                finals.append(last[0])
            caches.append((Xd, steps, M, H))
        if train:
            self._cache = caches
        if self.return_sequences:
            return self.compute(outs[0] if self.directions == 1 else xp.concat(outs, axis=2))
        return self.compute(finals[0] if self.directions == 1 else xp.concat(finals, axis=1))

    def _zero_state(self, xp, B, dtype):
        h = xp.zeros((B, self.hidden_size), dtype=dtype, device=device_of(self.params["weight_hh"]))
        return (h,)

    def _step(self, xp, xw, state, p):
        """One time step: ``(new state, what its backward needs)`` from the input projection ``xw`` (B, G·H),
        the state (h, or (h, c)) and the direction's parameters ``p``."""
        raise NotImplementedError

    def _step_back(self, xp, dstate, keep, p):
        """One step back: ``(d input gates, d hidden gates, the state's direct gradient, h_{t−1})`` from the
        state's gradient and what :meth:`_step` kept."""
        raise NotImplementedError

    # -- backward ----------------------------------------------------------------------------------------
    def backward(self, dY: Array, need_dX: bool = True) -> Array | None:
        """Backprop through time, per direction: dh carried from the last step to the first (see the module
        docstring); dW_ih, db_ih and dX from the steps' input-gate gradients in one GEMM each."""
        xp, H = self.xp, self.hidden_size
        dY = self.storage(dY)  # the recurrence's gradients in float32 under a mixed policy
        grads, dX = {}, None
        record = getattr(self, "_record", None)  # explain's per-step view: [(direction, ∂L/∂h_t (T, B, H))]
        recording = record is not None
        for d, suffix in enumerate(("", "_reverse")[:self.directions]):
            p = {k: self.params[k + suffix] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            Xd, steps, M, _ = self._cache[d]
            B, T = Xd.shape[0], Xd.shape[1]
            gate = M is not None and d  # the reverse direction's s_t = m_t ⊙ s̃_t
            if self.return_sequences:
                dH = dY[:, :, d * H:(d + 1) * H]  # (B, T, H) for this direction, in its own time order
                if d:
                    dH = xp.flip(dH, axis=1)
                elif M is not None:
                    dH = dH * M  # y_t = m_t ⊙ h_t
                dfinal = None
            elif M is not None and not d:  # h_n = Σ_t e_t ⊙ h_t: dh_t = e_t ⊙ dh_n
                dH, dfinal = _last_step(xp, M) * dY[:, None, d * H:(d + 1) * H], None
            else:
                dH, dfinal = None, dY[:, d * H:(d + 1) * H]
            dstate = self._zero_state(xp, B, dY.dtype)
            if dfinal is not None:
                dstate = (dfinal,) + dstate[1:]

            def step_back(carry, x, p=p):
                dstate, dW_hh, db_hh = carry
                dH_t, m, keep = x
                dh = dstate[0] if dH_t is None else dstate[0] + dH_t
                ds = (dh,) + dstate[1:]  # ds_t, the whole gradient of the carried state
                if m is not None:
                    ds = tuple(m * a for a in ds)  # ds̃_t = m_t ⊙ ds_t
                dgi, dgh, dstate_prev_direct, h_prev = self._step_back(xp, ds, keep, p)
                dW_hh = dW_hh + dgh.T @ h_prev
                db_hh = db_hh + xp.sum(dgh, axis=0)
                dh_prev = dstate_prev_direct[0] + dgh @ p["weight_hh"]
                return ((dh_prev,) + dstate_prev_direct[1:], dW_hh, db_hh), (dgi, ds[0] if recording else None)

            carry = (dstate, xp.zeros_like(p["weight_hh"]), xp.zeros_like(p["bias_hh"]))
            xs = (None if dH is None else _time_major(xp, dH), _time_major(xp, M) if gate else None, steps)
            (_, dW_hh, db_hh), (dG, dh_t) = F.scan(xp, step_back, carry, xs, reverse=True)  # t = T−1, ..., 0
            if record is not None:
                record.append((d, dh_t))  # (T, B, H): ∂L/∂h_t reaching each step
            dG = xp.reshape(_time_major(xp, dG), (B * T, self.gates * H))  # (B·T, G·H)
            grads["weight_ih" + suffix] = self.storage(self.compute(dG).T @ xp.reshape(self.compute(Xd),
                                                                                    (B * T, self.input_size)))
            grads["bias_ih" + suffix] = xp.sum(dG, axis=0)
            grads["weight_hh" + suffix] = dW_hh
            grads["bias_hh" + suffix] = db_hh
            if need_dX:
                dXd = xp.reshape(self.compute(dG) @ self.compute(p["weight_ih"]), (B, T, self.input_size))
                dXd = xp.flip(dXd, axis=1) if d else dXd
                dX = dXd if dX is None else dX + dXd
        self.grads = grads
        return dX

    # -- explain: one step through time, summarised per time step ------------------------------------------------
    def _per_step(self, report, i, what, name, norms, note_fmt):
        """One line per direction: ``norms`` (dirs, T) in the sequence's own time order."""
        for d, suffix in enumerate(("", "_reverse")[:self.directions]):
            v, xp = norms[d], self.xp  # explain reads the host once per line; no training step does
            where = " (reverse direction)" if d else (" (forward direction)" if self.directions == 2 else "")
            hi, lo = int(xp.argmax(v)), int(xp.argmin(v))
            note = note_fmt.format(hi=hi, vhi=float(v[hi]), lo=lo, vlo=float(v[lo]))
            report.add(f"{what} for t = 0..{v.shape[0] - 1}{where}   [{report.tag(i, self)}]", v,
                       f"{name}{i}{suffix}", note=note)

    def explain_forward(self, report, i, X, Y):
        """The recurrence's formula and output, then ‖h_t‖ at each time step (over the batch), per direction."""
        doc = (type(self).__doc__ or "").strip().splitlines()
        report.add(f"Y{i} = {type(self).__name__}(X) over the time steps   [{report.tag(i, self)}: "
                   f"{doc[0] if doc else ''}]", Y, f"A{i}")
        xp = self.xp
        norms = [xp.sqrt(xp.sum(c[3] * c[3], axis=(0, 2))) for c in self._cache]
        norms = [xp.flip(n, axis=0) if d else n for d, n in enumerate(norms)]
        self._per_step(report, i, "‖h_t‖ (the state's norm over the batch)", "h_norm", norms,
                       "largest at t = {hi} ({vhi:.4g}), smallest at t = {lo} ({vlo:.4g})")

    def explain_backward(self, report, i, dY, need_dX):
        """Backprop through time as the training step runs it, with ∂L/∂h_t's norm at each time step, per
        direction — the figure that shows a gradient vanishing (or exploding) on its way back through time."""
        self._record = []
        try:
            dX = super().explain_backward(report, i, dY, need_dX)
            record = self._record
        finally:
            del self._record
        xp = self.xp
        norms = []
        for d, dh in record:
            n = xp.sqrt(xp.sum(dh * dh, axis=(1, 2)))
            norms.append(xp.flip(n, axis=0) if d else n)
        self._per_step(report, i, "‖∂L/∂h_t‖ (the gradient reaching each step, over the batch)", "dh_norm", norms,
                       "largest at t = {hi} ({vhi:.4g}), smallest at t = {lo} ({vlo:.4g}): a ratio far below 1 "
                       "is a gradient vanishing through time, far above 1 one exploding")
        return dX

    # -- the ways out ------------------------------------------------------------------------------------------
    onnx_gate_order: tuple[int, ...] = (0,)  # which of PyTorch's gate blocks ONNX's operator takes in turn

    def _onnx_stacked(self, name):
        """The weights of both directions as ONNX wants them: (dirs, G·H, ·), gate blocks in ONNX's order (an array
        of the model's backend; the graph copies it to the host)."""
        xp, H = self.xp, self.hidden_size
        return xp.stack([xp.concat([self.params[name + suffix][k * H:(k + 1) * H] for k in self.onnx_gate_order],
                                   axis=0) for suffix in ("", "_reverse")[:self.directions]])

    def to_onnx(self, g, x):
        """ONNX's ``RNN``/``GRU``/``LSTM`` operator (time-major: the batch and time axes swapped around it), PyTorch's
        gate blocks reordered to ONNX's, B = [b_ih, b_hh]; the outputs (T, dirs, B, H) brought back to
        (B, T, dirs·H), or Y_h (dirs, B, H) to (B, dirs·H)."""
        W, R = self._onnx_stacked("weight_ih"), self._onnx_stacked("weight_hh")
        bias = self.xp.concat([self._onnx_stacked("bias_ih"), self._onnx_stacked("bias_hh")], axis=1)
        attrs = dict(hidden_size=self.hidden_size, direction="bidirectional" if self.bidirectional else "forward")
        attrs.update(self._onnx_attrs())
        xt = g.op("Transpose", [x], "time_major", perm=[1, 0, 2])
        inputs = [xt, g.const(W, "W"), g.const(R, "R"), g.const(bias, "B")]
        if g.lengths is not None:  # variable lengths: each sequence stops at its end (sequence_lens, int32)
            inputs.append(g.lengths)
        y, y_h = g.op(self.torch_name, inputs, self.torch_name.lower(), outputs=2, **attrs)[:2]
        if self.return_sequences:
            yb = g.op("Transpose", [y], "batch_major", perm=[2, 0, 1, 3])
            return g.op("Reshape", [yb, g.ints([0, 0, -1])], "sequences")
        hb = g.op("Transpose", [y_h], "batch_major", perm=[1, 0, 2])
        return g.op("Reshape", [hb, g.ints([0, -1])], "final_states")

    def _onnx_attrs(self):
        return {}

    @classmethod
    def torch_module(cls, nn):
        """``nnkit.export.pytorch.Recurrent``: PyTorch's ``nn.RNN``/``nn.GRU``/``nn.LSTM`` (batch-first) inside a
        module that returns what the nnkit layer returns — the outputs, or h_n's directions side by side —
        since PyTorch's return a tuple (built once, on first use)."""
        return own_torch_class(_Recurrent, nn, _recurrent_torch_class)

    def _torch_kwargs(self):
        return {}

    def to_torch(self, ctx):
        """PyTorch's module of the same name (``batch_first=True``) with these weights (``weight_ih_l0``, ...,
        ``_reverse`` for the backward direction), in :meth:`torch_module`."""
        rnn = getattr(ctx.nn, self.torch_name)(self.input_size, self.hidden_size, batch_first=True,
                                                bidirectional=self.bidirectional, dtype=ctx.dtype,
                                                **self._torch_kwargs())
        for name in self.param_names:
            ctx.load(getattr(rnn, _torch_name(name)), self.params[name])
        return self.torch_module(ctx.nn)(rnn, self.return_sequences)

    @classmethod
    def torch_classes(cls, nn):
        """The wrapper of :meth:`torch_module`, one for the three kinds: ``from_torch`` builds the layer of the
        inner module's kind, whichever of the three the registry finds first."""
        return (cls.torch_module(nn),)

    @classmethod
    def from_torch(cls, m, ctx):
        rnn = m.rnn
        kinds = {"RNN": RNN, "GRU": GRU, "LSTM": LSTM}
        layer_cls = kinds.get(type(rnn).__name__)
        if layer_cls is None or type(rnn) is not getattr(ctx.nn, type(rnn).__name__, None):
            raise ctx.refuse(f"the recurrent module is {type(rnn).__name__}, not nn.RNN, nn.GRU or nn.LSTM")
        if rnn.num_layers != 1 or not rnn.bias or not rnn.batch_first or getattr(rnn, "proj_size", 0) \
                or (rnn.dropout and rnn.num_layers > 1):
            raise ctx.refuse("nnkit's recurrent layers are one layer each (stack them in a Sequential), with biases, "
                             "batch_first=True and no projection")
        extra = {"nonlinearity": rnn.nonlinearity} if layer_cls is RNN else {}
        layer = layer_cls(rnn.input_size, rnn.hidden_size, bidirectional=rnn.bidirectional,
                          return_sequences=m.return_sequences, **extra)
        params = {name: ctx.array(getattr(rnn, _torch_name(name))) for name in layer.param_names}
        return layer, params, {}

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "input_size": self.input_size, "hidden_size": self.hidden_size,
                "bidirectional": self.bidirectional, "return_sequences": self.return_sequences}

    def __repr__(self):
        extra = (", bidirectional=True" if self.bidirectional else "") + \
            ("" if self.return_sequences else ", return_sequences=False")
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size}{extra})"


def _time_major(xp, A):
    """(B, T, ·) ↔ (T, B, ·): the scan's loop runs over axis 0 (a view on NumPy)."""
    return xp.permute_dims(A, (1, 0) + tuple(range(2, A.ndim)))


def _last_step(xp, M):
    """e (B, T, 1): 1 at each sequence's last valid step, e_t = m_t − m_{t+1} (m_T = 0), for a prefix mask M (B, T, 1)."""
    return M - xp.concat([M[:, 1:, :], xp.zeros_like(M[:, :1, :])], axis=1)


def _torch_name(name):
    """PyTorch's name of a parameter: ``weight_ih`` → ``weight_ih_l0``, ``weight_ih_reverse`` → ``weight_ih_l0_reverse``."""
    base, reverse = (name[:-len("_reverse")], "_reverse") if name.endswith("_reverse") else (name, "")
    return f"{base}_l0{reverse}"


class RNN(_Recurrent):
    r"""Elman RNN: h_t = f(x_t·W_ihᵀ + b_ih + h_{t−1}·W_hhᵀ + b_hh), f = tanh (or ``nonlinearity="relu"``).

    Backward at step t, with dh = ∂L/∂h_t (B, H) (from the output at t and from step t+1):
    da = dh ⊙ f'(a) — (1 − h_t²) for tanh, [a > 0] for ReLU — (B, H); dW_hh += daᵀ·h_{t−1} (H, H);
    dh_{t−1} = da·W_hh (B, H); the input side da → dW_ih, db_ih, dX (see the module docstring).
    """

    gates = 1
    torch_name = "RNN"

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh", bidirectional: bool = False,
                 return_sequences: bool = True) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, bidirectional, return_sequences)
        self.nonlinearity = nonlinearity

    def _step(self, xp, xw, state, p):
        h_prev = state[0]
        a = xw + h_prev @ p["weight_hh"].T + p["bias_hh"]
        h = xp.tanh(a) if self.nonlinearity == "tanh" else xp.maximum(a, 0.0)
        return (h,), (h_prev, h)

    def _step_back(self, xp, dstate, keep, p):
        h_prev, h = keep
        dh = dstate[0]
        da = dh * (1.0 - h * h) if self.nonlinearity == "tanh" else dh * xp.astype(h > 0, h.dtype)
        return da, da, (xp.zeros_like(dh),), h_prev

    def _torch_kwargs(self):
        return {"nonlinearity": self.nonlinearity}

    def _onnx_attrs(self):
        act = "Tanh" if self.nonlinearity == "tanh" else "Relu"
        return {"activations": [act] * self.directions}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "nonlinearity": self.nonlinearity}


class GRU(_Recurrent):
    r"""Gated recurrent unit, PyTorch's gates r, z, n (rows of W in that order), b_hn inside r ⊙ (·):

        r = σ(i_r + h_r),  z = σ(i_z + h_z),  n = tanh(i_n + r ⊙ h_n),  h_t = (1 − z) ⊙ n + z ⊙ h_{t−1},

    with (i_r, i_z, i_n) = x_t·W_ihᵀ + b_ih and (h_r, h_z, h_n) = h_{t−1}·W_hhᵀ + b_hh, each (B, H).

    Backward at step t, dh = ∂L/∂h_t (B, H):
    dn = dh ⊙ (1 − z), dz = dh ⊙ (h_{t−1} − n), direct dh_{t−1} = dh ⊙ z;
    dn̄ = dn ⊙ (1 − n²) (n's pre-activation), dr = dn̄ ⊙ h_n, dz̄ = dz ⊙ z(1 − z), dr̄ = dr ⊙ r(1 − r);
    the input gates' gradient [dr̄, dz̄, dn̄] and the hidden gates' [dr̄, dz̄, dn̄ ⊙ r] (B, 3H): dW_hh += (·)ᵀ·h_{t−1},
    dh_{t−1} = dh ⊙ z + [dr̄, dz̄, dn̄ ⊙ r]·W_hh.
    """

    gates = 3
    torch_name = "GRU"
    onnx_gate_order = (1, 0, 2)  # ONNX: z, r, h

    def _onnx_attrs(self):
        return {"linear_before_reset": 1}  # PyTorch's n = tanh(i_n + r ⊙ (W_hn·h + b_hn))

    def _step(self, xp, xw, state, p):
        H = self.hidden_size
        h_prev = state[0]
        gh = h_prev @ p["weight_hh"].T + p["bias_hh"]
        r = F.sigmoid(xp, xw[:, :H] + gh[:, :H])
        z = F.sigmoid(xp, xw[:, H:2 * H] + gh[:, H:2 * H])
        hn = gh[:, 2 * H:]
        n = xp.tanh(xw[:, 2 * H:] + r * hn)
        h = (1.0 - z) * n + z * h_prev
        return (h,), (h_prev, r, z, n, hn)

    def _step_back(self, xp, dstate, keep, p):
        h_prev, r, z, n, hn = keep
        dh = dstate[0]
        dn_bar = dh * (1.0 - z) * (1.0 - n * n)
        dz_bar = dh * (h_prev - n) * (z * (1.0 - z))
        dr_bar = dn_bar * hn * (r * (1.0 - r))
        dgi = xp.concat([dr_bar, dz_bar, dn_bar], axis=1)
        dgh = xp.concat([dr_bar, dz_bar, dn_bar * r], axis=1)
        return dgi, dgh, (dh * z,), h_prev


class LSTM(_Recurrent):
    r"""Long short-term memory, PyTorch's gates i, f, g, o (rows of W in that order):

        (a_i, a_f, a_g, a_o) = x_t·W_ihᵀ + b_ih + h_{t−1}·W_hhᵀ + b_hh,
        i, f, o = σ(a_i), σ(a_f), σ(a_o),  g = tanh(a_g),  c_t = f ⊙ c_{t−1} + i ⊙ g,  h_t = o ⊙ tanh(c_t).

    Backward at step t with dh = ∂L/∂h_t and dc = ∂L/∂c_t from step t+1 (B, H):
    dc ← dc + dh ⊙ o ⊙ (1 − tanh²c_t); the gates' pre-activation gradient
    [dc ⊙ g ⊙ i(1 − i), dc ⊙ c_{t−1} ⊙ f(1 − f), dc ⊙ i ⊙ (1 − g²), dh ⊙ tanh(c_t) ⊙ o(1 − o)] (B, 4H), shared by the
    input and hidden sides; dW_hh += (·)ᵀ·h_{t−1}, dh_{t−1} = (·)·W_hh, dc_{t−1} = dc ⊙ f.
    With ``return_sequences=False`` the output is h_n (not c_n), as ``nn.LSTM``'s h_n.
    """

    gates = 4
    torch_name = "LSTM"
    onnx_gate_order = (0, 3, 1, 2)  # ONNX: i, o, f, c

    def _zero_state(self, xp, B, dtype):
        h = xp.zeros((B, self.hidden_size), dtype=dtype, device=device_of(self.params["weight_hh"]))
        return (h, xp.zeros_like(h))

    def _step(self, xp, xw, state, p):
        H = self.hidden_size
        h_prev, c_prev = state
        a = xw + h_prev @ p["weight_hh"].T + p["bias_hh"]
        i = F.sigmoid(xp, a[:, :H])
        f = F.sigmoid(xp, a[:, H:2 * H])
        g = xp.tanh(a[:, 2 * H:3 * H])
        o = F.sigmoid(xp, a[:, 3 * H:])
        c = f * c_prev + i * g
        tc = xp.tanh(c)
        h = o * tc
        return (h, c), (h_prev, c_prev, i, f, g, o, tc)

    def _step_back(self, xp, dstate, keep, p):
        h_prev, c_prev, i, f, g, o, tc = keep
        dh, dc = dstate
        dc = dc + dh * o * (1.0 - tc * tc)
        da = xp.concat([dc * g * (i * (1.0 - i)), dc * c_prev * (f * (1.0 - f)), dc * i * (1.0 - g * g),
                        dh * tc * (o * (1.0 - o))], axis=1)
        return da, da, (xp.zeros_like(dh), dc * f), h_prev
