"""``MLSVModel``: waveforms -> speaker embeddings, as a transformers ``PreTrainedModel``.

frontend (L+1, B, T, D) -> aggregation (B, T, D') -> backend (B, E). The margin head used in training
is not part of it. Saved with ``save_pretrained`` (config.json + model.safetensors) and loaded with
``AutoModel.from_pretrained``; saved with its code, so ``trust_remote_code=True`` loads it where mlsv is
not installed. Imports only torch, transformers and its sibling modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .aggregation import LayerAttentivePooling, SuperbAggregation, build_aggregation
from .backends import build_backend
from .configuration_mlsv import MLSVConfig
from .frontend import Frontend, build_encoder, encoder_config_from_name, load_pretrained_encoder
from .pipeline_mlsv import CUSTOM_PIPELINES


@dataclass
class MLSVOutput(ModelOutput):
    """embeddings (B, E); layer_scores (B, heads, T, L) from LAP when asked; frame_lengths (B,)."""

    embeddings: torch.Tensor | None = None
    layer_scores: torch.Tensor | None = None
    frame_lengths: torch.Tensor | None = None


class MLSVPreTrainedModel(PreTrainedModel):
    config_class = MLSVConfig
    base_model_prefix = "mlsv"
    main_input_name = "input_values"
    supports_gradient_checkpointing = True

    def _init_weights(self, module):
        # The encoder initialises itself (it is a PreTrainedModel); the backend follows the paper:
        # Xavier-uniform weights, zero biases, BatchNorm at (1, 0).
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, LayerAttentivePooling):
            nn.init.xavier_uniform_(module.squeeze_weight)
            nn.init.xavier_uniform_(module.excite_weight)
            nn.init.zeros_(module.squeeze_bias)
            nn.init.zeros_(module.excite_bias)
        elif isinstance(module, SuperbAggregation):
            nn.init.zeros_(module.logits)
        elif isinstance(module, Frontend) and module.family == "whisper":
            # a computed buffer, not saved: from_pretrained builds the model on the meta device and
            # leaves unsaved buffers uninitialised until here
            with torch.no_grad():
                module.mel_filters.copy_(module.whisper_mel_filters())


class MLSVModel(MLSVPreTrainedModel):
    """Speaker embedding model.

    ``forward(input_values (B, S), attention_mask (B, S) of 1 for valid samples)`` returns an
    ``MLSVOutput`` whose ``embeddings`` are (B, E). Padding never changes an embedding.
    """

    def __init__(self, config: MLSVConfig, encoder: nn.Module | None = None):
        super().__init__(config)
        if encoder is None:
            encoder = build_encoder(config.encoder_pretrained_config())
        self.frontend = Frontend(encoder, normalize_input=config.normalize_input, layers=config.layers)
        L, D = self.frontend.num_states, self.frontend.hidden_size
        if config.backend == "mhfa":
            self.aggregation = None
            self.backend = build_backend(
                "mhfa",
                D,
                config.embedding_size,
                num_layers=L,
                stack_size=D,
                mhfa_heads=config.mhfa_heads,
                mhfa_compression=config.mhfa_compression,
                aggregation=config.aggregation,
                lap_heads=config.lap_heads,
                lap_channels=config.lap_channels,
                lap_dropout=config.lap_dropout,
            )
        else:
            self.aggregation = build_aggregation(
                config.aggregation,
                L,
                D,
                heads=config.lap_heads,
                output_size=config.lap_channels,
                dropout=config.lap_dropout,
            )
            self.backend = build_backend(
                config.backend,
                self.aggregation.output_size,
                config.embedding_size,
                dropout=config.backend_dropout,
                ecapa_channels=config.ecapa_channels,
            )
        # the AS-norm cohort (speaker means, mean-subtracted) learnt at evaluation, saved with the weights
        self.register_buffer("cohort_embeddings", torch.zeros(config.cohort_size, config.embedding_size))
        self.post_init()

    def set_cohort(self, cohort: torch.Tensor) -> None:
        """Stores an AS-norm cohort (C, E) in the model (and its size in the config)."""
        if cohort.dim() != 2 or cohort.shape[1] != self.config.embedding_size:
            raise ValueError(f"cohort must be (C, {self.config.embedding_size}), got {tuple(cohort.shape)}")
        self.cohort_embeddings = cohort.to(self.cohort_embeddings.device, torch.float32).contiguous()
        self.config.cohort_size = cohort.shape[0]

    @classmethod
    def from_encoder(cls, encoder: str, *, random_init: bool = False, **settings) -> MLSVModel:
        """A new model around an encoder: a built-in tiny name, a local folder or a hub id.

        ``random_init`` builds the encoder from its config with random weights; otherwise the
        pre-trained weights are loaded (offline from a local folder). ``settings`` are MLSVConfig fields.
        """
        enc_cfg = encoder_config_from_name(encoder)
        if random_init or encoder.startswith(("tiny-", "small-")):
            enc = build_encoder(enc_cfg)
        else:
            enc = load_pretrained_encoder(encoder)
        if "normalize_input" not in settings:
            # Whisper normalises its log-mel features instead of the waveform
            settings["normalize_input"] = enc_cfg.model_type != "whisper" and _feature_extractor_normalizes(encoder)
        config = MLSVConfig(encoder_config=enc_cfg.to_dict(), encoder_name_or_path=encoder, **settings)
        return cls(config, encoder=enc)

    def configure_training(
        self,
        *,
        trainable: str = "none",
        layerdrop: float = 0.0,
        mask_time_prob: float = 0.0,
        gradient_checkpointing: bool = False,
    ) -> None:
        """Sets the frontend's trainability ("none" | "transformer" | "all"), LayerDrop, time masking."""
        f = self.frontend
        f.layerdrop, f.mask_time_prob, f.gradient_checkpointing = layerdrop, mask_time_prob, gradient_checkpointing
        enc_cfg = f.encoder.config
        if hasattr(enc_cfg, "mask_time_prob"):
            enc_cfg.mask_time_prob = mask_time_prob
            enc_cfg.apply_spec_augment = mask_time_prob > 0
        f.set_trainable(trainable)

    def feature_extractor(self):
        """The feature extractor saved beside the model (``preprocessor_config.json``)."""
        from transformers import Wav2Vec2FeatureExtractor, WhisperFeatureExtractor

        if self.frontend.family == "whisper":
            return WhisperFeatureExtractor(
                feature_size=self.frontend.encoder.config.num_mel_bins, sampling_rate=self.config.sampling_rate
            )
        return Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=self.config.sampling_rate,
            padding_value=0.0,
            do_normalize=self.config.normalize_input,
            return_attention_mask=True,
        )

    def save_pretrained(self, save_directory, *args, **kwargs):
        # the saved code also answers AutoModelForAudioXVector (its output carries `embeddings`)
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoModelForAudioXVector": "modeling_mlsv.MLSVModel",
        }
        # the speaker-verification pipeline travels with the code (importing it here makes transformers copy
        # pipeline_mlsv.py beside this file): pipeline("speaker-verification", model=DIR, trust_remote_code=True)
        self.config.custom_pipelines = {
            **(getattr(self.config, "custom_pipelines", None) or {}),
            **{task: {**entry} for task, entry in CUSTOM_PIPELINES.items()},
        }
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            self.feature_extractor().save_pretrained(save_directory)

    def set_attention(self, mode: str, fused_qkv: bool | None = None) -> None:
        """Attention implementation of the encoder: "sdpa" (default) or "eager" (transformers' own)."""
        self.frontend.set_attention(mode, fused_qkv)

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func=None, every_n_layers: int = 1
    ):
        self.frontend.gradient_checkpointing = enable

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_layer_scores: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ):
        if input_values.dim() == 1:
            input_values = input_values[None]
        lengths = attention_mask.sum(-1).long() if attention_mask is not None else None
        states, frame_lengths = self.frontend(input_values, lengths)
        emb, scores = pool_states(self.aggregation, self.backend, states, frame_lengths, output_layer_scores)
        out = MLSVOutput(embeddings=emb, layer_scores=scores, frame_lengths=frame_lengths)
        return out if return_dict is not False else out.to_tuple()

    def trained_part(self) -> PooledEmbedder:
        """The aggregation and backend as a module of their own (the same submodules, shared), for training
        with a frozen encoder: it is what an optimiser and a checkpoint need, without the encoder."""
        return PooledEmbedder(self.aggregation, self.backend)

    def layer_weights(self) -> torch.Tensor | None:
        """SUPERB's static layer weights (L,), when the model aggregates with SUPERB."""
        if isinstance(self.aggregation, SuperbAggregation):
            return self.aggregation.layer_weights().detach()
        return None

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part: encoder, aggregation, backend, and the aggregation+backend total."""

        def n(m):
            return sum(p.numel() for p in m.parameters()) if m is not None else 0

        counts = {"encoder": n(self.frontend.encoder), "aggregation": n(self.aggregation), "backend": n(self.backend)}
        counts["aggregation+backend"] = counts["aggregation"] + counts["backend"]
        counts["total"] = counts["encoder"] + counts["aggregation+backend"]
        return counts


def pool_states(
    aggregation: nn.Module | None,
    backend: nn.Module,
    states: torch.Tensor,
    frame_lengths: torch.Tensor | None = None,
    output_layer_scores: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """states (L, B, T, D) and frame_lengths (B,) (None: every frame valid) -> (embeddings (B, E), LAP's layer
    scores or None): the aggregation (None: MHFA, which aggregates itself) and the backend."""
    T = states.shape[2]
    if frame_lengths is None:
        frame_lengths = torch.full((states.shape[1],), T, dtype=torch.long, device=states.device)
    frame_mask = torch.arange(T, device=states.device)[None, :] < frame_lengths[:, None]
    if aggregation is None:
        return backend(states, frame_mask), None
    if output_layer_scores:
        frames, scores = aggregation(states, return_scores=True)
        return backend(frames, frame_mask), scores
    return backend(aggregation(states), frame_mask), None


class PooledEmbedder(nn.Module):
    """An MLSVModel's aggregation and backend (shared with it): hidden states (L, B, T, D) -> ``MLSVOutput``.
    What training with a frozen encoder optimises, checkpoints and averages; its state dict's keys are the
    model's own (``aggregation.*``, ``backend.*``)."""

    def __init__(self, aggregation: nn.Module | None, backend: nn.Module):
        super().__init__()
        self.aggregation, self.backend = aggregation, backend

    def forward(self, states: torch.Tensor, frame_lengths: torch.Tensor | None = None) -> MLSVOutput:
        emb, _ = pool_states(self.aggregation, self.backend, states, frame_lengths)
        return MLSVOutput(embeddings=emb, frame_lengths=frame_lengths)


def _feature_extractor_normalizes(name: str) -> bool:
    """The encoder's feature extractor ``do_normalize`` (True when unknown, e.g. tiny configs)."""
    import os

    path = os.path.join(name, "preprocessor_config.json")
    if os.path.isfile(path):
        import json

        with open(path) as f:
            return bool(json.load(f).get("do_normalize", True))
    return True
