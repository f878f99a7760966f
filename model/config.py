"""Typed configuration of the model (the `model:` section of a run config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from model.attention import BACKENDS, get_backend, option_types
from model.attention.options import is_real
from typedconfig.parsing import coerce, coerce_fields

PositionEncoding = Literal["learned", "rope", "none"]
HF_MODEL_TYPE = "attnlab"  # the model_type in the config.json of a transformers export (model/configuration_attnlab.py)


@dataclass
class ModelConfig:
    vocab_size: int = 50257  # GPT-2 BPE: 50,000 merges + 256 bytes + <|endoftext|>
    n_positions: int = 1024  # longest context the model is trained for (size of the learned position table)
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # residual stream width; head size is n_embd / n_head
    attention: str = "softmax"  # attention backend, a name from model.attention.BACKENDS
    attention_options: dict[str, Any] = field(default_factory=dict)  # the backend's hyperparameters, by name
    position: PositionEncoding = "learned"  # learned (GPT-2), rope (rotary, can decode past n_positions), none
    rope_base: float = 10000.0  # rotary base frequency (position = rope only)
    dropout: float = 0.0  # dropout on embeddings and residual branches (0 for pre-training)
    bias: bool = True  # biases in Linear and LayerNorm layers, as in GPT-2
    layer_norm_eps: float = 1e-5  # GPT-2's LayerNorm epsilon
    init_std: float = 0.02  # std of the normal init of Linear and Embedding weights (GPT-2: 0.02; results/mqar_init.md)
    tie_word_embeddings: bool = True  # the LM head is the token embedding (GPT-2); false: lm_head has its own weight

    def __post_init__(self) -> None:
        coerce_fields(self, "model")
        for name in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}); "
                f"e.g. n_head in {[h for h in range(1, 33) if self.n_embd % h == 0]}"
            )
        if self.attention not in BACKENDS:
            raise ValueError(f"model.attention: unknown backend {self.attention!r} (allowed: {', '.join(BACKENDS)})")
        # YAML, the command line and JSON give numbers as they are written (4096.0, "4096"): each option takes the
        # type its backend field declares, so crossover=4096.0 is the int 4096 and crossover=1.5 stays an error
        types = option_types(self.attention)
        self.attention_options = {
            name: coerce(types[name], value, f"model.attention_options.{name}") if name in types else value
            for name, value in self.attention_options.items()
        }
        try:
            get_backend(self.attention, **self.attention_options)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model.attention_options: {exc}") from None
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(f"model.position=rope needs an even head size, got n_embd/n_head = {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        # Checked whatever the position encoding, so that a config stays valid when only `position` changes.
        if not (is_real(self.rope_base) and self.rope_base > 0):
            raise ValueError(f"model.rope_base must be a finite number > 0 (RoPE's base frequency, e.g. 10000), "
                             f"got {self.rope_base!r}")
        for name in ("layer_norm_eps", "init_std"):
            if not (is_real(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"model.{name} must be a finite number >= 0, got {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head
