"""Metrics shared by the stages (COCO AP through pycocotools, classification scores); mask IoU/Dice are in ``pipeline.coco``."""
