"""pipe: MVTec AD to a fine-tuned defect detector and segmenter, with a measured report.

The package mirrors the pipeline: ``data`` (layout, validation, synthetic data, download), then the
converters, the training stages and the report. ``config``, ``weights`` and ``device`` are shared by all.
"""

__version__ = "0.1.0"

# Modules log through ``logging.getLogger(__name__)``; the ``pipeline`` logger prints them on the console
# from the first import on, whether or not the CLI runs (see ``pipeline.console``).
from pipeline import console as _console  # noqa: F401
