"""Ultralytics with the network left alone: no online check, no font or asset download at run time.

Left to itself, ultralytics reaches out even when every file it needs is local: importing it resolves two DNS
names to decide whether it is online (``ultralytics.utils.ONLINE``, which also arms its analytics events and
update checks); reading a dataset YAML fetches ``Arial.ttf`` for plot labels into its config folder
(``check_font``, which first asks github.com with ``requests.head``); on CUDA its AMP check downloads
``yolo26n.pt``. pipe fetches nothing at run time except through its weights registry, so:

* importing this module sets ``YOLO_OFFLINE=1`` unless the environment already says otherwise. ultralytics reads
  it once, when ``ultralytics.utils`` is first imported, so the modules of this stage that import ultralytics
  import this one first (``trainer`` at its top, before its own ultralytics imports; ``model`` and ``evaluate``
  before their lazy ones);
* ``no_downloads()`` makes ultralytics' downloaders honour that flag: a download, a release listing or a
  "does this URL exist" check is refused with the ``ConnectionError`` ultralytics itself raises when it finds
  itself offline, which its callers already handle (no font: labels in PIL's default one, and pipe draws
  nothing through ultralytics anyway; AMP check skipped with ultralytics' own warning, AMP kept on).

``YOLO_OFFLINE=0`` in the environment gives ultralytics its network back.
"""

from __future__ import annotations

import functools
import os
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")


def offline() -> bool:
    """Whether ultralytics is to stay offline (its own truthy spellings of ``YOLO_OFFLINE``)."""
    return os.environ.get("YOLO_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on", "y", "t"}


def _refuse(what: str) -> ConnectionError:
    return ConnectionError(f"{what}: not downloaded (YOLO_OFFLINE is set: pipe downloads nothing at run time; "
                           f"set YOLO_OFFLINE=0 to let ultralytics fetch it)")


def no_downloads() -> None:
    """Patch ``ultralytics.utils.downloads`` once so that, while ``offline()``, it opens no connection."""
    from ultralytics.utils import downloads

    if getattr(downloads, "_pipe_no_downloads", False):
        return
    is_url, safe_download, get_github_assets = downloads.is_url, downloads.safe_download, downloads.get_github_assets

    @functools.wraps(is_url)
    def checked_url(url: Any, check: bool = False) -> bool:
        if check and offline():
            return False  # "does it exist online?": not asked
        return is_url(url, check)

    @functools.wraps(safe_download)
    def download(*args: Any, **kwargs: Any) -> Any:
        if offline():
            raise _refuse(str(kwargs.get("url", args[0] if args else "a file")))
        return safe_download(*args, **kwargs)

    @functools.wraps(get_github_assets)
    def assets(*args: Any, **kwargs: Any) -> Any:
        if offline():
            raise _refuse("the list of GitHub release assets")
        return get_github_assets(*args, **kwargs)

    downloads.is_url, downloads.safe_download, downloads.get_github_assets = checked_url, download, assets
    downloads._pipe_no_downloads = True
