"""Every command-line tool answers bad input with exit status 2 and one line on stderr that names the problem: never a
Python traceback. Each row runs the real command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from data.config import DataConfig
from model.config import ModelConfig
from model.gpt import GPT
from training.checkpoint import TrainState, save_checkpoint
from training.config import RunConfig, TrainConfig, config_to_dict

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_SILENT": "true",
       "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
TRAIN = [sys.executable, "train.py"]
PREPARE = [sys.executable, "-m", "data.prepare"]
GENERATE = [sys.executable, "scripts/generate.py"]
EXPORT = [sys.executable, "scripts/export_hf.py"]
IMPORT = [sys.executable, "scripts/import_gpt2.py"]
EXTRACT = [sys.executable, "-m", "evals.extract"]
EVALS = [sys.executable, "-m", "evals.run"]
SWEEP = [sys.executable, "scripts/sweep.py"]
COMPARE = [sys.executable, "scripts/compare.py"]


def checkpoint(run_dir: Path, prepared: str) -> Path:
    """A run directory with one step-1 checkpoint of a random 1-layer model on the Shakespeare data."""
    cfg = RunConfig(model=ModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=32),
                    data=DataConfig(block_size=16, prepared_dir=prepared), train=TrainConfig(out_dir=str(run_dir)))
    run_dir.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(run_dir, GPT(cfg.model), TrainState(step=1), config_to_dict(cfg), keep=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory, prepared_dir) -> dict[str, str]:
    """Paths the table refers to as {name}: good and damaged checkpoints, bad data sources and configs."""
    root = tmp_path_factory.mktemp("bad_inputs")
    good = checkpoint(root / "good", prepared_dir)
    truncated = checkpoint(root / "truncated", prepared_dir)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    garbage = checkpoint(root / "garbage_state", prepared_dir)
    (garbage / "state.pt").write_text("not a pickle")
    (root / "a_file").write_text("x")
    (root / "latin1").mkdir()
    (root / "latin1" / "doc.jsonl").write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    (root / "cut.jsonl").write_text('{"text": "one"}\n{"text": "tw')
    (root / "empty.jsonl").write_text("")
    (root / "table.csv").write_text("text\nhello\n")
    (root / "one_doc.txt").write_text("a single document cannot fill both splits")
    (root / "cycle_a.yaml").write_text("extends: cycle_b.yaml\n")
    (root / "cycle_b.yaml").write_text("extends: cycle_a.yaml\n")
    (root / "broken.yaml").write_text("model: [unclosed\n")
    (root / "list.yaml").write_text("- model\n")
    (root / "list_key.yaml").write_text("model:\n  ? [a, b]\n  : 1\n")
    (root / "prompt.bin").write_bytes(b"\xff\xfe\x00")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=32, n_embd=32, n_layer=1, n_head=2)).save_pretrained(
        root / "gpt2")
    (root / "not_gpt2").mkdir()
    (root / "not_gpt2" / "config.json").write_text("{broken")
    return {"root": str(root), "good": str(good.parent.parent), "truncated": str(truncated),
            "truncated_run_only": str(truncated.parent.parent), "garbage_state": str(garbage),
            "prepared": prepared_dir}


TINY = ["configs/tiny.yaml", "train.max_steps=1", "data.prepared_dir={prepared}", "train.out_dir={root}/run"]
CASES = [
    # train.py: configs and options
    (TRAIN + TINY + ["model.attention=flash"], "unknown backend 'flash'"),
    (TRAIN + TINY + ["model.attention=taylor", "model.attention_options.crossover=1.5"], "expected an integer"),
    (TRAIN + TINY + ["model.attention=taylor", "model.attention_options.window=3"], "unknown option(s) window"),
    (TRAIN + TINY + ["model.attention=expressive", "model.attention_options.temperature=-1"], "temperature"),
    (TRAIN + ["{root}/missing.yaml"], "missing.yaml not found"),
    (TRAIN + TINY + ["train.out_dir={root}/a_file/run"],
     "a_file, an existing file; give a folder for the run's checkpoints and metrics"),
    (TRAIN, "give a config file"),
    (TRAIN + ["{root}/cycle_a.yaml"], "extends: forms a cycle"),
    (TRAIN + ["{root}/broken.yaml"], "not valid YAML"),
    (TRAIN + ["{root}/list.yaml"], "expected a mapping of sections"),
    (TRAIN + TINY + ["model.n_head=3"], "must be divisible by model.n_head"),
    (TRAIN + TINY + ["data.block_size=128"], "lower data.block_size"),
    (TRAIN + TINY + ["data.eval_windows=10000000"], "data.eval_windows (10,000,000) is more than the val split holds"),
    (TRAIN + TINY + ["train.dtype=float16"], "float16 is not supported on CPU"),
    (TRAIN + TINY + ["train.device=cuda:0"], "no CUDA device"),
    (TRAIN + TINY + ["train.max_steps=lots"], "train.max_steps: expected int"),
    (TRAIN + TINY + ["trian.max_steps=1"], "unknown key trian"),
    (TRAIN + TINY + ["optim.on_extend=sometimes"], "optim.on_extend"),
    (TRAIN + TINY + ["train.out_dir={root}/a_file"], "is an existing file"),
    (TRAIN + TINY + ["train.out_dir="], "train.out_dir is empty; give the run's directory"),
    (TRAIN + TINY + ["data.prepared_dir="], "data.prepared_dir is empty; give the folder for prepared token files"),
    (TRAIN + TINY + ["train.resume="], "train.resume is empty; give never, auto or a checkpoint's path"),
    (TRAIN + ["{root}/list_key.yaml"], "a key must be a plain value, got a list"),
    (TRAIN + TINY + ["train.device=meta"], "train.device: 'meta' is not a device"),
    (TRAIN + TINY + ["data.tokenizer="], "data.tokenizer '' is neither gpt2 nor a hub tokenizer name"),
    (PREPARE + ["--prepared-dir", ""], "--prepared-dir is empty"),
    (GENERATE + ["--ckpt", "", "--prompt", "hi"], "the checkpoint path is empty"),
    (SWEEP + ["configs/tiny.yaml", "--out", ""], "argument --out: an empty path"),
    (SWEEP + ["configs/tiny.yaml", "--seeds", "abc"], "argument --seeds: invalid int value: 'abc'"),
    (COMPARE, "the following arguments are required: runs"),
    # train.py: checkpoints
    (TRAIN + TINY + ["--resume={truncated}"], "model.safetensors fails its checksum"),
    (TRAIN + TINY + ["--resume={garbage_state}"], "state.pt fails its checksum"),
    (TRAIN + TINY + ["--resume={truncated_run_only}"], "no checkpoint in"),
    (TRAIN + TINY + ["--resume={root}/nowhere"], "does not exist"),
    (TRAIN + TINY + ["--resume={root}/gpt2"], "is a transformers model folder (model_type 'gpt2')"),
    (TRAIN + TINY + ["train.out_dir={good}", "model.n_layer=3", "--resume"], "cannot resume: model."),
    (TRAIN + TINY + ["train.out_dir={good}"], "already holds checkpoints"),
    # train.py and data.prepare: data sources
    (TRAIN + TINY + ["data.source={root}/cut.jsonl"], "cut.jsonl, line 2: not valid JSON"),
    (TRAIN + TINY + ["data.source={root}/nowhere.txt"], "does not exist"),
    (PREPARE + ["--source", "{root}/cut.jsonl", "--prepared-dir", "{root}/p"], "line 2: not valid JSON"),
    (PREPARE + ["--source", "{root}/latin1", "--prepared-dir", "{root}/p"], "invalid UTF-8 at byte 13"),
    (PREPARE + ["--source", "{root}/empty.jsonl", "--prepared-dir", "{root}/p"], "its files are empty"),
    (PREPARE + ["--source", "{root}/table.csv", "--prepared-dir", "{root}/p"], "cannot read .csv files"),
    (PREPARE + ["--source", "{root}/one_doc.txt", "--prepared-dir", "{root}/p"], "the val split is empty"),
    (PREPARE + ["--source", "{root}/cut.jsonl", "--text-field", "body", "--prepared-dir", "{root}/p"],
     "--text-field 'body' is not a column of"),  # row 1 is read before the cut line 2
    (PREPARE + ["--val-every", "1"], "--val-every must be >= 2"),
    (PREPARE + ["--tokenizer", "bpe-9000"], "bpe-9000"),
    (PREPARE + ["--max-tokens", "many"], "invalid int value"),
    # generate.py
    (GENERATE + ["--ckpt", "{truncated}", "--prompt", "hi"], "fails its checksum"),
    (GENERATE + ["--ckpt", "{root}/nowhere", "--prompt", "hi"], "does not exist"),
    (GENERATE + ["--ckpt", "{good}", "--prompt", ""], "the prompt is empty"),
    (GENERATE + ["--ckpt", "{good}", "--prompt", "hi", "--temperature", "-1"], "temperature must be"),
    (GENERATE + ["--ckpt", "{good}", "--prompt", "hi", "--max-new-tokens", "-3"], "--max-new-tokens must be >= 0"),
    (GENERATE + ["--ckpt", "{good}", "--prompt-file", "{root}/prompt.bin"], "cannot read prompt file"),
    (GENERATE + ["--ckpt", "{good}", "--prompt", "hi", "--dtype", "float16"], "float16 is not supported on CPU"),
    (GENERATE + ["--ckpt", "{good}", "--prompt", "hi", "--seed", "99999999999999999999999"],
     "--seed must be in [0, 2**64)"),
    (GENERATE + ["--ckpt", "{root}/gpt2", "--prompt", "hi"], "is a transformers model folder (model_type 'gpt2')"),
    # export_hf.py
    (EXPORT + ["--ckpt", "{good}", "--out", "{root}/a_file"],
     "a_file is an existing file; give a folder for the export"),
    (EXPORT + ["--ckpt", "{good}", "--out", "{root}/a_file/x"],
     "a_file, an existing file; give a folder for the export"),
    (EXPORT + ["--ckpt", "{truncated}", "--out", "{root}/export"], "fails its checksum"),
    (EXPORT + ["--ckpt", "{root}/nowhere", "--out", "{root}/export"], "does not exist"),
    (EXPORT + ["--ckpt", "{root}/gpt2", "--out", "{root}/export"], "is a transformers model folder (model_type 'gpt2')"),
    # import_gpt2.py
    (IMPORT + ["--from", "{root}/nowhere", "--out", "{root}/imported"], "nowhere is not a folder (it does not exist)"),
    (IMPORT + ["--from", "{root}/not_gpt2", "--out", "{root}/imported"], "not_gpt2"),
    (IMPORT + ["--from", "{root}/gpt2", "--attention", "taylor", "--attention-option", "crossover=1.5",
               "--out", "{root}/imported"], "expected an integer"),
    (IMPORT + ["--from", "{root}/gpt2", "--attention-option", "crossover", "--out", "{root}/imported"],
     "expected NAME=VALUE"),
    (IMPORT + ["--from", "{root}/gpt2", "--out", "{good}"], "already holds checkpoints"),
    (IMPORT + ["--from", "{root}/gpt2", "--out", "{root}/a_file"],
     "a_file is an existing file; give a folder for the run"),
    (IMPORT + ["--from", "{root}/gpt2", "--out", "{root}/a_file/run"],
     "a_file, an existing file; give a folder for the run"),
    # evals
    (EXTRACT + ["--ckpt", "{truncated}", "--out", "{root}/extracted"], "fails its checksum"),
    (EXTRACT + ["--ckpt", "{root}/gpt2", "--out", "{root}/extracted"], "is a transformers model folder"),
    (EXTRACT + ["--ckpt", "{good}", "--layers", "7", "--out", "{root}/extracted"], "layer"),
    (EVALS + ["--ckpt", "{truncated}", "--out", "{root}/report"], "fails its checksum"),
    (EVALS + ["--extracted", "{root}/nowhere", "--out", "{root}/report"], "nowhere"),
    (EVALS + ["--ckpt", "{good}", "--seeds", "0", "--out", "{root}/report"], "--seeds"),
    (EVALS + ["--ckpt", "{good}", "--out", "{root}/a_file"], "is an existing file; give a folder for the report"),
]


def _id(case) -> str:
    command, expected = case
    tool = Path(command[2] if command[1] == "-m" else command[1]).stem
    return f"{tool}: {expected}"


@pytest.mark.slow
@pytest.mark.parametrize("command, expected", CASES, ids=[_id(c) for c in CASES])
def test_bad_input_gets_one_line_and_exit_status_2(files, command, expected):
    argv = [part.format(**files) for part in command]
    result = subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]
