"""pipe: MVTec AD to a fine-tuned defect detector and segmenter, with a measured report.

The package mirrors the pipeline: ``data`` (layout, validation, synthetic data, download), then the
converters, the training stages and the report. ``config``, ``weights`` and ``device`` are shared by all.
"""

__version__ = "0.1.0"
