"""Data: per-modality batches with missing-modality masks, and dataset folders on disk."""

from legokit.data.batch import ModalityBatch, batch_size

__all__ = ["ModalityBatch", "batch_size"]
