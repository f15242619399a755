"""The data path, one door for all data, by kind of input — and the data sets nnkit ships.

* :mod:`.arrays` — arrays and tables: the checks and conversions (``as_input``, ``as_target``, weights);
* :mod:`.streams` — streams and datasets: memory-mapped arrays, datasets, loaders, the background prefetch;
* :mod:`.ragged` — variable-length sequences: padding, lengths, the padding mask, buckets;
* :mod:`.batches` — the batches ``fit`` and ``predict`` read (:class:`FitData`: the validation split, the shuffle,
  each rank's slice);
* :mod:`.datasets` (``nnkit.datasets``) — the bundled digits (``digits.npz``), CSV and ``.npz`` files, toy sets,
  ``train_test_split``; :mod:`.text` (``nnkit.text``) — tokenizers and token windows; :mod:`.preprocessing` —
  scaling, labels and missing values saved with the model;
* :mod:`.files` — atomic writes and bounded ``.npz`` reads; :mod:`.checks` — the checks of the numbers users pass.

Every name below is reached here too (``nnkit.data.as_input``, ``nnkit.data.FitData``).

``fit``, ``evaluate`` and ``predict`` take, besides in-memory arrays (validated once and sent to the device
once), three kinds of *streams*:

* a **memory-mapped array** (``np.load(path, mmap_mode="r")``, ``np.memmap``) as X (and y): each batch's
  rows are read from the file when the batch is needed — never the whole array into process memory or
  onto the device;
* a **dataset**: any object with ``__len__`` and ``__getitem__(indices)`` returning ``(X, y)`` or ``(X, y, w)``
  for an index array (``fit(dataset)``, no y); shuffled per epoch from the model's seed exactly as in-memory
  data is, so on NumPy a memory-mapped file or a dataset over the same rows trains to bit-identical weights;
* a **re-iterable of batches** ``(X, y)`` / ``(X, y, w)`` of any array library (a PyTorch ``DataLoader``, or a
  function returning a generator: it is called once per epoch).  A one-shot generator feeds one epoch
  only: more is refused with what to pass instead.

Each streamed batch is checked on the host the way in-memory data is checked once (shape, dtype, finite
values, labels) before it goes to the device, and a bad batch is a ``ValueError`` naming the batch;
``fit`` then restores the weights and optimizer state of the epoch's start.  The next batch is prepared
(read, checked and copied to the device) in a background thread while the current step runs: a bounded
prefetch of two batches, its copies on a side stream (``Backend.copy_stream``: pinned memory and
non-blocking copies on torch-CUDA, a stream of its own on CuPy; JAX's ``device_put`` is asynchronous).
"""

from .arrays import (BatchError, as_input, as_target, batch_ranges, batch_sums, check_range, check_weights,
                     class_weights, dense, host_if_foreign, host_or_native, n_rows, named_labels, numeric_host, positions_of,
                     row_weights, rows, slice_rows)
from .streams import BatchIterable, DatasetRows, MappedRows, Stream, is_memmap, is_stream, make_stream, prefetch
from .ragged import (COMPILED_LENGTHS, MAX_PADDING, Sequences, bucketed, check_lengths, compiled_length, host_mask,
                     is_ragged, mask_of, pad_sequences, sequences, target_sequences)
from .batches import FitData, predict, rank_slice

__all__ = ["FitData", "n_rows", "batch_ranges", "batch_sums", "check_weights", "slice_rows", "as_input", "as_target", "rows",
           "dense", "check_range", "host_or_native", "numeric_host", "host_if_foreign", "is_memmap", "is_stream",
           "Stream", "MappedRows", "DatasetRows", "BatchIterable", "make_stream", "prefetch", "BatchError", "predict",
           "class_weights", "pad_sequences", "is_ragged", "Sequences", "sequences", "target_sequences", "mask_of",
           "check_lengths", "host_mask", "positions_of", "row_weights", "named_labels", "compiled_length",
           "bucketed", "COMPILED_LENGTHS", "MAX_PADDING", "rank_slice"]
