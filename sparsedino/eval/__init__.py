"""Frozen-feature evaluation protocols: features (cache), k-NN, linear probe grid, linear segmentation probe.

One protocol per file; import the submodule you need, e.g. ``from sparsedino.eval.knn import run_knn``.
"""
