"""The transformers config of an attnlab model: the fields of ModelConfig under their own names, plus the standard
names (num_hidden_layers, hidden_size, ...) through `attribute_map`.

`scripts/export_hf.py` copies this file (with the model package) into an exported folder, so it must import only
torch, transformers, the model package and typedconfig.parsing (which imports only the standard library).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from transformers import PreTrainedConfig

from model.config import ModelConfig

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
    model_type = "attnlab"
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


def transformers_folder_note(path: str | Path) -> str | None:
    """Why `path`, given where an attnlab checkpoint is expected, is not one when it is a transformers model folder
    (its config.json names a model_type, which a checkpoint's run config never does): what to do instead. None for
    any other path, which the checkpoint loader then judges."""
    try:
        model_type = json.loads((Path(path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):  # absent, unreadable, not JSON, or JSON but not an object
        return None
    if model_type == AttnlabConfig.model_type:
        return (f"{path} is a transformers export, not a checkpoint; load it with AutoModelForCausalLM.from_pretrained"
                f"({str(path)!r}, trust_remote_code=True), or pass the run directory or checkpoint it came from")
    if isinstance(model_type, str):
        return (f"{path} is a transformers model folder (model_type {model_type!r}), not an attnlab checkpoint; pass "
                "a run directory or a checkpoint directory (scripts/import_gpt2.py makes a run of a GPT-2 folder)")
    return None
