"""attnlab models as transformers causal LMs: `AutoModelForCausalLM`, `generate()`, `save_pretrained`.

    from model.modeling_attnlab import AttnlabForCausalLM      # registers the Auto classes
    hf = AttnlabForCausalLM.from_gpt(gpt)                      # a trained model.gpt.GPT's weights, copied
    out = hf.generate(ids, max_new_tokens=50, do_sample=False)

The wrapper holds the project's GPT (no second copy of the architecture); `from_gpt` builds a new one with a copy of
the given model's weights, on its device and in its dtype, so training either afterwards leaves the other as it was.
`generate()` carries the backend's own decode state as its cache (`AttnlabCache`): a fixed-size recurrent state for
the linear backends, a KV cache for softmax and expressive. Each step consumes only the tokens the state has not
seen, so decoding costs the same as scripts/generate.py. Padding (an attention_mask with zeros; left padding for
generate(), as with every decoder-only model) is masked in every backend: padding tokens take no part in attention,
the positions of each row count its real tokens (transformers' GPT-2 derives position_ids from the mask the same
way), and the cache remembers the padding, so a padded row gives the logits and the tokens it gives alone.
forward() answers transformers' output options as GPT-2 does (`output_hidden_states`, `return_dict=False`), refuses
`output_attentions` (no backend returns its attention weights), and refuses any other argument it would have to ignore.

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
from model.loss import SYNCHRONOUS_DEVICES, cross_entropy
from model.position import token_positions


class AttnlabCache:
    """The model's DecodeState as a generate() cache: what generate() and beam search ask of a cache, including one
    a caller passes back in (`generate(..., past_key_values=out.past_key_values)` continues from it, in place)."""

    # generate() reads these of a cache it did not make: whether forward() may be compiled around it (a cache of fixed
    # shapes; a KV cache here grows by reallocation), and whether its last tokens can be dropped (a recurrent state
    # cannot forget them).
    is_compileable = False
    is_croppable = False

    def __init__(self, state: DecodeState):
        self.state = state

    @property
    def batch_size(self) -> int:
        """The rows of the state."""
        return self.state.rows

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat each row `repeats` times in place (row i becomes rows i*repeats ... i*repeats + repeats - 1), as
        generate() repeats input_ids for beams and num_return_sequences."""
        self.reorder_cache(torch.arange(self.batch_size).repeat_interleave(repeats))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.state.position

    def activate_past_recording(self) -> None:
        """Assisted and prompt-lookup decoding call this to be able to drop rejected tokens later."""
        raise ValueError("assisted and prompt-lookup decoding drop rejected tokens from the cache, which an attnlab "
                         "state cannot forget; generate without assistant_model and prompt_lookup_num_tokens")

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
    # The loss is the mean over one call's targets: Trainer must scale it for gradient accumulation itself rather
    # than pass num_items_in_batch, which forward()'s **kwargs would otherwise let it assume is used.
    accepts_loss_kwargs = False
    # A backend's decode state cannot drop rejected tokens: with this, generate() refuses assisted and prompt-lookup
    # decoding before it starts, with or without a cache passed in (without, it failed on "requires a cache").
    _is_stateful = True

    def __init__(self, config: AttnlabConfig):
        super().__init__(config)
        self.model = GPT(config.to_model_config())
        self.post_init()

    @classmethod
    def from_gpt(cls, gpt: GPT) -> AttnlabForCausalLM:
        """A transformers model around a copy of `gpt`'s weights (a fresh wrapper with the same config), on `gpt`'s
        device and in its dtype."""
        hf = cls(AttnlabConfig.from_model_config(gpt.config))
        hf.model.load_state_dict(gpt.state_dict())
        weight = next(gpt.parameters())
        return hf.to(device=weight.device, dtype=weight.dtype).eval()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """GPT initialises its own weights in its constructor (normal, std model.init_std; residual projections scaled
        by 1/sqrt(2 n_layer)); nothing to add here."""

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.model.transformer.wte

    def set_input_embeddings(self, value: torch.nn.Embedding) -> None:
        self.model.transformer.wte = value

    def get_output_embeddings(self) -> torch.nn.Linear:
        return self.model.lm_head

    def set_output_embeddings(self, value: torch.nn.Linear) -> None:
        self.model.lm_head = value

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> torch.nn.Embedding:
        """transformers' resize (new rows at the end, a tied head follows the embedding, config.vocab_size updated),
        refused before anything changes when it would drop the bos or eos token; the GPT's own config follows. With
        mean_resizing=False the new rows start as GPT initialises them (normal, std init_std), since _init_weights,
        which transformers would call for them, leaves initialisation to GPT's constructor."""
        old_size = self.config.vocab_size
        size = old_size if new_num_tokens is None else new_num_tokens
        if pad_to_multiple_of:
            size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self.config, name)
            if isinstance(value, int) and value >= size:
                raise ValueError(f"resize_token_embeddings({new_num_tokens}) would drop {name}={value}; keep at least "
                                 f"{value + 1} tokens, or set config.{name} to a smaller id or None first")
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.model.config.vocab_size = self.config.vocab_size
        if not mean_resizing:
            with torch.no_grad():
                for weight in {id(w): w for w in (embeddings.weight, self.model.lm_head.weight)}.values():
                    weight[old_size:].normal_(0.0, self.config.init_std)
        return embeddings

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is the backend's own state, made in forward()

    def _expand_inputs_for_generation(self, expand_size: int = 1, is_encoder_decoder: bool = False,
                                      input_ids: torch.LongTensor | None = None, **model_kwargs):
        """generate() repeats each input row expand_size times (beams, num_return_sequences) through this method,
        which repeats tensors only: a cache passed in has its rows repeated here by the same factor."""
        if expand_size > 1 and model_kwargs.get("past_key_values") is not None:
            model_kwargs["past_key_values"].batch_repeat_interleave(expand_size)
        return super()._expand_inputs_for_generation(expand_size, is_encoder_decoder, input_ids, **model_kwargs)

    def _validate_generated_length(self, generation_config, input_ids_length, *args, **kwargs):
        """transformers' checks of the lengths asked for, and the learned positions' limit before the first step:
        generate() would otherwise stop with an error when the longest row reaches position n_positions, its tokens
        lost."""
        super()._validate_generated_length(generation_config, input_ids_length, *args, **kwargs)
        limit = self.config.n_positions
        # the last token generated is never fed to the model: a sequence may end one token past the positions
        if self.config.position == "learned" and generation_config.max_length > limit + 1:
            fix = (f"ask for max_new_tokens <= {limit + 1 - input_ids_length}" if input_ids_length <= limit else
                   f"shorten the prompt to {limit} tokens (tokenizer(..., truncation=True, max_length={limit}))")
            raise ValueError(
                f"a prompt of {input_ids_length} tokens and {generation_config.max_length - input_ids_length} new ones "
                f"would run past this model's {limit} learned positions; {fix}"
            )

    def prepare_inputs_for_generation(
        self,
        input_ids,
        past_key_values=None,
        attention_mask=None,
        use_cache=True,
        logits_to_keep=None,
        position_ids=None,
        next_sequence_length=None,
        is_first_iteration=None,
        **kwargs,
    ):
        """One generate() step's forward() arguments: the tokens the state has not seen with their position_ids
        (generate() derives them from attention_mask, and forward() checks them against its own), and every other
        model argument generate() holds (output_hidden_states, a caller's own) as given, so that forward() answers or
        refuses each; next_sequence_length and is_first_iteration are generate()'s notes to this method alone."""
        _check_cache(past_key_values)
        if past_key_values is None and attention_mask is not None:  # without a cache yet: every row needs a token
            _check_rows_have_tokens(attention_mask)
        if past_key_values is not None and is_first_iteration:  # the caller's ids, not sampled ones
            _check_token_ids(input_ids, self.config.vocab_size)
        if past_key_values is not None:
            past = past_key_values.get_seq_length()
            if input_ids.shape[1] <= past:
                raise ValueError(
                    f"past_key_values holds {past} tokens, and input_ids ({input_ids.shape[1]} tokens) must hold them "
                    "followed by at least one new token: pass the whole sequence (output.sequences and the new ids)"
                )
            input_ids = input_ids[:, past:]  # only the tokens the state has not seen
        if position_ids is not None:
            position_ids = position_ids[:, -input_ids.shape[1] :]
        inputs = dict(input_ids=input_ids, past_key_values=past_key_values, attention_mask=attention_mask,
                      position_ids=position_ids)
        inputs.update(use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)
        return inputs

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: AttnlabCache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """Logits for `input_ids` (B, T). With a cache the tokens continue the cache's state; use_cache outside
        training and without labels returns one. `logits_to_keep` as in transformers: an int n > 0 keeps the last
        n positions' logits, 0 (or None) all of them, a 1-D tensor the positions it lists. With `labels` (B, T)
        the loss is the mean next-token cross-entropy (labels shifted inside, negative labels such as transformers'
        -100 ignored; give padding positions -100). `attention_mask` covers the cached tokens and the new ones
        (B, past + T), as generate() passes it; zeros mark padding.

        `output_hidden_states` (default config.output_hidden_states) returns `hidden_states` as transformers' GPT-2
        does: n_layer + 1 tensors (B, T, n_embd) for the new tokens, the embedding output, each block's output, and
        last the final block's output after ln_f, which the LM head reads. `return_dict=False` (default
        config.return_dict) returns the output's tuple form (its fields that are not None, in order).
        `position_ids` (B or 1, T) are taken where they are the positions the model derives itself (each row counts
        its real tokens, what transformers' GPT-2 derives from attention_mask; padding positions are not compared)
        and refused where they differ, since the model cannot place tokens elsewhere.
        `output_attentions` and any argument outside this signature are refused, since ignoring them would return
        something other than what was asked; only generate()'s `cache_position` (the cache holds its own position)
        and arguments given as None pass.

        The decode steps update their states in place, out of autograd's sight, so logits that may need gradients
        (autograd on, no cache given) come from the full forward, and the cache asked for beside them from a decode
        without gradients (twice the compute: run inference under torch.no_grad(), as generate() does). Logits that
        continue a given cache carry no gradient through it."""
        if input_ids is None:
            raise ValueError("attnlab models take input_ids (token ids); inputs_embeds is not supported")
        _refuse_arguments(kwargs)
        _check_cache(past_key_values)
        if past_key_values is None or input_ids.device.type in SYNCHRONOUS_DEVICES:
            # a continued cache may be given new ids too; on a GPU its decode steps are fed sampled ids, which fit,
            # and checking them would wait for the device at every token (prepare_inputs_for_generation checks the
            # ids a caller gives with a cache)
            _check_token_ids(input_ids, self.config.vocab_size)
        if labels is not None and labels.shape != input_ids.shape:
            raise ValueError(f"labels have shape {tuple(labels.shape)} and input_ids {tuple(input_ids.shape)}: give "
                             "one label per input token (the model shifts them; -100 marks a position without one)")
        if labels is not None and (outside := _first(labels >= self.config.vocab_size)) is not None:
            raise ValueError(  # (one host sync per training forward; cross-entropy fails inside torch otherwise)
                f"labels hold {int(labels[outside])} (row {outside[0]}, token {outside[1]}), outside this model's "
                f"vocabulary of {self.config.vocab_size} ids; a position without a label takes -100"
            )
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        if output_attentions:
            raise ValueError(
                "output_attentions is not supported: the attnlab backends compute attention in fused, tiled or "
                "recurrent forms and return no attention weights; pass output_attentions=False "
                "(the kernel's inputs, each layer's queries and keys, come from python -m evals.extract in the "
                "attnlab repository)"
            )
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states or False
        if not isinstance(output_hidden_states, bool):
            raise ValueError(
                f"output_hidden_states must be True or False, got {output_hidden_states!r}; True returns all "
                f"{self.config.n_layer + 1} hidden states: index that tuple to pick some"
            )
        hidden = [] if output_hidden_states else None
        use_cache = self.config.use_cache if use_cache is None else use_cache
        keep = _kept_positions(logits_to_keep)
        if labels is not None and keep is not None:
            raise ValueError(
                f"labels need the logits of every position; do not combine them with logits_to_keep={logits_to_keep!r}"
            )
        continues = past_key_values is not None
        if continues and past_key_values.batch_size != input_ids.shape[0]:
            raise ValueError(
                f"past_key_values holds {past_key_values.batch_size} rows and input_ids {input_ids.shape[0]}; continue "
                "a cache with the rows it was made for (a beam search's holds num_beams rows per prompt, one per beam: "
                "continue it from a greedy or sampled generate(), or generate from scratch)"
            )
        wants_cache = continues or (use_cache and labels is None and not self.training)
        past = past_key_values.get_seq_length() if continues else 0
        mask = _padding_mask(attention_mask, input_ids.shape, past)
        if position_ids is not None:
            pads = past_key_values.state.pads if continues else None
            _check_position_ids(position_ids, token_positions(past, pads, mask, input_ids.shape[1], input_ids.device),
                                mask, input_ids.shape)
        if wants_cache and not continues:
            state = self.model.init_decode_state(input_ids.shape[0], dtype=self.dtype, device=input_ids.device)
            past_key_values = AttnlabCache(state)
        if continues or (wants_cache and not torch.is_grad_enabled()):
            last_only = isinstance(keep, slice) and keep.start == -1  # a long prefill never holds T x vocab logits
            logits, past_key_values.state = self.model.decode(
                input_ids, past_key_values.state, mask=mask, last_only=last_only, hidden_states=hidden
            )
        else:
            logits, _ = self.model(input_ids, mask=mask, hidden_states=hidden)
            if wants_cache:
                with torch.no_grad():
                    _, past_key_values.state = self.model.decode(
                        input_ids, past_key_values.state, mask=mask, last_only=True
                    )
        if keep is not None:
            logits = logits[:, keep]
        loss = None
        if labels is not None:
            loss = cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        cache = past_key_values if wants_cache else None
        hidden_states = None if hidden is None else tuple(hidden)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache, hidden_states=hidden_states)
        if return_dict is None:
            return_dict = self.config.return_dict
        return out if return_dict else out.to_tuple()


# generate() of the first transformers 5 releases passes cache_position; the cache holds its own position.
_IGNORED_ARGUMENTS = frozenset({"cache_position"})
_REFUSED_ARGUMENTS = {
    "inputs_embeds": "attnlab models take input_ids (token ids) only",
    "token_type_ids": "attnlab models have no token type embeddings",
    "num_items_in_batch": "the loss is the mean over this call's targets",
}


def _check_cache(past_key_values: object) -> None:
    """Raise ValueError unless `past_key_values` is None or a cache this model made (transformers' own caches hold
    keys and values, which no attnlab backend reads)."""
    if past_key_values is not None and not isinstance(past_key_values, AttnlabCache):
        raise ValueError(
            f"past_key_values must be the cache an attnlab model returned (output.past_key_values), got "
            f"{type(past_key_values).__name__}; drop it to start from the prompt"
        )


def _check_rows_have_tokens(attention_mask: torch.Tensor) -> None:
    """Raise ValueError naming the first row of `attention_mask` (B, T) without a real token: its positions and its
    next token would come from padding alone."""
    empty = _first(~attention_mask.bool().any(dim=1))
    if empty is not None:
        raise ValueError(f"attention_mask row {empty[0]} has no real token: every prompt needs at least one (leave "
                         "empty prompts out of the batch)")


def _check_token_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """Raise ValueError unless `input_ids` are integers in [0, vocab_size), naming the first id outside (one host
    sync: the embedding would otherwise fail inside torch, or on a GPU with a device-side assert)."""
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
    outside = _first((input_ids < 0) | (input_ids >= vocab_size))
    if outside is not None:
        row, token = outside
        raise ValueError(
            f"input_ids hold {int(input_ids[row, token])} (row {row}, token {token}), outside this model's vocabulary "
            f"of {vocab_size} ids: a token added to the tokenizer (a new pad token, say) has no embedding here; pad "
            "with an existing token (tokenizer.pad_token = tokenizer.eos_token)"
        )


def _first(flags: torch.Tensor) -> tuple[int, ...] | None:
    """The index of the first True of `flags` (row-major), or None where there is none: one host sync."""
    found = flags.nonzero()
    return tuple(int(i) for i in found[0]) if len(found) else None


def _refuse_arguments(kwargs: dict) -> None:
    """Raise ValueError naming each argument forward() would have to ignore (given, not None, and not one of
    generate()'s harmless ones), so that a typo or an unsupported option never passes silently."""
    refused = sorted(name for name, value in kwargs.items() if value is not None and name not in _IGNORED_ARGUMENTS)
    if refused:
        reasons = "; ".join(f"{name}: {_REFUSED_ARGUMENTS.get(name, 'not an argument of this model')}"
                            for name in refused)
        raise ValueError(f"AttnlabForCausalLM.forward() does not take {', '.join(refused)} ({reasons})")


def _check_position_ids(
    position_ids: torch.Tensor, derived: torch.Tensor, mask: torch.Tensor | None, shape: torch.Size
) -> None:
    """Raise ValueError unless `position_ids` (B or 1, T) equal the `derived` positions ((T,) or (B, T)) at every
    real token (True in `mask` (B, T), or everywhere without one), naming the first token where they differ."""
    if position_ids.ndim != 2 or position_ids.shape[0] not in (1, shape[0]) or position_ids.shape[1] != shape[1] \
            or position_ids.is_floating_point():
        raise ValueError(
            f"position_ids must be an integer tensor of shape {tuple(shape)} or {(1, shape[1])} (one position per new "
            f"token), got shape {tuple(position_ids.shape)} and dtype {position_ids.dtype}; drop position_ids to "
            "let the model derive them"
        )
    given, derived = torch.broadcast_tensors(position_ids.to(derived.device), derived.expand(shape))
    differ = _first(given.ne(derived) if mask is None else given.ne(derived) & mask)
    if differ is not None:
        row, token = differ
        raise ValueError(
            f"position_ids differ from the positions this model uses (row {row}, token {token}: "
            f"{int(given[row, token])} given, {int(derived[row, token])} used): positions come from attention_mask, "
            "each row counting its real tokens after the cached ones, as transformers' GPT-2 derives them; pass "
            "attention_mask and drop position_ids"
        )


def _kept_positions(logits_to_keep: int | torch.Tensor | None) -> slice | torch.Tensor | None:
    """The index of the positions whose logits `logits_to_keep` keeps, in transformers' convention (an int n: the
    last n, 0 all; a 1-D tensor: the positions it lists); None for all of them."""
    if isinstance(logits_to_keep, torch.Tensor):
        if logits_to_keep.ndim == 1 and not logits_to_keep.is_floating_point() and logits_to_keep.dtype != torch.bool:
            return logits_to_keep
        got = f"a tensor of shape {tuple(logits_to_keep.shape)} and dtype {logits_to_keep.dtype}"
    elif logits_to_keep is None or (isinstance(logits_to_keep, int) and not isinstance(logits_to_keep, bool)
                                    and logits_to_keep >= 0):
        return slice(-logits_to_keep, None) if logits_to_keep else None
    else:
        got = repr(logits_to_keep)
    raise ValueError(
        "logits_to_keep must be an int n >= 0 (the last n positions' logits; 0 keeps all of them) or a 1-D integer "
        f"tensor of positions, got {got}"
    )


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
