"""Training plumbing every hand-written loop shares (SAM, classification): DDP, samplers, schedules,
checkpoints, seeds, the resume guard.

YOLO trains through ultralytics' engine; its exact resume uses the checkpoint writes and random states here.
"""
