"""The headline metrics of a run: one name per dataset the package reads, values in percent."""

from __future__ import annotations

from sparsedino.data.segmentation import SEG_DATASETS, SEG_TITLES
from sparsedino.pipeline.metrics import run_metrics


def test_every_segmentation_dataset_has_a_report_title():
    assert set(SEG_TITLES) == set(SEG_DATASETS)


def test_run_metrics_names_each_probe_and_converts_miou_to_percent():
    seg = {name: {"miou": 0.25} for name in SEG_DATASETS} | {"voc+cls": {"miou": 0.5}}
    values = run_metrics({"knn_top1": 40.0, "linear_top1": 50.0, "seg": seg})
    assert values == {
        "k-NN top-1 (%)": 40.0,
        "linear top-1 (%)": 50.0,
        "VOC 2012 mIoU (%)": 25.0,
        "ADE20K mIoU (%)": 25.0,
        "Cityscapes mIoU (%)": 25.0,
        "VOC 2012 mIoU + [CLS] (%)": 50.0,
    }
