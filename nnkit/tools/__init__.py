"""Tools around the library: the command line, the benchmarks, plots, the worked example, the gradient check,
the learning-rate finder and the scikit-learn estimators.

* :mod:`.cli` — ``nnkit train | predict | generate | data | explain | export | bench``;
* :mod:`.bench` — the kernel and step benchmarks behind ``nnkit bench``;
* :mod:`.plots` — training curves, decision boundaries, attention maps (matplotlib);
* :mod:`.explain` — the worked 2-2-2 example, every number of one step;
* :mod:`.gradcheck` — ``nnkit.gradcheck``: the backward pass against central differences in float64;
* :mod:`.lr_finder` — ``nnkit.lr_find``: the learning-rate range test;
* :mod:`.sklearn` — ``MLPClassifier``/``MLPRegressor``, reached as ``nnkit.sklearn`` (needs scikit-learn).

Nothing here is imported by the library below it; each tool is imported when it is used.
"""
