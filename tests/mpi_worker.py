"""Run by tests/test_distributed.py under ``mpiexec -n K`` (and in-process with K = 1).

Trains a float64 MLP with Adam, an L2 penalty, validation data and an uneven last batch
(233 rows, global batch 50), and writes rank 0's weights and history to an .npz.
Usage: python tests/mpi_worker.py OUT.npz EPOCHS [CHECKPOINT]; the backend is NNKIT_TEST_BACKEND
(default numpy; tests/test_gpu.py runs it with cupy), the precision policy NNKIT_TEST_PRECISION (none:
float64; a policy: float32 master weights), NNKIT_TEST_CONV=1 for a small CNN instead of the MLP,
NNKIT_TEST_SEQ=pooled|positions|attention for variable-length sequences (a list of 233 sequences of 1 to 9 steps)
through a bidirectional GRU, with one label per sequence or a label per position, or through a causal Transformer
block with a label per position; NNKIT_TEST_GRAPH=1 for a graph (nnkit.Model: a fan-out joined by Concatenate).
"""
import os
import sys

import numpy as np

import nnkit


def data():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(233, 6))
    y = (X[:, :3].sum(axis=1) > 0).astype(int) + (X[:, 3] > 0.5)
    Xv = rng.normal(size=(41, 6))
    yv = (Xv[:, :3].sum(axis=1) > 0).astype(int) + (Xv[:, 3] > 0.5)
    return X, y, Xv, yv


def sequences(per_position):
    """Lists of (T_i, 6) sequences and their labels: one per sequence, or one per position ((T_i,) arrays)."""
    X, y, Xv, yv = data()
    rng = np.random.default_rng(8)

    def cut(rows, labels):
        lengths = rng.integers(1, 10, size=len(rows))
        seqs = [np.outer(np.linspace(1.0, 0.2, n), r) for n, r in zip(lengths, rows)]
        return seqs, ([np.full(n, c) for n, c in zip(lengths, labels)] if per_position else labels)

    return cut(X, y) + cut(Xv, yv)


def run(comm, out, epochs, checkpoint=None):
    seq = os.environ.get("NNKIT_TEST_SEQ")
    X, y, Xv, yv = data() if not seq else sequences(seq != "pooled")
    rank = 0 if comm is None else comm.rank
    # the other ranks start from other weights on purpose: fit must broadcast rank 0's
    precision = os.environ.get("NNKIT_TEST_PRECISION") or None  # a mixed policy keeps float32 master weights
    layers = [nnkit.Dense(6, 16), nnkit.Tanh(), nnkit.Dense(16, 3)]
    if os.environ.get("NNKIT_TEST_CONV"):  # the rows as 1×6 signals through a convolution and a pool
        layers = [nnkit.Reshape((1, 6)), nnkit.Conv1D(1, 4, 3, padding=1), nnkit.Tanh(), nnkit.MaxPool1D(2),
                  nnkit.Flatten(), nnkit.Dense(12, 16), nnkit.Tanh(), nnkit.Dense(16, 3)]
    if seq:  # a bidirectional GRU that stops at each sequence's end
        layers = [nnkit.GRU(6, 5, bidirectional=True, return_sequences=seq == "positions"), nnkit.Dense(10, 3)]
    if seq == "attention":  # a causal Transformer block, its keys padded, a label per position
        layers = [nnkit.Dense(6, 8), nnkit.PositionalEmbedding(9, 8), nnkit.TransformerBlock(8, 2, causal=True),
                  nnkit.Dense(8, 3)]
    options = {"dtype": "float32" if precision else "float64", "precision": precision,
               "seed": 0 if rank == 0 else 100 + rank, "backend": os.environ.get("NNKIT_TEST_BACKEND", "numpy")}
    if os.environ.get("NNKIT_TEST_GRAPH"):  # a graph: a fan-out joined again
        x = nnkit.Input((6,))
        h = nnkit.Dense(6, 16)(x)
        model = nnkit.Model(x, nnkit.Dense(32, 3)(nnkit.Concatenate()([nnkit.Tanh()(h), nnkit.Sigmoid()(h)])),
                            **options)
    else:
        model = nnkit.Sequential(layers, input_shape=(None, 6) if seq else (6,), **options)
    history = model.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=epochs, batch_size=50,
                        validation_data=(Xv, yv), verbose=0, comm=comm, regularizer=nnkit.optim.L2(1e-3),
                        checkpoint=checkpoint, resume=checkpoint is not None)
    if rank == 0:
        np.savez(out, **{f"param/{k}": v for k, v in model.state_dict().items()},
                 loss=history["loss"], val_loss=history["val_loss"], accuracy=history["accuracy"],
                 val_accuracy=history["val_accuracy"])


if __name__ == "__main__":
    from nnkit.training.distributed import MPICommunicator

    run(MPICommunicator(), sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
