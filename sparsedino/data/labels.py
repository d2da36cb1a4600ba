"""Label conventions shared by every segmentation dataset, transform, probe and metric."""

# Mask value of unlabelled pixels (VOC's void border, ADE20K's raw 0, Cityscapes' unused classes, the
# synthetic dataset's ignore band): skipped by the losses and the mIoU, used to pad masks.
IGNORE_INDEX = 255
