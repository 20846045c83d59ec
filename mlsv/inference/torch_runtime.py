"""The PyTorch runtime of the Verifier: an ``MLSVModel`` run on numpy batches.

Imported by :class:`mlsv.inference.verifier.Verifier` only when a PyTorch model is asked for, so that the
ONNX runtime (:mod:`mlsv.inference.onnx_runtime`) runs where torch is not installed.
"""

from __future__ import annotations

import numpy as np
import torch

from mlsv.models.loading import check_device, load_model

__all__ = ["TorchEmbedder", "check_device", "load_model"]


class TorchEmbedder:
    """Runs an ``MLSVModel`` (eval mode, no grad) on numpy batches. (B, S), (B, S) -> (B, E)."""

    runtime = "torch"

    def __init__(self, model, device: str = "cpu"):
        self.device = check_device(device)
        self.model = model.to(self.device).eval()
        self.config = model.config

    def to(self, device) -> TorchEmbedder:
        """Moves the model to ``device`` (checked as at construction); returns self."""
        self.device = check_device(device)
        self.model.to(self.device)
        return self

    def __call__(self, input_values: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(input_values).to(self.device)
            m = torch.from_numpy(attention_mask).to(self.device)
            return self.model(x, attention_mask=m).embeddings.float().cpu().numpy()
