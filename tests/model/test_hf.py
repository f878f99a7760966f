"""The transformers integration: AttnlabConfig / AttnlabForCausalLM through the Auto classes, generate() with the
backends' own decode states as the cache, padded batches (attention_mask with zeros), hidden states and the tuple
output as GPT-2 gives them (and the arguments refused rather than ignored), save/load with tied embeddings, export
to a self-contained folder that loads in a process without this repository, and the import of GPT-2 weights (no
downloads: random GPT-2s)."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache, GPT2Config, GPT2LMHeadModel,
                          LlamaConfig, LlamaForCausalLM)

from model.attention import BACKENDS
from model.config import ModelConfig
from model.configuration_attnlab import AttnlabConfig
from model.generation import generate as repo_generate
from model.generation import left_pad
from model.modeling_attnlab import AttnlabCache, AttnlabForCausalLM
from model.sampling import Sampler
from data.config import DataConfig
from model.gpt import GPT
from training.checkpoint import TrainState, load_checkpoint_model, save_checkpoint
from training.config import RunConfig, config_to_dict

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[2]
VOCAB = 97


def tiny_model(attention: str, position: str = "learned", scale: float = 6.0, **config) -> AttnlabForCausalLM:
    """A random 2-layer model whose weights are scaled up so greedy decoding does not just repeat one token."""
    torch.manual_seed(0)
    cfg = AttnlabConfig(**{"vocab_size": VOCAB, "n_positions": 64, "n_layer": 2, "n_head": 2, "n_embd": 32,
                           "attention": attention, "position": position, "bos_token_id": None, "eos_token_id": None,
                           **config})
    model = AttnlabForCausalLM(cfg).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(scale)
    return model


def greedy(model, ids, new_tokens, **options):
    mask = torch.ones_like(ids)  # else generate() infers padding wherever an id equals pad_token_id
    return model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                          **options)


def greedy_with_and_without_cache(model, ids, new_tokens, **options):
    """generate()'s dict output, greedy, with the backend's state as cache and without a cache."""
    options.update(return_dict_in_generate=True)
    return greedy(model, ids, new_tokens, **options), greedy(model, ids, new_tokens, use_cache=False, **options)


def test_config_exposes_the_standard_names_and_validates_through_the_model_config(tmp_path):
    cfg = AttnlabConfig(n_layer=3, n_head=4, n_embd=64, n_positions=128, attention="logexp")
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size, cfg.max_position_embeddings) == (
        3, 4, 64, 128)
    cfg.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, AttnlabConfig) and loaded.to_model_config() == cfg.to_model_config()
    assert AttnlabConfig().to_model_config() == ModelConfig()  # the model's defaults, declared once
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        AttnlabConfig(attention="nope")
    with pytest.raises(ValueError, match="divisible"):
        AttnlabConfig(n_embd=65, n_head=2)
    with pytest.raises(ValueError, match=r"bos_token_id=50256 is outside the vocabulary of 97 tokens; pass an id "
                                         r"below 97 or bos_token_id=None"):
        AttnlabConfig(vocab_size=97)
    assert AttnlabConfig(vocab_size=97, bos_token_id=None, eos_token_id=96).eos_token_id == 96


@pytest.mark.parametrize("attention", BACKENDS)
def test_generate_with_the_backend_state_equals_generate_without_a_cache(attention):
    model = tiny_model(attention)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    cached, plain = greedy_with_and_without_cache(model, ids, 24, output_logits=True)
    assert torch.equal(cached.sequences, plain.sequences)
    assert len(set(cached.sequences[0, 9:].tolist())) > 2  # a non-trivial continuation
    for a, b in zip(cached.logits, plain.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)

    def sample(use_cache: bool) -> torch.Tensor:
        torch.manual_seed(7)
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=True, top_k=20,
                              pad_token_id=0, use_cache=use_cache)

    assert torch.equal(sample(True), sample(False))


@pytest.mark.parametrize("attention", BACKENDS)
def test_greedy_generate_equals_the_repository_generator(attention):
    model = tiny_model(attention, position="rope")
    ids = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(2))
    ours = torch.stack(list(repo_generate(model.model, ids, 30, sampler=Sampler(temperature=0.0))), dim=1)
    assert torch.equal(greedy(model, ids, 30)[:, 5:], ours)


def test_generate_decodes_one_token_per_step_after_the_prefill():
    model = tiny_model("taylor")
    seen = []
    decode = model.model.decode
    model.model.decode = lambda idx, state, **kw: (seen.append(idx.shape[1]), decode(idx, state, **kw))[1]
    greedy(model, torch.zeros(1, 7, dtype=torch.long), 6)
    assert seen == [7, 1, 1, 1, 1, 1]


@pytest.mark.parametrize("attention", BACKENDS)
def test_beam_search_reorders_the_states(attention):
    model = tiny_model(attention)
    ids = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(3))
    assert torch.equal(greedy(model, ids, 10, num_beams=3), greedy(model, ids, 10, num_beams=3, use_cache=False))


def test_forward_logits_and_loss_match_the_model():
    model = tiny_model("expressive")
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(4))
    out = model(ids, labels=ids)
    torch.testing.assert_close(out.logits, model.model(ids)[0])
    targets = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)
    torch.testing.assert_close(out.loss, model.model(ids, targets)[1], atol=1e-5, rtol=1e-5)
    labels = ids.clone()
    labels[:, ::3] = -100  # transformers' label of the positions without a target
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
    torch.testing.assert_close(model(ids, labels=labels).loss, expected, atol=1e-6, rtol=1e-6)


def test_embeddings_input_and_a_mask_of_the_wrong_shape_are_refused_with_a_message():
    model = tiny_model("softmax")
    with pytest.raises(ValueError, match="inputs_embeds is not supported"):
        model(inputs_embeds=torch.zeros(1, 4, 32))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 3\); expected \(1, 4\)"):
        model(torch.ones(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 3, dtype=torch.long))


def test_ids_outside_the_vocabulary_labels_of_another_shape_and_foreign_caches_are_refused_with_a_message():
    model, ids = tiny_model("softmax"), torch.tensor([[1, 2, 3, 4]])
    with pytest.raises(ValueError, match=rf"input_ids hold {VOCAB} \(row 0, token 2\), outside this model's vocabulary "
                                         rf"of {VOCAB} ids: .*\(tokenizer.pad_token = tokenizer.eos_token\)"):
        model(torch.tensor([[1, 2, VOCAB]]))
    with pytest.raises(ValueError, match=r"input_ids hold -1 \(row 1, token 0\)"):
        model(torch.tensor([[1, 2], [-1, 3]]))
    cache = model(ids, use_cache=True).past_key_values
    with pytest.raises(ValueError, match=rf"input_ids hold {VOCAB} \(row 0, token 0\)"):  # continuing a cache
        model(torch.tensor([[VOCAB]]), past_key_values=cache)
    with pytest.raises(ValueError, match="input_ids must be integer token ids, got dtype torch.float32"):
        model(ids.float())
    with pytest.raises(ValueError, match=r"labels have shape \(1, 3\) and input_ids \(1, 4\): give one label per"):
        model(ids, labels=ids[:, :-1])
    beyond = ids.clone()
    beyond[0, 2] = VOCAB
    with pytest.raises(ValueError, match=rf"labels hold {VOCAB} \(row 0, token 2\), outside this model's vocabulary"):
        model(ids, labels=beyond)
    model(ids, labels=torch.full_like(ids, -100))  # -100: no label, as in transformers
    for foreign in (DynamicCache(), ((torch.zeros(1, 2, 5, 16),) * 2,) * 2):  # generate() refuses tuples itself
        with pytest.raises(ValueError, match="past_key_values must be the cache an attnlab model returned"):
            model(ids, past_key_values=foreign)
    with pytest.raises(ValueError, match=r"must be the cache an attnlab model returned \(.*\), got DynamicCache"):
        greedy(model, ids, 2, past_key_values=DynamicCache())


def test_generate_refuses_an_empty_prompt_and_a_length_past_the_learned_positions_before_any_step():
    model = tiny_model("softmax")
    ids, mask = torch.tensor([[5, 6, 7], [0, 0, 0]]), torch.tensor([[1, 1, 1], [0, 0, 0]])
    steps = []
    model.register_forward_hook(lambda *args: steps.append(1))
    with pytest.raises(ValueError, match="attention_mask row 1 has no real token: every prompt needs at least one"):
        model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=0)
    # the last token generated is never fed to the model: 64 positions hold a sequence of 65
    with pytest.raises(ValueError, match="a prompt of 3 tokens and 63 new ones would run past this model's 64 "
                                         "learned positions; ask for max_new_tokens <= 62"):
        greedy(model, ids[:1], 63)
    with pytest.raises(ValueError, match=r"shorten the prompt to 64 tokens"):
        greedy(model, torch.ones(1, 65, dtype=torch.long), 1)
    assert steps == []  # refused before any step
    assert greedy(model, ids[:1], 62).shape == (1, 65)
    assert greedy(model, torch.ones(1, 64, dtype=torch.long), 1).shape == (1, 65)
    assert greedy(tiny_model("softmax", position="rope"), ids[:1], 70).shape == (1, 73)  # no limit to positions


@pytest.mark.parametrize("attention", BACKENDS)
def test_an_eval_mode_forward_with_autograd_on_has_the_gradients_of_the_uncached_forward(attention):
    # The decode steps update their states in place, out of autograd's sight: the default call (use_cache on, eval
    # mode) must still differentiate the full forward, and its cache must still continue the sequence.
    model = tiny_model(attention)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(8))

    def gradients(**options) -> tuple[dict[str, torch.Tensor], object]:
        model.zero_grad(set_to_none=True)
        out = model(ids[:, :8], **options)
        out.logits.sum().backward()
        return {name: p.grad for name, p in model.named_parameters()}, out.past_key_values

    (cached, cache), (plain, _) = gradients(), gradients(use_cache=False)
    for name, grad in plain.items():
        assert cached[name] is not None, f"no gradient for {name}"
        torch.testing.assert_close(cached[name], grad, atol=0, rtol=0, msg=lambda m, name=name: f"{name}: {m}")
    with torch.no_grad():
        continued = model(ids[:, 8:], past_key_values=cache).logits[:, -1]
        torch.testing.assert_close(continued, model(ids, use_cache=False).logits[:, -1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("grad", [True, False])
def test_logits_to_keep_keeps_the_last_n_positions_or_the_listed_ones(use_cache, grad):
    model = tiny_model("taylor")
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(9))
    with torch.set_grad_enabled(grad):
        full = model(ids, use_cache=False).logits
        for keep, expected in [(None, full), (0, full), (1, full[:, -1:]), (3, full[:, -3:]), (20, full),
                               (torch.tensor([4, 0, 4]), full[:, [4, 0, 4]])]:
            logits = model(ids, use_cache=use_cache, logits_to_keep=keep).logits
            torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5, msg=lambda m, k=keep: f"{k}: {m}")


@pytest.mark.parametrize("keep", [-1, 2.5, True, "3", torch.tensor([[1, 2]]), torch.tensor([0.0, 1.0])])
def test_logits_to_keep_that_names_no_positions_is_refused_with_a_message(keep):
    model = tiny_model("softmax")
    with pytest.raises(ValueError, match="logits_to_keep must be an int n >= 0 .* or a 1-D integer tensor"):
        model(torch.ones(1, 4, dtype=torch.long), logits_to_keep=keep)
    with pytest.raises(ValueError, match="labels need the logits of every position"):
        model(torch.ones(1, 4, dtype=torch.long), labels=torch.ones(1, 4, dtype=torch.long), logits_to_keep=2)


# --- transformers' output options: hidden states, the tuple form, and what is refused rather than ignored ---

def manual_hidden_states(gpt: GPT, ids: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream of an unpadded batch worked out block by block from the modules: token + learned position
    embeddings, then x + attn(ln_1(x)) and x + mlp(ln_2(x)) per block, the final layer norm applied to the last."""
    positions = torch.arange(ids.shape[1])
    x = gpt.transformer.wte(ids) + gpt.transformer.wpe(positions)
    states = [x]
    for block in gpt.transformer.h:
        x = x + block.attn(block.ln_1(x), positions)[0]
        x = x + block.mlp(block.ln_2(x))
        states.append(x)
    states[-1] = gpt.transformer.ln_f(x)
    return states


@pytest.mark.parametrize("attention", BACKENDS)
def test_hidden_states_are_the_embeddings_and_each_blocks_output_the_last_after_the_final_norm(attention):
    model = tiny_model(attention)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        expected = manual_hidden_states(model.model, ids)
    # the full forward (use_cache off, or autograd on beside a cache), a decode into a new cache, and its last-only form
    for grad, options in [(False, dict(use_cache=False)), (True, dict(use_cache=True)), (False, dict(use_cache=True)),
                          (False, dict(use_cache=True, logits_to_keep=1))]:
        with torch.set_grad_enabled(grad):
            out = model(ids, output_hidden_states=True, **options)
        assert len(out.hidden_states) == 3, options
        for layer, (state, reference) in enumerate(zip(out.hidden_states, expected)):
            assert state.shape == (2, 9, 32) and state.requires_grad == grad
            torch.testing.assert_close(state, reference, atol=1e-4, rtol=1e-4,
                                       msg=lambda m, o=options, i=layer: f"{o}, hidden state {i}: {m}")
        kept = out.hidden_states[-1][:, -out.logits.shape[1] :]
        torch.testing.assert_close(model.model.lm_head(kept), out.logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", BACKENDS)
@torch.no_grad()
def test_hidden_states_that_continue_a_cache_are_those_of_the_new_tokens_in_the_full_forward(attention):
    model = tiny_model(attention)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(11))
    full = model(ids, use_cache=False, output_hidden_states=True).hidden_states
    prefill = model(ids[:, :6], output_hidden_states=True)
    continued = model(ids[:, 6:], past_key_values=prefill.past_key_values, output_hidden_states=True).hidden_states
    assert [h.shape for h in continued] == [(2, 3, 32)] * 3
    for layer, (first, then, whole) in enumerate(zip(prefill.hidden_states, continued, full)):
        torch.testing.assert_close(torch.cat([first, then], dim=1), whole, atol=1e-4, rtol=1e-4,
                                   msg=lambda m, i=layer: f"hidden state {i}: {m}")


def test_output_hidden_states_falls_back_on_the_config_and_takes_only_a_bool():
    model = tiny_model("taylor")
    ids = torch.randint(0, VOCAB, (1, 5))
    assert model(ids).hidden_states is None
    model.config.output_hidden_states = True
    assert len(model(ids).hidden_states) == 3
    assert model(ids, output_hidden_states=False).hidden_states is None
    for selection in (2, [-1]):
        message = (f"output_hidden_states must be True or False, got {selection!r}; True returns all 3 hidden "
                   "states: index that tuple to pick some")
        with pytest.raises(ValueError, match=re.escape(message)):
            model(ids, output_hidden_states=selection)


@pytest.mark.parametrize("attention", BACKENDS)
def test_generate_returns_the_hidden_states_of_each_step_with_and_without_the_cache(attention):
    model = tiny_model(attention)
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(12))
    cached, plain = greedy_with_and_without_cache(model, ids, 4, output_hidden_states=True)
    assert torch.equal(cached.sequences, plain.sequences) and len(cached.hidden_states) == len(plain.hidden_states) == 4
    with torch.no_grad():
        full = model(cached.sequences[:, :-1], use_cache=False, output_hidden_states=True).hidden_states
    for step in range(4):
        end = 5 + step  # the tokens seen when the step's token is chosen
        new = 5 if step == 0 else 1  # the prefill, then one token per step
        for layer, whole in enumerate(full):
            torch.testing.assert_close(cached.hidden_states[step][layer], whole[:, end - new : end], atol=1e-4,
                                       rtol=1e-4, msg=lambda m, s=step, i=layer: f"step {s}, hidden state {i}: {m}")
            torch.testing.assert_close(plain.hidden_states[step][layer], whole[:, :end], atol=1e-4, rtol=1e-4)


ATTENTIONS_REFUSED = (r"output_attentions is not supported: the attnlab backends compute attention in fused, tiled "
                      r"or recurrent forms and return no attention weights; pass "
                      r"output_attentions=False \(the kernel's inputs, each layer's queries and keys, come from "
                      r"python -m evals.extract")


def test_output_attentions_is_refused_from_the_argument_the_config_and_generate():
    model = tiny_model("softmax")
    ids = torch.randint(0, VOCAB, (1, 5))
    assert model(ids, output_attentions=False).attentions is None
    with pytest.raises(ValueError, match=ATTENTIONS_REFUSED):
        model(ids, output_attentions=True)
    with pytest.raises(ValueError, match=ATTENTIONS_REFUSED):
        greedy(model, ids, 3, output_attentions=True, return_dict_in_generate=True)
    model.config.output_attentions = True
    with pytest.raises(ValueError, match=ATTENTIONS_REFUSED):
        model(ids)


def test_return_dict_false_gives_the_tuple_of_the_fields_that_are_set():
    model = tiny_model("expressive")
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(13))
    out = model(ids, labels=ids)
    loss, logits = model(ids, labels=ids, return_dict=False)
    torch.testing.assert_close(loss, out.loss, atol=0, rtol=0)
    torch.testing.assert_close(logits, out.logits, atol=0, rtol=0)
    with torch.no_grad():
        logits, cache, hidden_states = model(ids, output_hidden_states=True, return_dict=False)
    assert isinstance(cache, AttnlabCache) and cache.get_seq_length() == 6 and len(hidden_states) == 3
    model.config.return_dict = False
    assert isinstance(model(ids, use_cache=False), tuple) and not isinstance(model(ids, return_dict=True), tuple)
    assert torch.equal(greedy(model, ids, 3), greedy(tiny_model("expressive"), ids, 3))  # generate asks for the dict


@pytest.mark.parametrize("name, value, why", [
    ("inputs_embeds", torch.zeros(1, 4, 32), r"attnlab models take input_ids \(token ids\) only"),
    ("token_type_ids", torch.zeros(1, 4, dtype=torch.long), "attnlab models have no token type embeddings"),
    ("num_items_in_batch", torch.tensor(8), "the loss is the mean over this call's targets"),
    ("output_hidden_state", True, "not an argument of this model"),  # a typo
])
def test_an_argument_the_model_would_ignore_is_refused_by_name(name, value, why):
    model = tiny_model("logexp")
    with pytest.raises(ValueError, match=rf"^AttnlabForCausalLM.forward\(\) does not take {name} \({name}: {why}\)$"):
        model(torch.ones(1, 4, dtype=torch.long), **{name: value})


def test_arguments_given_as_none_and_generates_cache_position_pass():
    model = tiny_model("logexp")
    ids = torch.randint(0, VOCAB, (1, 4))
    with pytest.raises(ValueError, match=r"does not take a, b \(a: not an argument of this model; b: not an "
                                         r"argument of this model\)"):
        model(ids, b=1, a=2)
    with pytest.raises(ValueError, match=r"position_ids differ from the positions this model uses \(row 0, token 0: "
                                         r"1 given, 0 used\)"):
        greedy(model, ids, 3, position_ids=torch.arange(1, 5)[None])  # generate() hands a caller's on
    logits = model(ids, use_cache=False).logits
    given = model(ids, use_cache=False, cache_position=torch.arange(4), position_ids=None, token_type_ids=None,
                  inputs_embeds=None, output_attentions=None).logits
    assert torch.equal(given, logits)


def test_trainer_scales_the_loss_for_gradient_accumulation_itself(tmp_path):
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate (the eval extra)")
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, gradient_accumulation_steps=4)
    assert Trainer(model=tiny_model("taylor"), args=args).model_accepts_loss_kwargs is False


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_from_gpt_copies_the_weights_onto_the_models_device_and_dtype(device):
    gpt = tiny_model("softmax").model.to(device=device, dtype=torch.float64)
    hf = AttnlabForCausalLM.from_gpt(gpt)
    weight = hf.model.transformer.h[0].attn.c_attn.weight
    assert weight.device == gpt.transformer.h[0].attn.c_attn.weight.device and weight.dtype == torch.float64
    ids = torch.randint(0, VOCAB, (1, 6), device=device)
    with torch.no_grad():
        torch.testing.assert_close(hf(ids, use_cache=False).logits, gpt(ids)[0], atol=0, rtol=0)
        gpt.transformer.h[0].attn.c_attn.weight.zero_()  # a copy: changing the GPT afterwards leaves hf as it was
    assert weight.abs().sum() > 0


# --- padding: prompts of different lengths in one batch, as lm-evaluation-harness and pipelines send them ---

PROMPT_LENGTHS = (5, 9, 2)


def ragged_prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(6)
    return [torch.randint(1, VOCAB, (n,), generator=gen).tolist() for n in PROMPT_LENGTHS]


def padded(prompts: list[list[int]], side: str = "left", extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """ids and attention_mask (0/1 ints, as a tokenizer returns them) padded with id 0 on `side`, `extra` columns
    wider than needed."""
    ids, mask = left_pad(prompts)
    ids, mask = F.pad(ids, (extra, 0)), F.pad(mask, (extra, 0))
    if side == "right":
        ids, mask = torch.stack([row.roll(-int((~m).sum())) for row, m in zip(ids, mask)]), mask.flip(1)
    return ids, mask.long()


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("attention", BACKENDS)
@torch.no_grad()
def test_a_padded_batch_gives_each_prompt_its_unpadded_logits_with_and_without_the_cache(attention, side):
    model = tiny_model(attention, position="rope")
    prompts = ragged_prompts()
    ids, mask = padded(prompts, side)
    for use_cache in (True, False):
        logits = model(ids, attention_mask=mask, use_cache=use_cache).logits
        for row, prompt in enumerate(prompts):
            alone = model(torch.tensor([prompt])).logits[0]
            torch.testing.assert_close(logits[row][mask[row].bool()], alone, atol=1e-5, rtol=0)


@torch.no_grad()
def test_position_ids_equal_to_the_masks_are_taken_and_others_refused_naming_the_first_difference():
    model = tiny_model("taylor", position="learned")
    ids, mask = padded(ragged_prompts())
    gpt2_positions = (mask.cumsum(1) - 1).masked_fill(mask == 0, 1)  # transformers' GPT-2 derivation
    out = model(ids, attention_mask=mask)
    given = model(ids, attention_mask=mask, position_ids=gpt2_positions)
    torch.testing.assert_close(given.logits, out.logits, atol=0, rtol=0)
    more = torch.randint(1, VOCAB, (ids.shape[0], 2), generator=torch.Generator().manual_seed(2))
    full_mask = F.pad(mask, (0, 2), value=1)
    next_positions = mask.sum(1, keepdim=True) + torch.arange(2)  # each row continues after its real tokens
    step = model(more, attention_mask=full_mask, past_key_values=given.past_key_values, position_ids=next_positions)
    alone = model(torch.cat([ids, more], 1), attention_mask=full_mask, use_cache=False).logits[:, -2:]
    torch.testing.assert_close(step.logits, alone, atol=1e-5, rtol=0)
    unpadded = torch.randint(1, VOCAB, (3, 5))
    model(unpadded, position_ids=torch.arange(5)[None])  # one row for the whole batch, as transformers allows
    shifted = gpt2_positions.clone()
    row = int(mask.sum(1).argmax())
    shifted[row, -1] += 1
    with pytest.raises(ValueError, match=rf"^position_ids differ from the positions this model uses \(row {row}, "
                                         rf"token {ids.shape[1] - 1}: {int(shifted[row, -1])} given, "
                                         rf"{int(gpt2_positions[row, -1])} used\): positions come from attention_mask"):
        model(ids, attention_mask=mask, position_ids=shifted)
    for wrong in (torch.arange(ids.shape[1]), torch.zeros(2, ids.shape[1], dtype=torch.long),
                  gpt2_positions.float()):
        with pytest.raises(ValueError, match=rf"^position_ids must be an integer tensor of shape "
                                             rf"\({ids.shape[0]}, {ids.shape[1]}\) or \(1, {ids.shape[1]}\)"):
            model(ids, attention_mask=mask, position_ids=wrong)


def generate_padded(model, prompts, new_tokens, extra: int = 0, **options) -> list[list[int]]:
    """The tokens generate() appends to each prompt of the left-padded batch (the padded prompt columns dropped)."""
    ids, mask = padded(prompts, extra=extra)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, pad_token_id=0, **options)
    return out[:, ids.shape[1] :].tolist()


@pytest.mark.parametrize("attention", BACKENDS)
def test_generate_on_a_left_padded_batch_equals_each_prompt_alone(attention):
    model = tiny_model(attention, position="learned")
    prompts = ragged_prompts()
    for options in (dict(do_sample=False), dict(do_sample=False, num_beams=3)):
        batch = generate_padded(model, prompts, 12, **options)
        assert batch == [generate_padded(model, [prompt], 12, **options)[0] for prompt in prompts], options
    assert len(set(batch[0])) > 2  # a non-trivial continuation


@pytest.mark.parametrize("attention", BACKENDS)
def test_generate_continues_from_the_cache_it_returned_as_from_scratch(attention):
    """A conversation goes on from the cache generate() returned: the whole sequence so far plus new tokens, with
    that cache, generates what the same input generates without it (a left-padded batch, greedy and beams)."""
    model = tiny_model(attention, position="rope")
    ids, mask = padded(ragged_prompts())
    first = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0,
                           return_dict_in_generate=True)
    more = torch.randint(1, VOCAB, (ids.shape[0], 4), generator=torch.Generator().manual_seed(8))
    whole = torch.cat([first.sequences, more], 1)
    whole_mask = F.pad(mask, (0, whole.shape[1] - mask.shape[1]), value=1)
    for options in (dict(do_sample=False), dict(do_sample=False, num_beams=3)):
        cache = copy.deepcopy(first.past_key_values)  # generate() updates a cache in place
        continued = model.generate(whole, attention_mask=whole_mask, past_key_values=cache, max_new_tokens=6,
                                   pad_token_id=0, **options)
        assert cache.get_seq_length() == continued.shape[1] - 1, options
        scratch = model.generate(whole, attention_mask=whole_mask, max_new_tokens=6, pad_token_id=0, **options)
        assert torch.equal(continued, scratch), options
    with pytest.raises(ValueError, match=r"^past_key_values holds \d+ tokens, and input_ids \(4 tokens\) must hold "
                                         r"them followed by at least one new token"):
        model.generate(more, past_key_values=first.past_key_values, max_new_tokens=2, pad_token_id=0)
    other_rows = torch.cat([whole, whole.flip(0)])  # twice the cache's rows, but not its rows repeated
    with pytest.raises(ValueError, match=r"^past_key_values holds \d+ rows and input_ids \d+"):
        model.generate(other_rows, attention_mask=torch.cat([whole_mask, whole_mask.flip(0)]), max_new_tokens=2,
                       past_key_values=copy.deepcopy(first.past_key_values), pad_token_id=0)
    beams = model.generate(ids, attention_mask=mask, max_new_tokens=3, num_beams=3, do_sample=False, pad_token_id=0,
                           return_dict_in_generate=True)
    after_beams = torch.cat([beams.sequences, more], 1)
    with pytest.raises(ValueError, match=r"a beam search's holds num_beams rows per prompt, one per beam"):
        model.generate(after_beams, attention_mask=F.pad(mask, (0, after_beams.shape[1] - mask.shape[1]), value=1),
                       past_key_values=beams.past_key_values, max_new_tokens=2, pad_token_id=0)
    refused = "^assisted generation is not supported with stateful models, such as AttnlabForCausalLM"
    for cache in (first.past_key_values, None):
        with pytest.raises(ValueError, match=refused):
            model.generate(whole, attention_mask=whole_mask, past_key_values=cache, max_new_tokens=2,
                           pad_token_id=0, prompt_lookup_num_tokens=2)
        with pytest.raises(ValueError, match=refused):
            model.generate(whole, attention_mask=whole_mask, past_key_values=cache, max_new_tokens=2,
                           pad_token_id=0, assistant_model=model)
    with pytest.raises(ValueError, match="^assisted and prompt-lookup decoding drop rejected tokens from the cache"):
        first.past_key_values.activate_past_recording()  # the cache's own refusal, for callers outside generate()


@pytest.mark.parametrize("attention", BACKENDS)
def test_seeded_sampling_of_a_padded_batch_does_not_depend_on_the_padding_or_the_cache(attention):
    # Rows of a batch draw from one generator, so a row's samples depend on its batch; within the batch they
    # depend neither on how much padding there is nor on the cache.
    model = tiny_model(attention, position="rope")
    prompts = ragged_prompts()

    def sample(extra: int, use_cache: bool) -> list[list[int]]:
        torch.manual_seed(7)
        return generate_padded(model, prompts, 12, extra=extra, do_sample=True, top_k=20, use_cache=use_cache)

    reference = sample(0, True)
    assert sample(3, True) == reference
    assert sample(0, False) == reference


def test_tied_embeddings_survive_save_and_load(tmp_path):
    model = tiny_model("taylor")
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        names = list(weights.keys())
    assert "model.transformer.wte.weight" in names and "model.lm_head.weight" not in names
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, AttnlabForCausalLM)
    assert loaded.model.lm_head.weight is loaded.model.transformer.wte.weight
    ids = torch.randint(0, VOCAB, (1, 12))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)


@pytest.mark.parametrize("tied", [True, False])
@torch.no_grad()
def test_resize_token_embeddings_widens_the_head_and_keeps_the_old_tokens_logits(tmp_path, tied):
    model = tiny_model("logexp", tie_word_embeddings=tied)
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(9))
    before = model(ids).logits
    model.resize_token_embeddings(VOCAB + 3)
    gpt = model.model
    assert model.config.vocab_size == gpt.config.vocab_size == VOCAB + 3
    assert gpt.lm_head.weight.shape == gpt.transformer.wte.weight.shape == (VOCAB + 3, 32)
    assert (gpt.lm_head.weight is gpt.transformer.wte.weight) == tied
    after = model(ids).logits
    assert after.shape == (2, 7, VOCAB + 3)
    torch.testing.assert_close(after[..., :VOCAB], before, atol=1e-5, rtol=1e-5)
    new_ids = torch.tensor([[VOCAB + 2, 1, VOCAB]])
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(new_ids).logits, model(new_ids).logits, atol=0, rtol=0)
    model.resize_token_embeddings(VOCAB + 103, mean_resizing=False)  # new rows start as GPT initialises them
    assert float(gpt.lm_head.weight[VOCAB + 3:].std()) == pytest.approx(model.config.init_std, rel=0.1)


def test_resize_token_embeddings_that_would_drop_the_eos_token_is_refused_before_any_change():
    model = tiny_model("softmax", eos_token_id=90)
    with pytest.raises(ValueError, match=r"^resize_token_embeddings\(80\) would drop eos_token_id=90; keep at least "
                                         r"91 tokens, or set config.eos_token_id to a smaller id or None first$"):
        model.resize_token_embeddings(80)
    assert model.config.vocab_size == model.model.transformer.wte.weight.shape[0] == VOCAB


# --- export: a folder that loads with trust_remote_code in a process that never imports this repository ---

CLEAN_LOAD = r"""
import sys, torch
class NoRepository:  # the repository is installed in this venv: make sure nothing of it is used
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in ("model", "data", "training", "evals", "typedconfig", "fileio", "experiments"):
            raise ImportError(f"the exported folder imported {name} from the repository")
sys.meta_path.insert(0, NoRepository)
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, out = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
ids = tokenizer("ROMEO: Is it", return_tensors="pt").input_ids
bare = AutoTokenizer.from_pretrained(folder)  # asks about config.json's code first; no answer (stdin closed): loads
assert type(bare) is type(tokenizer) and bare("ROMEO: Is it", return_tensors="pt").input_ids.tolist() == ids.tolist()
with torch.no_grad():
    logits = model(ids).logits
generated = model.generate(ids, max_new_tokens=12, do_sample=False)
torch.save({"ids": ids, "logits": logits, "generated": generated, "class": type(model).__module__}, out)
"""


@pytest.fixture(scope="module")
def trained_run(prepared_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("hf") / "tiny-taylor"
    subprocess.run(
        [sys.executable, str(ROOT / "train.py"), str(ROOT / "configs" / "tiny.yaml"), f"train.out_dir={run}",
         f"data.prepared_dir={prepared_dir}", "model.attention=taylor", "model.position=rope", "train.max_steps=4",
         "train.eval_interval=4", "train.sample_tokens=0"],
        check=True, capture_output=True, cwd=ROOT,
    )
    return run


def script(name: str):
    """A scripts/ CLI as a module, so its main() runs in this process (no interpreter start per call)."""
    spec = importlib.util.spec_from_file_location(f"{name}_cli", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


export_hf, import_gpt2_cli = script("export_hf"), script("import_gpt2")


def run_cli(cli, capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_export_loads_without_the_repository_and_reproduces_logits_and_greedy_text(trained_run, tmp_path, capsys):
    folder = tmp_path / "export"
    code, out, err = run_cli(export_hf, capsys, "--ckpt", str(trained_run), "--out", str(folder))
    assert code == 0 and "attention taylor" in out, err
    assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"] == (
        "modeling_attnlab.AttnlabForCausalLM")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-I", "-c", CLEAN_LOAD, str(folder), str(tmp_path / "out.pt")], check=True,
                   env=env, cwd=tmp_path, capture_output=True, stdin=subprocess.DEVNULL)
    remote = torch.load(tmp_path / "out.pt")
    assert remote["class"].startswith("transformers_modules.")
    gpt, _, _ = load_checkpoint_model(trained_run)
    torch.testing.assert_close(remote["logits"], gpt(remote["ids"])[0], atol=1e-5, rtol=1e-5)
    ours = torch.stack(list(repo_generate(gpt, remote["ids"], 12, sampler=Sampler(temperature=0.0),
                                          stop_id=50256)), dim=1)
    assert torch.equal(remote["generated"][:, remote["ids"].shape[1]:], ours)


def test_export_refuses_to_overwrite_and_names_a_missing_checkpoint(trained_run, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    code, _, err = run_cli(export_hf, capsys, "--ckpt", str(trained_run), "--out", str(tmp_path / "taken"))
    assert code == 2 and "--force" in err
    code, _, err = run_cli(export_hf, capsys, "--ckpt", str(tmp_path / "missing"), "--out", str(tmp_path / "x"))
    assert code == 2 and "does not exist" in err


def small_run(run_dir: Path) -> Path:
    """A run directory with two checkpoints of a random 1-layer model (GPT-2 vocabulary), written directly."""
    cfg = RunConfig(model=ModelConfig(n_layer=1, n_head=2, n_embd=16, n_positions=16), data=DataConfig(block_size=16))
    torch.manual_seed(0)
    run_dir.mkdir(parents=True, exist_ok=True)
    for step in (1, 2):
        save_checkpoint(run_dir, GPT(cfg.model), TrainState(step=step), config_to_dict(cfg), keep=2)
    return run_dir


@pytest.mark.parametrize("ckpt, out", [
    ("run", "run"), ("run", "run/checkpoints"), ("run", "run/checkpoints/step_000002"), ("run", "."),
    ("run/checkpoints/step_000002", "run/checkpoints/step_000001"), ("run/checkpoints/step_000002", "run"),
    ("run/checkpoints", "run/checkpoints/step_000009"),
])
def test_export_with_force_never_replaces_the_run_it_exports(tmp_path, capsys, monkeypatch, ckpt, out):
    """--force replaces --out: the run being exported, a checkpoint of it or a folder holding it would go with it."""
    monkeypatch.chdir(tmp_path)  # `.` is the folder holding the run
    run = small_run(tmp_path / "run")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    code, _, err = run_cli(export_hf, capsys, "--ckpt", str(tmp_path / ckpt), "--out", out, "--force")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--out {(tmp_path / out).resolve()} holds or lies in the run being exported" in err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_export_resolves_the_out_path_and_names_what_a_folder_it_would_replace_holds(tmp_path, capsys, monkeypatch):
    run = small_run(tmp_path / "runs" / "run")
    here = tmp_path / "work" / "here"
    here.mkdir(parents=True)
    for name in ("d.txt", "a.txt", "c.txt", "b.txt"):
        (here / name).write_text("x")
    monkeypatch.chdir(here)  # replacing the working directory would leave the shell in a deleted folder
    code, _, err = run_cli(export_hf, capsys, "--ckpt", str(run), "--out", ".")  # `.` has no name of its own
    assert code == 2
    assert err == f"export_hf: --out {here} is the current directory or holds it; name a folder to create\n"
    for out in ("..", "../here/."):
        code, _, err = run_cli(export_hf, capsys, "--ckpt", str(run), "--out", out, "--force")
        assert code == 2 and "is the current directory or holds it" in err
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(export_hf, capsys, "--ckpt", str(run), "--out", "work/here/.")
    assert code == 2 and err == (f"export_hf: --out {here} holds 4 entries (a.txt, b.txt, c.txt, ...); pass --force "
                                 "to replace it (its contents are deleted) or name another folder\n")
    code, out, err = run_cli(export_hf, capsys, "--ckpt", str(run), "--out", "work/here/.", "--force")
    assert code == 0 and f"to {here}:" in out, err
    assert (here / "config.json").is_file() and not (here / "a.txt").exists()
    assert [p.name for p in here.parent.iterdir()] == ["here"]  # no temporary or swapped-out folder left beside it


def test_the_exported_tokenizer_truncates_at_the_learned_positions_and_not_without_them(trained_run, tmp_path, capsys):
    learned, rope = tmp_path / "learned", tmp_path / "rope"
    assert run_cli(export_hf, capsys, "--ckpt", str(small_run(tmp_path / "run")), "--out", str(learned))[0] == 0
    assert run_cli(export_hf, capsys, "--ckpt", str(trained_run), "--out", str(rope))[0] == 0
    text = "To be, or not to be: that is the question. " * 20
    unlimited = AutoTokenizer.from_pretrained(rope)
    truncated = AutoTokenizer.from_pretrained(learned)(text, truncation=True).input_ids
    assert truncated == unlimited(text).input_ids[:16]  # n_positions
    assert unlimited.model_max_length == int(1e30)  # transformers' "no limit" (VERY_LARGE_INTEGER)
    assert unlimited(text, truncation=True).input_ids == unlimited(text).input_ids


@pytest.mark.parametrize("cli, args", [(export_hf, ("--out", "again")), (script("generate"), ("--prompt", "Hi"))])
def test_a_transformers_folder_given_as_the_checkpoint_is_named_as_such(tmp_path, capsys, monkeypatch, cli, args):
    monkeypatch.chdir(tmp_path)
    assert run_cli(export_hf, capsys, "--ckpt", str(small_run(tmp_path / "run")), "--out", "export")[0] == 0
    code, out, err = run_cli(cli, capsys, "--ckpt", "export", *args)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.endswith(": export is a transformers export, not a checkpoint; load it with AutoModelForCausalLM."
                        "from_pretrained('export', trust_remote_code=True), or pass the run directory or checkpoint "
                        "it came from\n"), err
    random_gpt2(tmp_path / "gpt2")
    code, out, err = run_cli(cli, capsys, "--ckpt", "gpt2", *args)
    assert code == 2 and "gpt2 is a transformers model folder (model_type 'gpt2'), not an attnlab checkpoint" in err
    assert "scripts/import_gpt2.py" in err


# --- import of GPT-2 weights ---

def random_gpt2(folder: Path, **config) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(**{"vocab_size": 50257, "n_positions": 64, "n_embd": 64, "n_layer": 2, "n_head": 2, **config})
    model = GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("tied", [True, False])
def test_imported_gpt2_reproduces_transformers_logits(tmp_path, capsys, tied):
    reference = random_gpt2(tmp_path / "gpt2", tie_word_embeddings=tied, initializer_range=0.05)
    code, _, err = run_cli(import_gpt2_cli, capsys, "--from", str(tmp_path / "gpt2"), "--out", str(tmp_path / "run"))
    assert code == 0, err
    gpt, cfg, _ = load_checkpoint_model(tmp_path / "run")
    ids = torch.randint(0, 50257, (2, 40), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(gpt(ids)[0], reference(ids).logits, atol=1e-5, rtol=1e-5)
    assert cfg.model.attention == "softmax" and gpt.num_params() == reference.num_parameters()
    assert cfg.model.tie_word_embeddings == tied and cfg.model.init_std == 0.05
    assert (gpt.lm_head.weight is gpt.transformer.wte.weight) == tied


def test_imported_gpt2_gives_transformers_hidden_states_in_forward_and_generate(tmp_path, capsys):
    reference = random_gpt2(tmp_path / "gpt2", initializer_range=0.05)
    code, _, err = run_cli(import_gpt2_cli, capsys, "--from", str(tmp_path / "gpt2"), "--out", str(tmp_path / "run"))
    assert code == 0, err
    ours = AttnlabForCausalLM.from_gpt(load_checkpoint_model(tmp_path / "run")[0])
    ids = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        theirs, mine = reference(ids, output_hidden_states=True), ours(ids, output_hidden_states=True)
    assert len(mine.hidden_states) == len(theirs.hidden_states) == 3
    for state, expected in zip(mine.hidden_states, theirs.hidden_states):
        torch.testing.assert_close(state, expected, atol=1e-5, rtol=1e-5)
    options = dict(output_hidden_states=True, return_dict_in_generate=True)
    theirs, mine = greedy(reference, ids, 3, **options), greedy(ours, ids, 3, **options)
    assert torch.equal(mine.sequences, theirs.sequences) and len(mine.hidden_states) == len(theirs.hidden_states)
    for step, (states, expected) in enumerate(zip(mine.hidden_states, theirs.hidden_states)):
        assert [h.shape for h in states] == [h.shape for h in expected], step
        for state, want in zip(states, expected):
            torch.testing.assert_close(state, want, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_import_into_another_backend_copies_the_projections_and_fine_tunes(tmp_path, prepared_dir, capsys):
    reference = random_gpt2(tmp_path / "gpt2")
    code, _, err = run_cli(import_gpt2_cli, capsys, "--from", str(tmp_path / "gpt2"), "--attention", "taylor",
                           "--out", str(tmp_path / "run"))
    assert code == 0, err
    gpt, _, _ = load_checkpoint_model(tmp_path / "run")
    ours, theirs = gpt.transformer.h[1], reference.transformer.h[1]
    torch.testing.assert_close(ours.attn.c_attn.weight, theirs.attn.c_attn.weight.t(), atol=0, rtol=0)
    torch.testing.assert_close(ours.mlp.c_proj.weight, theirs.mlp.c_proj.weight.t(), atol=0, rtol=0)
    fine_tune = subprocess.run(
        [sys.executable, "train.py", "configs/tiny.yaml", "model.attention=taylor", f"train.out_dir={tmp_path / 'ft'}",
         f"data.prepared_dir={prepared_dir}", "train.max_steps=2", "train.eval_interval=2", "train.sample_tokens=0",
         "--resume", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert fine_tune.returncode == 0, fine_tune.stderr
    assert "starting from the weights of" in fine_tune.stdout
    assert (tmp_path / "ft" / "checkpoints" / "step_000002").is_dir()


def test_an_imported_gpt2_with_a_smaller_vocabulary_exports_without_a_tokenizer_and_loads(tmp_path, capsys):
    """Its run names the GPT-2 tokenizer, whose ids (end of text 50256 among them) the model's 1000 tokens cannot
    hold: the export carries no tokenizer and no bos/eos, and loads."""
    reference = random_gpt2(tmp_path / "gpt2", vocab_size=1000)
    assert run_cli(import_gpt2_cli, capsys, "--from", str(tmp_path / "gpt2"), "--out", str(tmp_path / "run"))[0] == 0
    code, out, err = run_cli(export_hf, capsys, "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "export"))
    assert code == 0, err
    assert ("no tokenizer (the model's vocabulary of 1000 tokens is smaller than tokenizer gpt2's 50257: copy in the "
            "tokenizer it was trained with)") in out
    assert not (tmp_path / "export" / "tokenizer.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    assert loaded.config.bos_token_id is None and loaded.config.eos_token_id is None
    assert loaded.generation_config.eos_token_id is None
    ids = torch.randint(0, 1000, (1, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-5)


def test_import_refuses_what_the_model_cannot_represent(tmp_path, capsys):
    random_gpt2(tmp_path / "relu", activation_function="relu")
    code, _, err = run_cli(import_gpt2_cli, capsys, "--from", str(tmp_path / "relu"), "--out", str(tmp_path / "run"))
    assert code == 2 and "activation_function='relu'" in err
    code, _, err = run_cli(import_gpt2_cli, capsys, "--from", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"))
    assert code == 2 and "nowhere is not a folder (it does not exist)" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(import_gpt2_cli, capsys, "--from", str(tmp_path / "empty"), "--out", str(tmp_path / "r"))
    assert code == 2 and "empty holds no config.json" in err
    code, _, err = run_cli(import_gpt2_cli, capsys, "--from", str(tmp_path / "relu"), "--out", str(tmp_path / "r"),
                           "--attention-option", "crossover")
    assert code == 2 and "NAME=VALUE" in err


def test_import_does_not_overwrite_a_run(tmp_path, capsys):
    random_gpt2(tmp_path / "gpt2")
    args = ("--from", str(tmp_path / "gpt2"), "--out", str(tmp_path / "run"))
    assert run_cli(import_gpt2_cli, capsys, *args)[0] == 0
    code, _, err = run_cli(import_gpt2_cli, capsys, *args)
    assert code == 2 and "already holds checkpoints" in err
    code, _, err = run_cli(import_gpt2_cli, capsys, "--from", str(tmp_path / "gpt2"), "--out", str(tmp_path / "gpt2"))
    assert code == 2 and "is the --from folder: the run's files would mix with the GPT-2 files" in err


def damaged_gpt2(folder: Path, damage: str) -> None:
    """A GPT-2 folder transformers loads only in part (it fills the rest randomly and only warns), or not at all."""
    if damage == "llama":
        config = LlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
        LlamaForCausalLM(config).save_pretrained(folder)
        return
    random_gpt2(folder)
    weights = folder / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return
    state = load_file(weights)
    if damage == "missing":
        del state["transformer.h.0.mlp.c_fc.weight"]
    elif damage == "shape":
        state["transformer.h.0.mlp.c_fc.weight"] = state["transformer.h.0.mlp.c_fc.weight"][:, :128].contiguous()
    elif damage == "unexpected":
        state["transformer.h.0.mlp.gate.weight"] = torch.zeros(4, 4)
    save_file(state, weights, metadata={"format": "pt"})


@pytest.mark.parametrize("damage, message", [
    ("missing", "tensors 1 missing (transformer.h.0.mlp.c_fc.weight)"),
    ("shape", "tensors 1 of another shape (transformer.h.0.mlp.c_fc.weight [64, 128] where config.json needs "
              "[64, 256])"),
    ("unexpected", "tensors 1 unexpected (transformer.h.0.mlp.gate.weight)"),
    ("truncated", "the weights cannot be read (SafetensorError: "),
    ("llama", "config.json has model_type 'llama', not 'gpt2'"),
])
def test_import_refuses_a_folder_whose_weights_do_not_all_load(tmp_path, capsys, damage, message):
    damaged_gpt2(tmp_path / "gpt2", damage)
    capsys.readouterr()  # save_pretrained's progress bar
    code, out, err = run_cli(import_gpt2_cli, capsys, "--from", str(tmp_path / "gpt2"), "--out", str(tmp_path / "run"))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"import_gpt2: {tmp_path / 'gpt2'}") and message in err, err
    assert not (tmp_path / "run").exists()


def test_import_takes_a_hub_layout_with_mask_buffers_and_no_separate_head(tmp_path, capsys):
    """The Hub's gpt2 files name the tensors without `transformer.`, store the causal-mask buffers and leave the tied
    head out: none of that is a missing or unexpected weight."""
    reference = random_gpt2(tmp_path / "gpt2")
    state = {name.removeprefix("transformer."): tensor
             for name, tensor in load_file(tmp_path / "gpt2" / "model.safetensors").items() if name != "lm_head.weight"}
    for layer in range(2):
        state[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
        state[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(state, tmp_path / "gpt2" / "model.safetensors", metadata={"format": "pt"})
    code, _, err = run_cli(import_gpt2_cli, capsys, "--from", str(tmp_path / "gpt2"), "--out", str(tmp_path / "run"))
    assert code == 0, err
    gpt, _, _ = load_checkpoint_model(tmp_path / "run")
    ids = torch.randint(0, 50257, (1, 20), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(gpt(ids)[0], reference(ids).logits, atol=1e-5, rtol=1e-5)
