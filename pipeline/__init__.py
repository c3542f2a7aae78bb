"""pipe: MVTec AD to a fine-tuned defect detector and segmenter, with a measured report.

The package mirrors the pipeline: ``data`` (layout, validation, synthetic data, download), then the
converters, the training stages and the report. ``config``, ``weights`` and ``device`` are shared by all.
"""

import logging

__version__ = "0.1.0"

# Library modules log through ``logging.getLogger(__name__)``, all under ``pipeline``; the application (the
# CLI, a bench script, or a notebook calling ``pipeline.console.setup_logging()``) decides where records go.
logging.getLogger(__name__).addHandler(logging.NullHandler())
