"""The training head: additive angular margin softmax with sub-centers and the inter-top-K penalty.

docs/method.md#aam-softmax-head. Kept apart from the embedding model: ``loss, logits = head(embeddings, labels)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SubCenterAAMSoftmax(nn.Module):
    """AAM-softmax (ArcFace) with K sub-centers per class and an inter-top-K penalty.

    cos_n = max_k <x^, w^_{k,n}>; the target logit is cos(theta + m) (with the usual fallback
    cos - m sin m past pi - m); when ``top_k`` > 0 the top_k hardest negatives get cos(theta - m'),
    which *raises* them, where the penalty m' = penalty * m_current / margin follows the margin ramp.
    Logits are ``scale`` times these. All angle arithmetic runs in float32 with cos clamped, so bf16 and
    fp16 inputs give finite losses.

    Args:
        embedding_size: E.
        num_classes: N.
        scale: s.
        margin: the full margin m (radians); ``set_margin`` moves the current margin.
        sub_centers: K.
        top_k: number of hard negatives penalised (0: off).
        penalty: m' at the full margin.
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        *,
        scale: float = 30.0,
        margin: float = 0.3,
        sub_centers: int = 3,
        top_k: int = 5,
        penalty: float = 0.06,
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"the head needs at least 2 classes, got {num_classes}")
        if sub_centers < 1:
            raise ValueError(f"sub_centers must be >= 1, got {sub_centers}")
        self.num_classes, self.sub_centers = num_classes, sub_centers
        self.scale, self.max_margin, self.max_penalty = scale, margin, penalty
        self.top_k = min(top_k, num_classes - 1)
        self.weight = nn.Parameter(torch.empty(num_classes * sub_centers, embedding_size))
        nn.init.xavier_uniform_(self.weight)
        self.set_margin(margin)

    def set_margin(self, margin: float, penalty: float | None = None, top_k: int | None = None) -> None:
        """Sets the current margin; the penalty scales with margin / full margin unless given."""
        self.margin = float(margin)
        if top_k is not None:
            self.top_k = min(top_k, self.num_classes - 1)
        if penalty is None:
            penalty = self.max_penalty * self.margin / self.max_margin if self.max_margin > 0 and margin > 1e-3 else 0.0
        self.penalty = float(penalty)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, E) -> (B, N) cosine to the nearest sub-center of each class, float32."""
        x = F.normalize(embeddings.float(), dim=-1)
        w = F.normalize(self.weight.float(), dim=-1)
        cos = (x @ w.T).view(-1, self.num_classes, self.sub_centers)
        return cos.amax(-1) if self.sub_centers > 1 else cos.squeeze(-1)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, return_predictions: bool = False):
        """embeddings (B, E), labels (B,) -> (loss scalar, logits (B, N)), and with ``return_predictions`` the
        (B,) classes the method predicts: the margin on the target only, not the inter-top-K penalty, which
        shapes the loss but is not part of a prediction (the reference logs its accuracy this way)."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cos = self.cosine(embeddings).clamp(-1 + 1e-7, 1 - 1e-7)
            sin = (1.0 - cos * cos).clamp_min(0.0).sqrt()
            m = self.margin
            target = cos * math.cos(m) - sin * math.sin(m)
            target = torch.where(cos > math.cos(math.pi - m), target, cos - m * math.sin(m))
            onehot = F.one_hot(labels, self.num_classes).bool()
            logits = torch.where(onehot, target, cos)
            predictions = logits.argmax(-1) if return_predictions else None
            if self.top_k > 0 and self.penalty > 0:
                hard = cos.masked_fill(onehot, -2.0).topk(self.top_k, dim=-1).indices
                raised = cos * math.cos(self.penalty) + sin * math.sin(self.penalty)
                penalised = torch.zeros_like(onehot).scatter_(1, hard, True)
                logits = torch.where(penalised, raised, logits)
            logits = logits * self.scale
            loss = F.cross_entropy(logits, labels)
        return (loss, logits, predictions) if return_predictions else (loss, logits)
