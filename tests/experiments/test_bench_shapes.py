"""The benchmark shapes name the models they say they do."""

from pathlib import Path

from experiments.bench_shapes import SHAPES
from training.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_gpt2_small_shape_is_the_gpt2_config():
    config = SHAPES["gpt2-small"].model_config()
    assert config == load_config(ROOT / "configs" / "gpt2-125m.yaml").model
    assert SHAPES["gpt2-small"].tokens == 1024


def test_demo_shape_is_the_demo_config():
    config = load_config(ROOT / "configs" / "shakespeare-cpu.yaml")
    shape, demo = SHAPES["demo"], SHAPES["demo"].model_config()
    sizes = ("vocab_size", "n_layer", "n_head", "n_embd", "n_positions")
    assert [getattr(demo, key) for key in sizes] == [getattr(config.model, key) for key in sizes]
    assert (shape.batch, shape.seq_len) == (config.train.batch_size, config.model.n_positions)


def test_options_reach_the_model_config():
    assert SHAPES["demo"].model_config(attention="logexp").attention == "logexp"
