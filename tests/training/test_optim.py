"""AdamW decays the matmul weights only: not biases, LayerNorms or embeddings (a tied head counts as the embedding)."""

import torch

from model.config import ModelConfig
from model.gpt import GPT
from training.config import OptimConfig
from training.optim import make_optimizer, parameter_groups


def names_of(model, params):
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_only_linear_weights_are_decayed():
    model = GPT(ModelConfig(vocab_size=50, n_positions=8, n_layer=2, n_head=2, n_embd=16))
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decayed = names_of(model, decay["params"])
    expected = {f"transformer.h.{i}.{part}.weight" for i in range(2)
                for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert decayed == expected
    everything = {name for name, _ in model.named_parameters()}
    assert names_of(model, no_decay["params"]) == everything - expected  # wte (= lm_head), wpe, biases, LayerNorms
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))  # each once


def test_an_untied_head_is_a_matmul_and_is_decayed():
    model = GPT(ModelConfig(vocab_size=50, n_positions=8, n_layer=1, n_head=2, n_embd=16, tie_word_embeddings=False))
    decay, _ = parameter_groups(model, weight_decay=0.1)
    assert "lm_head.weight" in names_of(model, decay["params"])


def test_the_optimizer_takes_the_config():
    model = GPT(ModelConfig(vocab_size=50, n_positions=8, n_layer=1, n_head=2, n_embd=16))
    optimizer = make_optimizer(model, OptimConfig(lr=1e-3, beta1=0.8, beta2=0.9, eps=1e-6, weight_decay=0.05), "cpu")
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (1e-3, (0.8, 0.9), 1e-6, 0.05)
    assert group["fused"]


def test_the_fused_step_matches_the_reference_adamw():
    # gradients drawn here, not from a loss: some gradients of a real model are rounding noise (the key bias cannot
    # change a softmax), which Adam scales up to full steps whose sign differs between two correct implementations
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, n_positions=8, n_layer=1, n_head=2, n_embd=16))
    reference = GPT(ModelConfig(vocab_size=50, n_positions=8, n_layer=1, n_head=2, n_embd=16))
    reference.load_state_dict(model.state_dict())
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1)
    fused = make_optimizer(model, cfg, "cpu")
    plain = torch.optim.AdamW(parameter_groups(reference, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                              eps=cfg.eps, foreach=False)  # the single-tensor loop: the textbook update
    for _ in range(5):
        for p, q in zip(model.parameters(), reference.parameters()):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        fused.step()
        plain.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
