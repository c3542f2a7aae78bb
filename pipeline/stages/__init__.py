"""Training stages: each reads the converted dataset (``splits.json`` and its formats) and writes under runs/."""
