"""The transformers config of an attnlab model: the fields of ModelConfig under their own names, plus the standard
names (num_hidden_layers, hidden_size, ...) through `attribute_map`.

`scripts/export_hf.py` copies this file (with the model package) into an exported folder, so it must import only
torch, transformers, the model package and typedconfig.parsing (which imports only the standard library).
"""

from __future__ import annotations

import dataclasses

from transformers import PreTrainedConfig

from model.config import HF_MODEL_TYPE, ModelConfig

GPT2_END_OF_TEXT = 50256  # GPT-2's <|endoftext|> id, the bos/eos token of a model with the GPT-2 vocabulary

# ModelConfig's fields, types and defaults as a dataclass base of the transformers config, so that the config
# declares each of them by inheritance and a field added to ModelConfig needs no second declaration here.
_ModelConfigFields = dataclasses.make_dataclass(
    "_ModelConfigFields",
    [
        (f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory))
        for f in dataclasses.fields(ModelConfig)
    ],
    kw_only=True, repr=False, eq=False,
)


class AttnlabConfig(PreTrainedConfig, _ModelConfigFields):
    model_type = HF_MODEL_TYPE
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "num_hidden_layers": "n_layer",
        "hidden_size": "n_embd",
        "num_attention_heads": "n_head",
        "max_position_embeddings": "n_positions",
    }

    use_cache: bool = True
    bos_token_id: int | None = GPT2_END_OF_TEXT
    eos_token_id: int | None = GPT2_END_OF_TEXT

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.to_model_config()  # the model's own validation: a bad backend or shape fails here, naming the field
        for name in ("bos_token_id", "eos_token_id"):  # GPT-2's default id lies outside a smaller vocabulary
            value = getattr(self, name)
            if isinstance(value, int) and not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}={value} is outside the vocabulary of {self.vocab_size} tokens; pass an id "
                                 f"below {self.vocab_size} or {name}=None")

    def to_model_config(self) -> ModelConfig:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)}
        values["attention_options"] = dict(values["attention_options"])
        return ModelConfig(**values)

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, **kwargs) -> AttnlabConfig:
        """The config of `cfg`'s model; GPT-2's <|endoftext|> is the bos/eos token when the vocabulary has it
        (export_hf.py sets the tokenizer's own)."""
        end = GPT2_END_OF_TEXT if cfg.vocab_size > GPT2_END_OF_TEXT else None
        kwargs = {"bos_token_id": end, "eos_token_id": end, **kwargs}
        return cls(**dataclasses.asdict(cfg), **kwargs)
