"""Good-only defect detection: PatchCore (Roth et al., CVPR 2022) fitted on MVTec's train/good images."""
