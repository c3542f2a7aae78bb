"""Metrics shared by the stages (COCO AP through pycocotools, mask IoU/Dice, classification scores)."""
