"""Datasets and transforms: ImageNet-style folders, DINO multi-crop, segmentation datasets, synthetic data.

Kept light on purpose (no imports here): import the submodule you need, e.g.
``from sparsedino.data.imagenet import ImageNetFolder``.
"""
