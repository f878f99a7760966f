"""Run configs: YAML + overrides resolve to typed dataclasses; bad input fails early with a one-line message."""

from pathlib import Path

import pytest

from data.config import DataConfig, MQARConfig
from training.config import (LoggingConfig, OptimConfig, RunConfig, TrainConfig, config_from_dict, config_to_dict,
                             load_config, parse_override)
from typedconfig.parsing import ConfigError

CONFIGS = sorted(Path("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)


def test_yaml_then_overrides_win_in_order():
    cfg = load_config("configs/tiny.yaml", ["train.max_steps=7", "--optim.lr=3e-4", "model.position=rope"])
    assert cfg.train.max_steps == 7
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)  # '3e-4' is a string to YAML 1.1
    assert cfg.model.position == "rope"
    assert cfg.model.n_layer == 2  # from the file
    assert cfg.model.vocab_size == 50257  # default


def test_extends_merges_the_parent_file(tmp_path):
    (tmp_path / "child.yaml").write_text(
        f"extends: {Path('configs/tiny.yaml').resolve()}\nmodel:\n  attention: softmax\n  n_layer: 3\n"
    )
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.model.n_layer == 3 and cfg.model.n_embd == 64


def test_an_empty_section_in_an_extending_file_keeps_the_parent_section(tmp_path):
    parent = Path("configs/tiny.yaml").resolve()
    (tmp_path / "child.yaml").write_text(f"extends: {parent}\nmodel:\n  # n_layer: 3\ndata: {{}}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.data.block_size) == (2, 64, 32)  # tiny's, not the defaults


def test_options_given_as_an_empty_mapping_are_cleared_and_entries_merge(tmp_path):
    (tmp_path / "taylor.yaml").write_text(f"extends: {Path('configs/tiny.yaml').resolve()}\n"
                                          "model: {attention: taylor, attention_options: {output_normalized: true}}\n")
    merged = load_config(tmp_path / "taylor.yaml", ["model.attention_options.crossover=64"]).model
    assert merged.attention_options == {"output_normalized": True, "crossover": 64}
    cleared = load_config(tmp_path / "taylor.yaml", ["model.attention_options={}", "model.attention=softmax"]).model
    assert (cleared.attention, cleared.attention_options) == ("softmax", {})


def test_a_key_given_twice_in_a_file_is_refused(tmp_path):
    (tmp_path / "dup.yaml").write_text("model: {n_layer: 3}\ntrain: {max_steps: 5}\nmodel: {attention: taylor}\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: not valid YAML \(line 3, column 1: found the key 'model' "
                                          r"twice \(lines 1 and 3\); keep one"):
        load_config(tmp_path / "dup.yaml")


@pytest.mark.parametrize("text", ["", "# to do\n", "---\n"])
def test_a_file_without_settings_is_refused_and_braces_take_every_default(tmp_path, text):
    """An unsaved or truncated config would have trained GPT-2 small's defaults without a word."""
    (tmp_path / "empty.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"empty.yaml: holds no settings \(empty, or comments only\); write its "
                                          r"sections, or `\{\}` to take every default"):
        load_config(tmp_path / "empty.yaml")
    (tmp_path / "defaults.yaml").write_text("{}\n")
    assert load_config(tmp_path / "defaults.yaml") == load_config()


def test_binary_data_is_not_a_string(tmp_path):
    (tmp_path / "binary.yaml").write_text("train:\n  out_dir: !!binary aGVsbG8=\n")  # b'hello'
    with pytest.raises(ConfigError, match=r"^train.out_dir: expected a string, got b'hello'$"):
        load_config(tmp_path / "binary.yaml")


def test_string_values_from_the_command_line_are_the_text_as_given():
    cfg = load_config("configs/tiny.yaml", ["train.sample_prompt= The king", "train.out_dir=/tmp/a #b",
                                            "logging.run_name=2026-12-05T09:10:00Z"])
    assert (cfg.train.sample_prompt, cfg.train.out_dir) == (" The king", "/tmp/a #b")
    assert cfg.logging.run_name == "2026-12-05T09:10:00Z"
    assert load_config("configs/shakespeare-cpu.yaml", ["train.sample_prompt=ROMEO:"]).train.sample_prompt == "ROMEO:"


def test_a_mapping_without_braces_sets_entries_of_a_mapping_field_and_is_text_for_a_text_field(tmp_path):
    (tmp_path / "taylor.yaml").write_text(f"extends: {Path('configs/tiny.yaml').resolve()}\n"
                                          "model: {attention: taylor, attention_options: {output_normalized: true}}\n"
                                          "data: {mqar: {num_pairs: 4, num_queries: 4}}\n")
    cfg = load_config(tmp_path / "taylor.yaml", ["model.attention_options=crossover: 64", "data.mqar=vocab_size: 64",
                                                 "logging.run_name=a: b"])
    assert cfg.model.attention_options == {"output_normalized": True, "crossover": 64}
    assert (cfg.data.mqar.vocab_size, cfg.data.mqar.num_pairs, cfg.logging.run_name) == (64, 4, "a: b")
    assert parse_override("data.mqar=num_pairs: 4") == {"data": {"mqar": {"num_pairs": "4"}}}


def test_null_spellings_on_the_command_line_are_none_for_optional_fields():
    cfg = load_config("configs/tiny.yaml", ["optim.decay_steps=~", "data.subset=~", "logging.run_name=null",
                                            "data.max_tokens=None"])
    assert (cfg.optim.decay_steps, cfg.data.subset, cfg.logging.run_name, cfg.data.max_tokens) == (None,) * 4


def test_numbers_are_read_as_python_reads_them_not_by_yaml_1_1():
    assert load_config("configs/tiny.yaml", ["train.max_steps=010"]).train.max_steps == 10  # YAML 1.1: 8
    with pytest.raises(ConfigError, match="train.seed: expected int, got '1:30'"):  # YAML 1.1: 90
        load_config("configs/tiny.yaml", ["train.seed=1:30"])
    assert load_config("configs/tiny.yaml", ["train.seed=-0x0", "train.max_steps=0x1e"]).train.max_steps == 30
    with pytest.raises(ConfigError, match="optim.lr must be a finite number, got inf"):  # YAML's spelling of inf
        load_config("configs/tiny.yaml", ["optim.lr=.inf"])


def test_a_leading_tilde_in_a_path_is_the_home_folder():
    cfg = load_config("configs/tiny.yaml", ["train.out_dir=~/runs/x", "data.prepared_dir=~/prepared",
                                            "data.source=~/texts/*.txt", "train.resume=~/runs/y"])
    home = str(Path.home())
    assert (cfg.train.out_dir, cfg.train.resume) == (f"{home}/runs/x", f"{home}/runs/y")
    assert (cfg.data.prepared_dir, cfg.data.source) == (f"{home}/prepared", f"{home}/texts/*.txt")


def test_resolved_config_round_trips():
    cfg = load_config("configs/tiny.yaml", ["model.attention_options={}", "logging.wandb_tags=[a, b]"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert cfg.logging.wandb_tags == ["a", "b"]


def test_yaml_booleans_are_read_as_the_literal_they_spell():
    assert load_config(None, ["logging.wandb=off"]).logging.wandb == "off"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.max_step=3"], r"unknown key train.max_step \(allowed in train: out_dir, max_steps,"),
        (["modle.n_layer=3"], r"unknown key modle \(allowed in config: model, data, optim, train, logging\)"),
        (["train.max_steps=abc"], r"train.max_steps: expected int, got 'abc'"),
        (["train.max_steps=2.5"], r"train.max_steps: expected an integer, got 2.5"),
        (["train.compile=maybe"], r"train.compile: 'maybe' is not allowed \(allowed: auto, true, false\)"),
        (["train.dtype=fp8"], r"train.dtype: 'fp8' is not allowed \(allowed: auto, float32, bfloat16, float16\)"),
        (["model.n_head=5"], r"model.n_embd \(64\) must be divisible by model.n_head \(5\)"),
        (["model.attention=flash"], r"model.attention: unknown backend 'flash' \(allowed: softmax"),
        (["data.block_size=128"], r"data.block_size \(128\) > model.n_positions \(64\)"),
        (["optim.min_lr=1.0"], r"optim.min_lr must be in \[0, optim.lr\] = \[0, 0.003\], got 1.0"),
        (["train.batch_size=0"], r"train.batch_size must be >= 1"),
        (["max_steps=3"], r"write section.key=value"),
        (["train.sample_tokens=5", "train.sample_prompt="], r"train.sample_prompt is empty: .* or set train.sample"),
        (["train.sample_tokens=5", "data.source=mqar", "model.vocab_size=64", "data.mqar.vocab_size=64"],
         r"train.sample_tokens: the mqar task has no tokenizer .* set train.sample_tokens=0"),
    ],
)
def test_bad_values_fail_with_a_message_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config("configs/tiny.yaml", overrides)
    assert "\n" not in str(info.value)


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=rf"config file {tmp_path} is a folder, not a YAML file"):
        load_config(tmp_path)
    (tmp_path / "bad.yaml").write_text("model: [unclosed\ntrain: {}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line 2, column 6: expected ',' or '\]', but "
                                          r"got ':' \(while parsing a flow sequence from line 1, column 8\)\)$"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "bad.yaml").write_bytes(b"model: \xff\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML \\('utf-8' codec can't decode byte 0xff"):
        load_config(tmp_path / "bad.yaml")


def test_override_parsing():
    assert parse_override("train.lr=3e-4") == {"train": {"lr": "3e-4"}}
    assert parse_override("--model.attention_options.eps=1e-6") == {"model": {"attention_options": {"eps": "1e-6"}}}
    for text in (".max_steps=1", "train..max_steps=1", "train.=1"):
        with pytest.raises(ConfigError, match="bad override"):
            parse_override(text)


def test_text_fields_keep_what_yaml_1_1_would_read_as_a_bool_or_a_number(tmp_path):
    (tmp_path / "run.yaml").write_text("extends: " + str(Path("configs/tiny.yaml").resolve()) + "\n"
                                       "data:\n  source: hf:owner/name\n  subset: no\nlogging:\n  wandb: off\n"
                                       "  progress: no\n")  # a hub source: subset is for those alone
    cfg = load_config(tmp_path / "run.yaml", ["train.sample_prompt=0755", "logging.run_name=on", "train.max_steps=0x10"])
    assert (cfg.data.subset, cfg.train.sample_prompt, cfg.logging.run_name) == ("no", "0755", "on")
    assert (cfg.logging.wandb, cfg.logging.progress, cfg.train.max_steps) == ("off", False, 16)


def test_extends_cycles_are_named(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nmodel:\n  n_layer: 1\n")
    with pytest.raises(ConfigError, match=r"extends: forms a cycle \(.*a.yaml -> .*b.yaml -> .*a.yaml\)"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize(
    "backend, written, expected",
    [
        ("taylor", "{crossover: 1}", {"crossover": 1}),
        ("taylor", "{crossover: 4096.0, chunk_size: '32'}", {"crossover": 4096, "chunk_size": 32}),
        ("taylor", "{a: 1}", {"a": 1.0}),
        ("expressive", "{temperature: null, block_size: 64}", {"temperature": None, "block_size": 64}),
        ("expressive", "{temperature: 2}", {"temperature": 2.0}),
        ("logexp", "{chunk_size: 16}", {"chunk_size": 16}),
    ],
)
def test_backend_options_take_the_type_their_backend_declares(tmp_path, backend, written, expected):
    """Through a YAML file and through a command-line override, each option ends up with its declared type."""
    (tmp_path / "run.yaml").write_text(
        f"extends: {Path('configs/tiny.yaml').resolve()}\nmodel:\n  attention: {backend}\n"
        f"  attention_options: {written}\n")
    from_file = load_config(tmp_path / "run.yaml").model.attention_options
    from_cli = load_config("configs/tiny.yaml", [f"model.attention={backend}",
                                                  f"model.attention_options={written}"]).model.attention_options
    for options in (from_file, from_cli):
        assert options == expected
        assert [type(v) for v in options.values()] == [type(v) for v in expected.values()]


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.attention_options.crossover=1.5", r"model.attention_options.crossover: expected an integer, got 1.5"),
        ("model.attention_options.crossover=many", r"model.attention_options.crossover: expected int, got 'many'"),
        ("model.attention_options.crossover=0", r"crossover=0 is invalid \(allowed: an integer >= 1\)"),
        ("model.attention_options.radius=2", r"unknown option\(s\) radius for attention backend 'taylor'"),
        ("model.attention_options=7", r"model.attention_options: expected a mapping"),
    ],
)
def test_bad_backend_options_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config("configs/tiny.yaml", ["model.attention=taylor", override])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("key", ["lr", "min_lr", "weight_decay", "beta1", "beta2", "eps", "grad_clip"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_optimiser_numbers_are_refused_by_name(key, value):
    """nan fails no range check and inf passes every lower bound: each is named before any range is checked."""
    with pytest.raises(ConfigError) as info:
        load_config("configs/tiny.yaml", [f"optim.{key}={value}"])
    assert str(info.value) == f"optim.{key} must be a finite number, got {float(value)}"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lr=0"], "optim.lr must be > 0, got 0.0"),
        (["optim.lr=-1e-3"], "optim.lr must be > 0, got -0.001"),
        (["optim.min_lr=-1e-5"], "optim.min_lr must be in [0, optim.lr] = [0, 0.003], got -1e-05"),
        (["optim.warmup_steps=-1"], "optim.warmup_steps must be >= 0, got -1"),
        (["optim.beta1=1.0"], "optim.beta1 must be in [0, 1), got 1.0"),
        (["optim.beta2=-0.1"], "optim.beta2 must be in [0, 1), got -0.1"),
        (["optim.eps=-1e-8"], "optim.eps must be > 0, got -1e-08"),
        (["optim.eps=0"], "optim.eps must be > 0, got 0.0"),
        (["optim.weight_decay=-0.1"], "optim.weight_decay must be >= 0, got -0.1"),
        (["optim.grad_clip=-1"], "optim.grad_clip must be >= 0, got -1.0"),
        (["optim.decay_steps=0"], "optim.decay_steps must be >= 1 or null (train.max_steps), got 0"),
        (["optim.decay_steps=-5"], "optim.decay_steps must be >= 1 or null (train.max_steps), got -5"),
        (["optim.decay_steps=2"], "optim.decay_steps (2) must be > optim.warmup_steps (2): the decay follows the "
                                  "warm-up; raise optim.decay_steps, lower optim.warmup_steps, or set "
                                  "optim.decay_steps=null"),
        (["optim.decay_steps=5", "optim.warmup_steps=10"], "optim.decay_steps (5) must be > optim.warmup_steps (10): "
                                                          "the decay follows the warm-up; raise optim.decay_steps, "
                                                          "lower optim.warmup_steps, or set optim.decay_steps=null"),
        (["train.ckpt_interval=-1"], "train.ckpt_interval must be >= 0, got -1"),
        (["train.threads=-2"], "train.threads must be >= 0, got -2"),
        (["train.device=gpu"], "train.device: 'gpu' is not a device (allowed: auto, cpu, cuda, cuda:N, mps)"),
        (["train.device=meta"], "train.device: 'meta' is not a device (allowed: auto, cpu, cuda, cuda:N, mps)"),
        (["train.threads=99999999999"],
         "train.threads must be at most 2**31 - 1 (0: torch's default), got 99999999999"),
        (["train.sample_tokens=-3"], "train.sample_tokens must be >= 0, got -3"),
        (["train.keep_checkpoints=0"], "train.keep_checkpoints must be >= 1, got 0"),
        (["train.seed=-1"], "train.seed must be in [0, 2**63), got -1"),
        ([f"train.seed={2**63}"], f"train.seed must be in [0, 2**63), got {2**63}"),
        ([f"train.seed={2**64}"], f"train.seed must be in [0, 2**63), got {2**64}"),
    ],
)
def test_each_bad_number_is_named_with_its_value(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config("configs/tiny.yaml", overrides)
    assert str(info.value) == message


@pytest.mark.parametrize("overrides", [["optim.decay_steps=3"], ["optim.eps=1e-12", "optim.grad_clip=0"],
                                       [f"train.seed={2**63 - 1}", "train.seed=0"], ["optim.min_lr=0"]])
def test_the_edges_of_each_range_are_accepted(overrides):
    load_config("configs/tiny.yaml", overrides)


def test_sections_built_in_python_take_their_declared_types():
    """The Python API reads values as a config file would, and a nested section given as itself stays itself."""
    mqar = MQARConfig(num_pairs=8.0, num_queries=4)
    cfg = RunConfig(train=TrainConfig(max_steps="10", out_dir=Path("runs/x")), data=DataConfig(mqar=mqar),
                    optim=OptimConfig(lr="3e-4"), logging=LoggingConfig(progress="false"))
    assert (cfg.train.max_steps, cfg.train.out_dir, cfg.optim.lr, cfg.logging.progress) == (10, "runs/x", 3e-4, False)
    assert cfg.data.mqar is mqar and type(mqar.num_pairs) is int
    with pytest.raises(ValueError, match=r"train.batch_size: expected an integer, got 2.5"):
        TrainConfig(batch_size=2.5)
    assert RunConfig(model={"n_layer": 2}).model.n_layer == 2  # a section given as a dict
    with pytest.raises(ValueError, match=r"unknown key model.n_lyer"):
        RunConfig(model={"n_lyer": 2})
