"""Training plumbing every hand-written loop shares (SAM, classification): DDP, schedules, checkpoints, seeds.

YOLO trains through ultralytics' engine and does not use this.
"""
