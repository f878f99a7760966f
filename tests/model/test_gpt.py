"""The GPT model: GPT-2 shape and parameter count, layout, init, decoding == full forward, position encodings."""

import copy
import math

import pytest
import torch

from data.config import DataConfig
from model.attention import BACKENDS
from model.config import ModelConfig
from model.gpt import GPT
from training.checkpoint import TrainState, load_checkpoint_model, save_checkpoint
from training.config import RunConfig, config_to_dict, load_config


def tiny(**overrides) -> ModelConfig:
    return ModelConfig(**{"vocab_size": 97, "n_positions": 64, "n_layer": 2, "n_head": 2, "n_embd": 32, **overrides})


def test_gpt2_small_has_124m_parameters():
    cfg = load_config("configs/gpt2-125m.yaml").model
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.num_params() == 124_439_808  # GPT-2 small with the LM head tied to wte


def test_state_dict_follows_the_gpt2_checkpoint_layout():
    names = set(GPT(tiny()).state_dict())
    for name in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.h.1.ln_1.weight",
                 "transformer.h.1.attn.c_attn.weight", "transformer.h.1.attn.c_proj.bias",
                 "transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.weight",
                 "transformer.ln_f.bias", "lm_head.weight"):
        assert name in names


def test_lm_head_is_tied_to_the_token_embedding():
    model = GPT(tiny())
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_residual_projections_use_the_scaled_gpt2_init():
    torch.manual_seed(0)
    model = GPT(tiny(n_layer=8, n_embd=256, n_head=4))
    std = model.transformer.h[0].mlp.c_proj.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.05)
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_untrained_loss_is_near_log_vocab():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx, targets = torch.randint(0, 97, (4, 32)), torch.randint(0, 97, (4, 32))
    _, loss = model(idx, targets)
    assert loss.item() == pytest.approx(math.log(97), abs=0.1)


@pytest.mark.parametrize("position", ["learned", "rope", "none"])
def test_chunked_decoding_matches_the_full_forward(position):
    torch.manual_seed(0)
    model = GPT(tiny(position=position)).double().eval()
    idx = torch.randint(0, 97, (2, 41))
    full, _ = model(idx)
    state = model.init_decode_state(2, dtype=torch.float64, device="cpu", capacity=4)  # forces cache growth
    pieces = []
    for a, b in [(0, 7), (7, 8), (8, 9), (9, 30), (30, 41)]:
        logits, state = model.decode(idx[:, a:b], state)
        pieces.append(logits)
    assert state.position == 41
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-10, atol=1e-10)


def test_learned_positions_refuse_to_decode_past_the_table():
    model = GPT(tiny(n_positions=8)).eval()
    state = model.init_decode_state(1, dtype=torch.float32, device="cpu")
    _, state = model.decode(torch.zeros(1, 8, dtype=torch.long), state)
    with pytest.raises(ValueError, match="learned position embeddings"):
        model.decode(torch.zeros(1, 1, dtype=torch.long), state)


def test_learned_positions_refuse_a_forward_longer_than_the_table():
    model = GPT(tiny(n_positions=8)).eval()
    model(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="cannot run past position 8 .tokens 0 to 9.*learned position embeddings"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("attention", BACKENDS)
def test_no_tokens_is_refused_with_the_shape_it_got(attention):
    model = GPT(tiny(attention=attention)).eval()
    state = model.init_decode_state(2, dtype=torch.float32, device="cpu")
    for run in (lambda idx: model(idx), lambda idx: model.decode(idx, state)):
        with pytest.raises(ValueError, match=r"at least one token, got shape \(2, 0\)"):
            run(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        model(torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("attention", BACKENDS)
def test_a_mask_of_another_shape_or_a_state_of_other_rows_is_refused_by_name(attention):
    """Some backends would broadcast a (1, T) mask over the rows and others fail deep in torch: all refuse it here."""
    model = GPT(tiny(attention=attention)).eval()
    idx = torch.zeros(2, 5, dtype=torch.long)
    for mask in (torch.ones(2, 4, dtype=torch.bool), torch.ones(1, 5, dtype=torch.bool), torch.ones(5),
                 torch.ones(2, 5)):
        with pytest.raises(ValueError, match=r"mask must be a bool or 0/1 integer tensor of the token ids' shape "
                                             r"\(2, 5\) \(False for padding\), got "):
            model(idx, mask=mask)
    assert model(idx, mask=torch.ones(2, 5, dtype=torch.long))[0].shape == (2, 5, model.config.vocab_size)
    state = model.init_decode_state(3, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="the decode state holds 3 rows and the token ids 2; decode a state with "
                                         "the rows it was made for"):
        model.decode(idx, state)


def test_rope_decodes_past_the_trained_context():
    """RoPE has no position table: past n_positions, decoding in pieces gives the full forward's logits."""
    model = GPT(tiny(n_positions=8, position="rope")).double().eval()
    idx = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(0))
    state = model.init_decode_state(1, dtype=torch.float64, device="cpu")
    pieces = []
    for start, end in ((0, 12), *((t, t + 1) for t in range(12, 20))):
        logits, state = model.decode(idx[:, start:end], state)
        pieces.append(logits)
    assert state.position == 20
    torch.testing.assert_close(torch.cat(pieces, dim=1), model(idx)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("attention", sorted(BACKENDS))
def test_a_spent_decode_state_is_refused_and_a_deep_copy_branches(attention):
    """decode() updates the layer states in place: decoding twice from one state would give another prefix's
    logits. The second use is refused; copies of the state continue each branch as the full forward does."""
    model = GPT(tiny(attention=attention)).double().eval().requires_grad_(False)
    prefix, a, b = torch.randint(0, 97, (1, 5)), torch.tensor([[3]]), torch.tensor([[7]])
    _, state = model.decode(prefix, model.init_decode_state(1, dtype=torch.float64, device="cpu"))
    branch = copy.deepcopy(state)
    logits_a, _ = model.decode(a, state)
    with pytest.raises(ValueError, match="already decoded from"):
        model.decode(b, state)
    logits_b, _ = model.decode(b, branch)
    for token, logits in ((a, logits_a), (b, logits_b)):
        full, _ = model(torch.cat([prefix, token], 1))
        torch.testing.assert_close(logits[:, -1], full[:, -1], rtol=1e-10, atol=1e-10)


def test_rope_scores_depend_only_on_relative_position():
    from model.position import apply_rotary, rotary_angles

    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)

    def score(m, n):
        cm, sm = rotary_angles(torch.tensor([m]), 16, 10000.0)
        cn, sn = rotary_angles(torch.tensor([n]), 16, 10000.0)
        return (apply_rotary(q, cm, sm) * apply_rotary(k, cn, sn)).sum().item()

    assert score(5, 2) == pytest.approx(score(103, 100), rel=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), rel=1e-3)


def test_rope_rotates_fp64_activations_in_fp64():
    from model.position import apply_rotary, rotary_angles, rotary_dtype

    d, base = 16, 10000.0
    positions = torch.arange(1000, 1008)
    x = torch.randn(2, 3, 8, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cos, sin = rotary_angles(positions, d, base, rotary_dtype(x.dtype))
    angles = torch.tensor([[p * base ** (-2 * i / d) for i in range(d // 2)] for p in positions.tolist()],
                          dtype=torch.float64)  # Python's float math: exact to fp64 rounding
    even, odd = x[..., 0::2], x[..., 1::2]
    expected = torch.stack((even * angles.cos() - odd * angles.sin(), even * angles.sin() + odd * angles.cos()), -1)
    rotated = apply_rotary(x, cos, sin)
    assert rotated.dtype == torch.float64
    torch.testing.assert_close(rotated, expected.flatten(-2), atol=1e-12, rtol=1e-12)
    assert [rotary_dtype(t) for t in (torch.bfloat16, torch.float16, torch.float32, torch.float64)] == [
        torch.float32, torch.float32, torch.float32, torch.float64]


def test_fp64_attention_with_rope_depends_only_on_relative_positions_to_fp64_precision():
    # q_m · k_n depends on m - n only: shifting every position by 1000 changes nothing but rounding.
    torch.manual_seed(0)
    attn = GPT(tiny(position="rope")).double().transformer.h[0].attn
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    with torch.no_grad():
        near, _ = attn(x, torch.arange(10))
        far, _ = attn(x, torch.arange(1000, 1010))
    torch.testing.assert_close(far, near, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"n_embd": 30, "n_head": 4}, "model.n_embd .30. must be divisible by model.n_head .4."),
        ({"attention": "flash"}, "unknown backend 'flash' .allowed: softmax"),
        ({"attention_options": {"nope": 1.0}}, "model.attention_options: unknown option"),
        ({"position": "rope", "n_embd": 30, "n_head": 2}, "even head size"),
        ({"n_layer": 0}, "model.n_layer must be >= 1"),
        ({"position": "rotary"}, "model.position: 'rotary' is not allowed .allowed: learned, rope, none"),
        # A zero, negative or NaN base gives NaN or constant angles, and the model would train on them silently.
        ({"position": "rope", "rope_base": 0.0}, r"model.rope_base must be a finite number > 0 .*got 0.0"),
        ({"position": "rope", "rope_base": -1e4}, r"model.rope_base must be a finite number > 0 .*got -10000.0"),
        ({"rope_base": float("nan")}, r"model.rope_base must be a finite number > 0 .*got nan"),
        ({"rope_base": True}, r"model.rope_base: expected float, got True"),
        # Built in Python, a field takes its declared type, or fails naming it (not deep in torch).
        ({"n_layer": 2.5}, r"model.n_layer: expected an integer, got 2.5"),
        ({"dropout": "lots"}, r"model.dropout: expected float, got 'lots'"),
        ({"bias": "maybe"}, r"model.bias: expected true or false, got 'maybe'"),
        ({"attention_options": None}, r"model.attention_options: expected a mapping, got None"),
        # A negative eps makes LayerNorm's variance + eps negative for a constant row: NaN logits.
        ({"layer_norm_eps": -1e-5}, r"model.layer_norm_eps must be a finite number >= 0, got -1e-05"),
        ({"layer_norm_eps": float("inf")}, r"model.layer_norm_eps must be a finite number >= 0, got inf"),
        ({"init_std": -0.02}, r"model.init_std must be a finite number >= 0, got -0.02"),
    ],
)
def test_impossible_model_configs_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_a_model_config_built_in_python_reads_its_values_as_a_config_file_would():
    """'false' for a bool is False (a non-empty string would otherwise be truthy), 32.0 for an int is 32."""
    cfg = tiny(bias="false", tie_word_embeddings="no", n_embd=32.0)
    assert (cfg.bias, cfg.tie_word_embeddings, cfg.n_embd) == (False, False, 32) and type(cfg.n_embd) is int
    model = GPT(cfg)
    assert model.transformer.h[0].attn.c_attn.bias is None
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()


def test_edge_values_of_the_numeric_model_options_are_accepted():
    cfg = tiny(position="rope", rope_base=500000, layer_norm_eps=0.0, init_std=0.0)  # Llama 3's base, an int
    assert (cfg.rope_base, cfg.layer_norm_eps, cfg.init_std) == (500000, 0.0, 0.0)


@pytest.mark.parametrize("attention", BACKENDS)
def test_every_backend_trains_under_bf16_autocast(attention):
    """train.py's CPU default (dtype=auto picks bf16 autocast): the kernels' own dtype choices must survive it."""
    torch.manual_seed(0)
    model = GPT(tiny(attention=attention, init_std=0.1))  # far from uniform attention, so the backends differ
    idx = torch.randint(0, 97, (2, 40))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(idx, idx)
    low = torch.autograd.grad(loss, list(model.parameters()))
    _, loss32 = model(idx, idx)
    full = torch.autograd.grad(loss32, list(model.parameters()))
    assert loss.item() == pytest.approx(loss32.item(), rel=2e-3)
    error = torch.cat([(a - b).flatten() for a, b in zip(low, full)]).norm()
    assert error / torch.cat([b.flatten() for b in full]).norm() < 3e-2


def test_init_std_sets_the_std_of_every_weight_and_scales_the_residual_projections():
    torch.manual_seed(0)
    model = GPT(tiny(n_layer=8, n_embd=256, n_head=4, init_std=0.1))
    block = model.transformer.h[0]
    for weight in (model.transformer.wte.weight, model.transformer.wpe.weight, block.attn.c_attn.weight,
                   block.mlp.c_fc.weight):
        assert weight.std().item() == pytest.approx(0.1, rel=0.05)
    assert block.mlp.c_proj.weight.std().item() == pytest.approx(0.1 / math.sqrt(2 * 8), rel=0.05)
    assert block.attn.c_attn.bias.abs().max().item() == 0.0


def test_an_untied_head_has_its_own_weight_and_its_own_gradient():
    torch.manual_seed(0)
    tied, untied = GPT(tiny()), GPT(tiny(tie_word_embeddings=False))
    head, wte = untied.lm_head.weight, untied.transformer.wte.weight
    assert head is not wte and head.data_ptr() != wte.data_ptr()
    assert untied.num_params() == tied.num_params() + 97 * 32
    assert head.std().item() == pytest.approx(0.02, rel=0.1)
    idx = torch.randint(1, 4, (2, 16))  # only tokens 1..3 are looked up
    _, loss = untied(idx, torch.randint(0, 97, (2, 16)))
    loss.backward()
    looked_up = torch.zeros(97, dtype=torch.bool)
    looked_up[1:4] = True
    assert wte.grad[~looked_up].abs().max().item() == 0.0  # an embedding's gradient reaches the rows looked up only
    assert (head.grad.abs().sum(dim=1) > 0).all()  # the head's reaches every row (the softmax spans the vocabulary)


def test_an_untied_head_counts_the_same_matmul_flops_as_a_tied_one():
    assert GPT(tiny(tie_word_embeddings=False)).flops_per_token(64) == GPT(tiny()).flops_per_token(64)


@pytest.mark.parametrize("tie", [True, False])
def test_a_checkpoint_keeps_the_head_tied_or_untied(tmp_path, tie):
    torch.manual_seed(0)
    cfg = RunConfig(model=tiny(tie_word_embeddings=tie, init_std=0.1), data=DataConfig(block_size=64))
    model = GPT(cfg.model)
    save_checkpoint(tmp_path, model, TrainState(step=1), config_to_dict(cfg), keep=1)
    loaded, loaded_cfg, _ = load_checkpoint_model(tmp_path)
    assert loaded_cfg.model.tie_word_embeddings is tie and loaded_cfg.model.init_std == 0.1
    shared = loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    assert shared is tie
    idx = torch.randint(0, 97, (2, 16))
    torch.testing.assert_close(loaded(idx)[0], model.eval()(idx)[0], rtol=0, atol=0)
