"""Segment Anything fine-tuned for defect masks: frozen encoder, cached embeddings, trained decoder."""
