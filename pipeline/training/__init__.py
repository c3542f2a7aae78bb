"""Training plumbing every hand-written loop shares (SAM, classification): DDP, schedules, checkpoints, seeds.

YOLO trains through ultralytics' engine; its exact resume uses the checkpoint writes and random states here.
"""
