"""Generation with decode states: decoding == the full forward for every backend, constant memory for the recurrent
states, preallocated KV caches, the context limit and the sliding window, seeds, batches of prompts of any
lengths (left-padded)."""

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F

from model import generation
from model.attention import BACKENDS, get_backend
from model.config import ModelConfig
from model.generation import ContextLimitReached, DecodeStats, generate, left_pad
from model.gpt import GPT
from model.sampling import Sampler

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = 97
CONSTANT_MEMORY = [name for name in BACKENDS if get_backend(name).constant_memory]
KV_CACHE = [name for name in BACKENDS if not get_backend(name).constant_memory]
GREEDY = Sampler(temperature=0)


def tiny_model(dtype=torch.float32, **overrides) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(**{"vocab_size": VOCAB, "n_positions": 160, "n_layer": 2, "n_head": 2, "n_embd": 32,
                         **overrides})
    return GPT(cfg).to(dtype).eval()


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# Every backend, plus the linear ones with crossover=1, whose training form is then the chunked one too, and taylor
# with its output scaled by the count of attended tokens (which the decode state must carry).
DECODE_CASES = [pytest.param(name, {}, id=name) for name in BACKENDS] + [
    pytest.param(name, {"crossover": 1}, id=f"{name}-crossover=1") for name in ("taylor", "expressive_sq")
] + [pytest.param("taylor", {"output_normalized": True}, id="taylor-output_normalized")]


@pytest.mark.parametrize("position", ["learned", "rope", "none"])
@pytest.mark.parametrize("backend, options", DECODE_CASES)
@torch.no_grad()
def test_decoding_matches_the_full_forward(backend, options, position):
    """A 70-token prefill (two chunks of 64) then 80 single steps: the logits of step t are those of a full forward
    over the first t tokens. Weights 5x GPT-2's init, so attention is far from uniform and a token decoded at the
    wrong position moves the logits by 1e-2 or more, against an agreement to ~1e-6."""
    model = tiny_model(attention=backend, attention_options=options, position=position, init_std=0.1)
    idx = random_ids(2, 150)
    state = model.init_decode_state(2, dtype=torch.float32, device="cpu", capacity=150)
    logits, state = model.decode(idx[:, :70], state)
    decoded = [logits]
    for t in range(70, 150):
        logits, state = model.decode(idx[:, t : t + 1], state)
        decoded.append(logits)
    decoded = torch.cat(decoded, dim=1)  # (2, 150, vocab)
    torch.testing.assert_close(decoded, model(idx)[0], rtol=0, atol=2e-5)
    for t in (64, 65, 128, 129, 150):  # around the chunk boundaries of the prefill and of the full forward
        torch.testing.assert_close(decoded[:, t - 1], model(idx[:, :t])[0][:, -1], rtol=0, atol=2e-5)


@torch.no_grad()
def state_bytes_after(backend: str, lengths: tuple[int, ...]) -> list[int]:
    """Bytes of the decode state after a prefill of each length (KV caches preallocated for exactly that length)."""
    model = tiny_model(attention=backend, position="none", n_positions=16)
    sizes = []
    for length in lengths:
        state = model.init_decode_state(1, dtype=torch.float32, device="cpu", capacity=length)
        _, state = model.decode(random_ids(1, length), state, last_only=True)
        sizes.append(model.decode_state_nbytes(state))
    return sizes


@pytest.mark.parametrize("backend", CONSTANT_MEMORY)
def test_constant_memory_states_have_the_same_size_after_10_and_5000_tokens(backend):
    sizes = state_bytes_after(backend, (10, 5000))
    assert sizes[0] == sizes[1] > 0


@pytest.mark.parametrize("backend", KV_CACHE)
def test_kv_caches_grow_with_the_context(backend):
    sizes = state_bytes_after(backend, (10, 500))
    assert sizes[1] == 50 * sizes[0]


@pytest.mark.parametrize("backend", CONSTANT_MEMORY)
def test_constant_memory_backends_generate_past_the_trained_context(backend):
    model = tiny_model(attention=backend, position="rope", n_positions=8)
    stats = DecodeStats()
    tokens = list(generate(model, random_ids(1, 5), 40, sampler=GREEDY, stats=stats))
    empty = model.decode_state_nbytes(model.init_decode_state(1, dtype=torch.float32, device="cpu"))
    assert len(tokens) == 40 and stats.state_bytes == empty  # 45 tokens at the memory of none


@pytest.mark.parametrize("backend", KV_CACHE)
def test_kv_caches_are_preallocated_for_the_whole_generation(backend):
    model = tiny_model(attention=backend)
    stats = DecodeStats()
    list(generate(model, random_ids(1, 5), 20, sampler=GREEDY, stats=stats))
    room_for_25 = model.init_decode_state(1, dtype=torch.float32, device="cpu", capacity=25)
    assert stats.state_bytes == model.decode_state_nbytes(room_for_25)  # a growing cache would have doubled


def greedy_reference(model: GPT, prompt: list[int], steps: int, limit: int, window: int | None) -> list[int]:
    """Greedy tokens from full forwards over the current context (restarted at the last `window` tokens whenever
    the context would exceed `limit`)."""
    ids, start = list(prompt), 0
    for _ in range(steps):
        if window is not None and len(ids) - start > limit:
            start = len(ids) - window
        logits, _ = model(torch.tensor([ids[start:]]))
        ids.append(logits[0, -1].argmax().item())
    return ids[len(prompt) :]


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_generation_equals_argmax_of_full_forwards(backend):
    model = tiny_model(torch.float64, attention=backend, position="rope")
    prompt = random_ids(1, 7)
    tokens = [t.item() for t in generate(model, prompt, 12, sampler=GREEDY)]
    assert tokens == greedy_reference(model, prompt[0].tolist(), 12, limit=160, window=None)


@pytest.mark.parametrize("backend", ["softmax", "logexp"])
def test_a_window_slides_when_the_context_is_full(backend):
    model = tiny_model(torch.float64, attention=backend, position="learned", n_positions=16)
    prompt = random_ids(1, 5)
    tokens = [t.item() for t in generate(model, prompt, 30, sampler=GREEDY, window=8)]
    assert tokens == greedy_reference(model, prompt[0].tolist(), 30, limit=16, window=8)


def test_a_sliding_window_frees_the_full_state_before_it_makes_the_next(monkeypatch):
    """Else the full state counts as used memory when the next one is checked, and a state of more than half the
    memory available would fail mid-stream."""
    made = []  # weak references to every state made, in order

    def tracked(*args):
        gc.collect()
        assert all(ref() is None for ref in made), "a full state is still alive while the next one is made"
        state = empty_state(*args)
        made.append(weakref.ref(state))
        return state

    empty_state = generation._empty_state
    monkeypatch.setattr(generation, "_empty_state", tracked)
    model = tiny_model(torch.float64, attention="softmax", position="learned", n_positions=16)
    tokens = list(generate(model, random_ids(1, 5), 30, sampler=GREEDY, window=8))
    assert len(tokens) == 30 and len(made) >= 3  # the first state, then one per slide


def test_without_a_window_generation_stops_at_the_context_limit():
    model = tiny_model(position="learned", n_positions=16)
    tokens = []
    with pytest.raises(ContextLimitReached, match="context limit of 16 tokens .the size of the learned position"):
        for token in generate(model, random_ids(1, 5), 30, sampler=GREEDY):
            tokens.append(token)
    assert len(tokens) == 12  # 5 + 11 tokens fill the state; the last logits give one more


def test_a_kv_cache_backend_stops_at_n_positions_unless_max_context_raises_it():
    model = tiny_model(attention="softmax", position="rope", n_positions=16)
    with pytest.raises(ContextLimitReached, match="KV cache holds n_positions"):
        list(generate(model, random_ids(1, 5), 30))
    assert len(list(generate(model, random_ids(1, 5), 30, max_context=40))) == 30


def test_learned_positions_cannot_raise_the_context_limit():
    model = tiny_model(position="learned", n_positions=16)
    with pytest.raises(ValueError, match="exceeds the model's 16 learned positions"):
        generate(model, random_ids(1, 5), 30, max_context=17)


def test_a_prompt_longer_than_the_context_needs_a_window():
    model = tiny_model(torch.float64, position="learned", n_positions=16)
    prompt = random_ids(1, 20)
    with pytest.raises(ValueError, match="the prompt has 20 tokens, more than the context limit of 16"):
        generate(model, prompt, 3)
    tokens = [t.item() for t in generate(model, prompt, 3, sampler=GREEDY, window=8)]
    assert tokens == greedy_reference(model, prompt[0, -8:].tolist(), 3, limit=16, window=8)
    ids, mask = left_pad([[1, 2], random_ids(1, 20)[0].tolist(), [3]], pad_id=0)  # a batch names its long prompt
    with pytest.raises(ValueError, match="prompt 2 \\(of 3\\) has 20 tokens, more than the context limit of 16"):
        generate(model, ids, 3, mask=mask)
    rows = [random_ids(1, n)[0].tolist() for n in (17, 3, 19, 18, 20, 21, 22, 4)]  # six past the limit
    ids, mask = left_pad(rows, pad_id=0)
    with pytest.raises(ValueError, match=r"prompts 1, 3, 4, 5, 6 \(and 1 more\) \(of 8\) have 17, 19, 18, 20, 21 "
                                         r"tokens, more than the context limit of 16 .*; shorten them"):
        generate(model, ids, 3, mask=mask)
    ids, mask = left_pad(rows[:6] + rows[7:], pad_id=0)  # five past the limit: all named, none counted
    with pytest.raises(ValueError, match=r"prompts 1, 3, 4, 5, 6 \(of 7\) have 17, 19, 18, 20, 21 tokens, more than"):
        generate(model, ids, 3, mask=mask)
    ids, mask = left_pad([[1, 2], [3]], pad_id=0)
    ids, mask = F.pad(ids, (18, 0)), F.pad(mask, (18, 0))  # columns of padding alone
    with pytest.raises(ValueError, match=r"the batch has 20 columns, its left padding included, more than the "):
        generate(model, ids, 3, mask=mask)
    with pytest.raises(ValueError, match=r"the prompt has 20 columns, its left padding included, more than the "):
        generate(model, ids[1:], 3, mask=mask[1:])  # one row: its padding, not its 1 token, is past the limit


@pytest.mark.parametrize("window", [16, 20])
def test_a_window_must_fit_in_the_context(window):
    model = tiny_model(position="learned", n_positions=16)
    with pytest.raises(ValueError, match=r"window must be in \[1, 16\)"):
        generate(model, random_ids(1, 5), 3, window=window)


@pytest.mark.parametrize("window", [0, -5])
@pytest.mark.parametrize("model_options", [{"position": "learned"}, {"attention": "logexp", "position": "rope"}])
def test_a_window_below_one_is_rejected_even_where_the_state_never_fills(window, model_options):
    with pytest.raises(ValueError, match="window must be >= 1"):
        generate(tiny_model(**model_options), random_ids(1, 5), 3, window=window)


def test_an_empty_prompt_is_rejected():
    with pytest.raises(ValueError, match="at least one token"):
        generate(tiny_model(), torch.zeros(1, 0, dtype=torch.long), 3)


def test_generation_ends_when_every_row_has_stopped():
    model = tiny_model()
    prompt = random_ids(1, 5).expand(2, 5)
    first = next(generate(model, prompt, 10, sampler=GREEDY))
    assert len(list(generate(model, prompt, 10, sampler=GREEDY, stop_id=first[0].item()))) == 1


def test_the_same_seed_gives_the_same_tokens():
    model = tiny_model()

    def sample(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return [t.item() for t in generate(model, random_ids(1, 5), 30, sampler=Sampler(), generator=generator)]

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)


def ragged_prompts() -> list[list[int]]:
    return [random_ids(1, n, seed=n)[0].tolist() for n in (6, 1, 13, 6)]


def greedy_tokens(model: GPT, prompt: torch.Tensor, steps: int, **options) -> list[list[int]]:
    return torch.stack(list(generate(model, prompt, steps, sampler=GREEDY, **options)), dim=1).tolist()


@pytest.mark.parametrize("position", ["learned", "rope"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_left_padded_batch_generates_what_its_prompts_generate_alone(backend, position):
    model = tiny_model(torch.float64, attention=backend, position=position)
    prompts = ragged_prompts()
    ids, mask = left_pad(prompts, pad_id=VOCAB - 1)
    batch = greedy_tokens(model, ids, 10, mask=mask)
    assert batch == [greedy_tokens(model, torch.tensor([prompt]), 10)[0] for prompt in prompts]


def sampled_tokens(model: GPT, prompt: torch.Tensor, steps: int, seeds: list[int], **options) -> list[list[int]]:
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    return torch.stack(list(generate(model, prompt, steps, sampler=Sampler(top_k=20), generator=generators,
                                     **options)), dim=1).tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_generator_per_row_samples_each_prompt_of_a_batch_as_alone(backend):
    model = tiny_model(torch.float64, attention=backend, position="rope")
    prompts = ragged_prompts()
    ids, mask = left_pad(prompts, pad_id=VOCAB - 1)
    batch = sampled_tokens(model, ids, 12, [3, 3, 4, 3], mask=mask)
    assert batch == [sampled_tokens(model, torch.tensor([prompt]), 12, [seed])[0]
                     for prompt, seed in zip(prompts, [3, 3, 4, 3])]
    assert batch[0] == batch[3] and batch[0] != batch[1]  # rows 0 and 3 hold the same prompt, row 1 another


def test_one_generator_for_a_batch_is_one_stream_shared_by_its_rows():
    model = tiny_model()
    generator = torch.Generator().manual_seed(3)
    rows = torch.stack(list(generate(model, random_ids(1, 5).expand(2, 5), 12, sampler=Sampler(),
                                     generator=generator)), dim=1).tolist()
    assert rows[0] != rows[1]  # the same prompt in two rows draws different samples


def test_the_generators_must_match_the_prompts():
    with pytest.raises(ValueError, match="got 1 generators for 2 rows"):
        generate(tiny_model(), random_ids(2, 5), 4, generator=[torch.Generator()])


@pytest.mark.parametrize("backend", ["softmax", "logexp"])
def test_a_left_padded_batch_slides_its_window_as_its_prompts_do_alone(backend):
    # The window keeps the last columns; the longest prompt sets when the batch reaches the context limit.
    model = tiny_model(torch.float64, attention=backend, position="learned", n_positions=16)
    prompts = [random_ids(1, 5, seed=1)[0].tolist(), random_ids(1, 5, seed=2)[0].tolist()[2:]]
    ids, mask = left_pad(prompts)
    batch = greedy_tokens(model, ids, 30, mask=mask, window=8)
    assert batch[0] == greedy_reference(model, prompts[0], 30, limit=16, window=8)
    assert batch[1][:12] == greedy_reference(model, prompts[1], 12, limit=16, window=8)  # before the first slide


def test_left_pad_puts_each_prompt_at_the_right_end_of_its_row():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]


@pytest.mark.parametrize(
    "mask, message",
    [
        ([[1, 1, 1], [1, 1, 0]], "left-padded"),  # right padding: the last token would be padding
        ([[1, 1, 1], [0, 1, 0]], "left-padded"),
        ([[1, 1, 1], [0, 0, 0]], "at least one token"),
        ([[1, 1], [1, 1]], "shape"),
    ],
)
def test_generate_takes_left_padded_prompts_only(mask, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny_model(), random_ids(2, 3), 3, mask=torch.tensor(mask))


def test_stats_count_prefill_and_decode_tokens():
    model = tiny_model()
    stats = DecodeStats()
    list(generate(model, random_ids(2, 5), 7, stats=stats))
    assert (stats.prefill_tokens, stats.decode_tokens) == (10, 14)
    assert stats.prefill_s > 0 and stats.decode_s > 0 and stats.decode_tokens_per_s > 0
    ids, mask = left_pad([[1, 2, 3], [4]])
    list(generate(model, ids, 2, mask=mask, stats=stats))
    assert (stats.prefill_tokens, stats.decode_tokens) == (14, 18)  # the padding is not counted
