"""attnlab models as transformers causal LMs: `AutoModelForCausalLM`, `generate()`, `save_pretrained`.

    from model.modeling_attnlab import AttnlabForCausalLM      # registers the Auto classes
    hf = AttnlabForCausalLM.from_gpt(gpt)                      # wrap a trained model.gpt.GPT (weights shared)
    out = hf.generate(ids, max_new_tokens=50, do_sample=False)

The wrapper holds the project's GPT (no second copy of the architecture). `generate()` carries the backend's
own decode state as its cache (`AttnlabCache`): a fixed-size recurrent state for the linear backends, a KV cache
for softmax and expressive. Each step consumes only the tokens the state has not seen, so decoding costs the
same as scripts/generate.py. Padding (an attention_mask with zeros; left padding for generate(), as with every
decoder-only model) is masked in every backend: padding tokens take no part in attention, the positions of each
row count its real tokens (transformers' GPT-2 derives position_ids from the mask the same way), and the cache
remembers the padding, so a padded row gives the logits and the tokens it gives alone.

`scripts/export_hf.py` copies this file (with the model package) into an exported folder, so it must import only
torch, transformers, the model package and typedconfig.parsing (which imports only the standard library).
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from model.configuration_attnlab import AttnlabConfig
from model.gpt import GPT, DecodeState
from model.loss import cross_entropy


class AttnlabCache:
    """The model's DecodeState as a generate() cache: what generate() and beam search ask of a cache."""

    def __init__(self, state: DecodeState):
        self.state = state

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.state.position

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep the batch rows `beam_idx` of the state and of every layer's state, in that order (beam search)."""
        self.state = _select_rows(self.state, beam_idx)
        self.state.layers = [_select_rows(layer, beam_idx) for layer in self.state.layers]


def _select_rows(state, rows: torch.LongTensor):
    """A state (a dataclass of batch-first tensors, counters and other fields) restricted to `rows`."""
    changes = {
        f.name: value.index_select(0, rows.to(value.device))
        for f in dataclasses.fields(state)
        if isinstance(value := getattr(state, f.name), torch.Tensor)
    }
    return dataclasses.replace(state, **changes)


class AttnlabForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = AttnlabConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _tied_weights_keys = {"model.lm_head.weight": "model.transformer.wte.weight"}

    def __init__(self, config: AttnlabConfig):
        super().__init__(config)
        self.model = GPT(config.to_model_config())
        self.post_init()

    @classmethod
    def from_gpt(cls, gpt: GPT) -> AttnlabForCausalLM:
        """A transformers model around `gpt`'s weights (copied into a fresh wrapper with the same config)."""
        hf = cls(AttnlabConfig.from_model_config(gpt.config))
        hf.model.load_state_dict(gpt.state_dict())
        return hf.to(next(gpt.parameters()).dtype).eval()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """GPT initialises its own weights in its constructor (normal, std model.init_std; residual projections scaled
        by 1/sqrt(2 n_layer)); nothing to add here."""

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.model.transformer.wte

    def set_input_embeddings(self, value: torch.nn.Embedding) -> None:
        self.model.transformer.wte = value

    def get_output_embeddings(self) -> torch.nn.Linear:
        return self.model.lm_head

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is the backend's own state, made in forward()

    def prepare_inputs_for_generation(
        self, input_ids, past_key_values=None, attention_mask=None, use_cache=True, logits_to_keep=None, **kwargs
    ):
        if past_key_values is not None:
            input_ids = input_ids[:, past_key_values.get_seq_length() :]  # only the tokens the state has not seen
        inputs = dict(input_ids=input_ids, past_key_values=past_key_values, attention_mask=attention_mask)
        inputs.update(use_cache=use_cache, logits_to_keep=logits_to_keep)
        return inputs

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: AttnlabCache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits for `input_ids` (B, T). With a cache (or use_cache outside training and without labels) the tokens
        continue the cache's state; `logits_to_keep=1` keeps only the last position's logits. With `labels` (B, T)
        the loss is the mean next-token cross-entropy (labels shifted inside, negative labels such as transformers'
        -100 ignored; give padding positions -100). `attention_mask` covers the cached tokens and the new ones
        (B, past + T), as generate() passes it; zeros mark padding."""
        if input_ids is None:
            raise ValueError("attnlab models take input_ids (token ids); inputs_embeds is not supported")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        last_only = logits_to_keep == 1
        cached = past_key_values is not None or (use_cache and labels is None and not self.training)
        past = 0 if past_key_values is None else past_key_values.get_seq_length()
        mask = _padding_mask(attention_mask, input_ids.shape, past)
        if cached:
            if past_key_values is None:
                state = self.model.init_decode_state(input_ids.shape[0], dtype=self.dtype, device=input_ids.device)
                past_key_values = AttnlabCache(state)
            logits, past_key_values.state = self.model.decode(
                input_ids, past_key_values.state, mask=mask, last_only=last_only
            )
        else:
            logits, _ = self.model(input_ids, mask=mask)
            past_key_values = None
            if last_only:
                logits = logits[:, -1:]
        loss = None
        if labels is not None:
            if last_only:
                raise ValueError("labels need the logits of every position; do not combine them with logits_to_keep=1")
            loss = cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=past_key_values)


def _padding_mask(attention_mask: torch.Tensor | None, shape: torch.Size, past: int) -> torch.Tensor | None:
    """The new tokens' part of `attention_mask` (B, past + T) as a bool mask, or None when it holds no padding."""
    if attention_mask is None:
        return None
    if attention_mask.shape != (shape[0], past + shape[1]):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; expected {(shape[0], past + shape[1])} "
            f"(the {past} cached tokens and the {shape[1]} new ones)"
        )
    mask = attention_mask[:, past:].bool()
    return None if bool(mask.all()) else mask


AutoConfig.register(AttnlabConfig.model_type, AttnlabConfig, exist_ok=True)
AutoModelForCausalLM.register(AttnlabConfig, AttnlabForCausalLM, exist_ok=True)
