"""Padded batches through the model: the logits of every row's real tokens equal those of the row alone, in the
full forward, the prefill and the decode steps, for every backend, with learned and rotary positions and left or
right padding."""

from __future__ import annotations

import pytest
import torch

from model.attention import BACKENDS, get_backend
from model.config import ModelConfig
from model.gpt import GPT
from model.position import token_positions

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = 97
LENGTHS = (7, 19, 3)  # prompts of a batch


def tiny_model(attention: str, position: str) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, n_positions=64, n_layer=2, n_head=2, n_embd=32, attention=attention,
                      position=position)
    return GPT(cfg).eval()


def padded_batch(side: str) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Prompts of LENGTHS, and them as one batch padded on `side` with random ids (the padding's ids must not
    matter): ids (3, 19), mask (3, 19)."""
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, VOCAB, (n,), generator=gen) for n in LENGTHS]
    width = max(LENGTHS)
    ids = torch.randint(0, VOCAB, (len(prompts), width), generator=gen)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        real = slice(width - len(prompt), width) if side == "left" else slice(0, len(prompt))
        ids[row, real], mask[row, real] = prompt, True
    return prompts, ids, mask


def real_logits(logits: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    return [logits[row, mask[row]] for row in range(len(mask))]


@pytest.mark.parametrize("position", ["learned", "rope"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("attention", BACKENDS)
@torch.no_grad()
def test_the_real_tokens_of_a_padded_batch_get_their_unpadded_logits(attention, side, position):
    model = tiny_model(attention, position)
    prompts, ids, mask = padded_batch(side)
    alone = [model(prompt[None])[0][0] for prompt in prompts]
    full = real_logits(model(ids, mask=mask)[0], mask)
    state = model.init_decode_state(3, dtype=torch.float32, device="cpu", capacity=4)
    decoded = []
    for t0, t1 in ((0, 8), (8, 11), *((t, t + 1) for t in range(11, ids.shape[1]))):  # prefill, chunk, steps
        logits, state = model.decode(ids[:, t0:t1], state, mask=mask[:, t0:t1])
        decoded.append(logits)
    decoded = real_logits(torch.cat(decoded, dim=1), mask)
    for want, got_full, got_decoded in zip(alone, full, decoded):
        torch.testing.assert_close(got_full, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(got_decoded, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("position", ["learned", "rope"])
@pytest.mark.parametrize("attention", BACKENDS)
@torch.no_grad()
def test_decoding_after_a_left_padded_prefill_continues_each_row_from_its_own_length(attention, position):
    model = tiny_model(attention, position)
    prompts, ids, mask = padded_batch("left")
    new = torch.randint(0, VOCAB, (3, 6), generator=torch.Generator().manual_seed(2))
    state = model.init_decode_state(3, dtype=torch.float32, device="cpu")
    _, state = model.decode(ids, state, mask=mask)
    steps = []
    for t in range(new.shape[1]):
        logits, state = model.decode(new[:, t : t + 1], state)  # no padding in the new tokens: no mask
        steps.append(logits)
    steps = torch.cat(steps, dim=1)
    for row, prompt in enumerate(prompts):
        alone = model(torch.cat([prompt, new[row]])[None])[0][0, len(prompt) :]
        torch.testing.assert_close(steps[row], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attention", [name for name in BACKENDS if get_backend(name).constant_memory])
@torch.no_grad()
def test_a_padded_batch_holds_a_constant_memory_state_of_the_unpadded_size(attention):
    model = tiny_model(attention, "rope")
    _, ids, mask = padded_batch("left")
    sizes = []
    for batch_mask in (None, mask):
        state = model.init_decode_state(3, dtype=torch.float32, device="cpu")
        _, state = model.decode(ids, state, mask=batch_mask)
        for _ in range(5):
            _, state = model.decode(ids[:, -1:], state)
        sizes.append(model.decode_state_nbytes(state))
    assert sizes[0] == sizes[1]


def test_positions_count_each_rows_real_tokens():
    mask = torch.tensor([[False, False, True, True], [True, True, True, True], [True, False, True, False]])
    assert token_positions(0, None, mask, 4, "cpu").tolist() == [[0, 0, 0, 1], [0, 1, 2, 3], [0, 0, 1, 1]]
    pads = (~mask).sum(1)  # then two more tokens, without padding
    assert token_positions(4, pads, None, 2, "cpu").tolist() == [[2, 3], [4, 5], [2, 3]]
    assert token_positions(4, None, None, 2, "cpu").tolist() == [4, 5]
