"""A run's settings are its resolved config less bookkeeping: where it was kept, how often it logged and checkpointed,
what it printed and mirrored to wandb. Everything that can move a reported number stays."""

from __future__ import annotations

import yaml

from experiments.run_identity import describe, differences, read_run_config, settings
from training.config import config_to_dict, load_config


def resolved(*overrides: str) -> dict:
    return config_to_dict(load_config("configs/tiny.yaml", list(overrides)))


def test_bookkeeping_is_left_out_and_everything_else_stays():
    base = settings(resolved())
    kept = settings(resolved("train.out_dir=elsewhere", "data.prepared_dir=prep", "train.resume=auto",
                             "train.log_interval=1", "train.ckpt_interval=5", "train.keep_checkpoints=9",
                             "train.sample_tokens=10", "train.sample_prompt=x", "logging.wandb=offline",
                             "logging.wandb_tags=[a]", "logging.run_name=r", "logging.progress=true"))
    assert kept == base
    assert not any(key.startswith("logging.") or key == "train.out_dir" for key in base)
    for override in ("train.threads=2", "train.eval_interval=5", "train.seed=3", "train.device=cpu",
                     "optim.lr=0.001", "model.position=rope", "data.eval_windows=4"):
        key = override.partition("=")[0]
        assert differences(base, settings(resolved(override))) == [key]


def test_the_mqar_knobs_count_only_for_the_mqar_task():
    assert differences(settings(resolved()), settings(resolved("data.mqar.num_pairs=9"))) == []
    mqar = ("data.source=mqar", "model.vocab_size=8192", "data.mqar.num_queries=2")
    assert differences(settings(resolved(*mqar)), settings(resolved(*mqar, "data.mqar.num_pairs=9"))) == [
        "data.mqar.num_pairs"]


def test_a_key_only_one_config_has_is_a_difference_and_reads_as_absent():
    first, second = {"model.attention_options.crossover": 1, "optim.lr": 0.1}, {"optim.lr": 0.2}
    keys = differences(first, second)
    assert keys == ["model.attention_options.crossover", "optim.lr"]
    assert describe(keys, first, second, ("there", "here")) == (
        "model.attention_options.crossover: 1 there, absent here; optim.lr: 0.1 there, 0.2 here")


def test_a_recorded_config_gets_the_defaults_of_keys_it_predates(tmp_path):
    recorded = resolved("optim.lr=0.001")
    del recorded["train"]["compile"], recorded["logging"]["wandb_project"]  # both at their defaults
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(recorded))
    assert read_run_config(tmp_path / "config.yaml") == resolved("optim.lr=0.001")
