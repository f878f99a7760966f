"""scripts/generate.py on tiny random-weight checkpoints: prompts from flags, files and stdin, batches of prompts of
any lengths (one left-padded batch), greedy and seeded sampling, the context limit and the window, the stats line,
and one-line errors."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.config import MQAR, DataConfig, MQARConfig
from model import generation
from model.attention import BACKENDS
from model.config import ModelConfig
from model.gpt import GPT
from training.checkpoint import TrainState, save_checkpoint
from training.config import RunConfig, config_to_dict

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("generate_cli", ROOT / "scripts" / "generate.py")
cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cli)

STATS = re.compile(  # greedy: no seed is drawn, none is printed
    r"^prefill: \d+ tokens, [\d,]+ tokens/s \| decode: \d+ tokens, [\d,.]+ tokens/s \| "
    r"decode state: [\d,]+ bytes \([^|]*\)$"
)


def write_checkpoint(run_dir: Path, **model) -> Path:
    """A run directory with one checkpoint of a random 2-layer model (GPT-2 vocabulary unless overridden)."""
    cfg = RunConfig(model=ModelConfig(**{"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 32, **model}),
                    data=DataConfig(block_size=32))
    torch.manual_seed(0)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(run_dir, GPT(cfg.model), TrainState(step=1), config_to_dict(cfg), keep=1)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "learned": write_checkpoint(root / "learned", attention="softmax", position="learned"),
        "rope": write_checkpoint(root / "rope", attention="logexp", position="rope"),
        "kv_rope": write_checkpoint(root / "kv_rope", attention="softmax", position="rope"),
        "small_vocab": write_checkpoint(root / "small_vocab", vocab_size=1000),
    }


def generate(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main([*args, "--device", "cpu", "--dtype", "float32"])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_prompt_is_echoed_and_continued(runs, capsys):
    code, out, err = generate(capsys, "--ckpt", str(runs["rope"]), "--prompt", "ROMEO:", "--max-new-tokens", "8",
                              "--temperature", "0")
    assert code == 0
    assert out.startswith("ROMEO:") and len(out) > len("ROMEO:\n")
    assert STATS.match(err.strip()), err
    assert "prefill: 3 tokens" in err and "decode: 8 tokens" in err and "logexp" in err


def test_greedy_decoding_is_deterministic_and_the_seed_fixes_sampling(runs, capsys):
    def text(*options: str) -> str:
        code, out, _ = generate(capsys, "--ckpt", str(runs["learned"]), "--prompt", "Once", "--max-new-tokens", "10",
                                *options)
        assert code == 0
        return out

    assert text("--temperature", "0") == text("--temperature", "0", "--seed", "5")
    assert text("--seed", "1", "--top-k", "50") == text("--seed", "1", "--top-k", "50")
    assert text("--seed", "1", "--top-k", "50") != text("--seed", "2", "--top-k", "50")


def test_sampling_prints_its_seed_and_no_new_tokens_prints_no_rate(runs, capsys):
    code, _, err = generate(capsys, "--ckpt", str(runs["rope"]), "--prompt", "Hi", "--max-new-tokens", "2",
                            "--seed", "7")
    assert code == 0 and err.strip().endswith("| seed 7")
    code, out, err = generate(capsys, "--ckpt", str(runs["rope"]), "--prompt", "Hi", "--max-new-tokens", "0",
                              "--temperature", "0")
    assert code == 0 and out == "Hi\n"
    assert "decode: 0 tokens |" in err and "nan tokens" not in err and "seed" not in err


def help_text(capsys) -> str:
    """generate.py's --help, its lines joined (argparse wraps them to the terminal's width)."""
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_shows_the_defaults(capsys):
    out = help_text(capsys)
    assert "(default: 256)" in out and "(default: 1.0)" in out


def test_stdin_is_the_prompt_when_none_is_given(runs, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("To be,\nor not".encode())))
    code, out, err = generate(capsys, "--ckpt", str(runs["rope"]), "--max-new-tokens", "4", "--temperature", "0")
    assert code == 0 and out.startswith("To be,\nor not") and STATS.match(err.strip())


@pytest.mark.parametrize("attention", BACKENDS)
def test_a_batch_prints_each_prompt_as_it_would_alone(attention, capsys, tmp_path):
    run = write_checkpoint(tmp_path / "run", attention=attention, position="learned")
    (tmp_path / "scene.txt").write_text("JULIET:\nO Romeo,")
    prompts = ["ROMEO:", "Hi", "JULIET:\nO Romeo,", "To be,"]  # 3, 1, 9 and 3 tokens: one left-padded batch
    options = ["--ckpt", str(run), "--max-new-tokens", "6", "--temperature", "0"]
    code, out, err = generate(capsys, *options, "--prompt", prompts[0], "--prompt", prompts[1],
                              "--prompt-file", str(tmp_path / "scene.txt"), "--prompt", prompts[3])
    assert code == 0
    assert "prefill: 16 tokens" in err and "decode: 24 tokens" in err  # one batch: the padding is not counted
    alone = [generate(capsys, *options, "--prompt", p)[1] for p in prompts]
    assert out == "".join(f"--- prompt {i + 1} ---\n{text}" for i, text in enumerate(alone))


def test_learned_positions_stop_at_the_context_limit_or_slide_a_window(runs, capsys):
    options = ["--ckpt", str(runs["learned"]), "--prompt", "Once upon a time", "--max-new-tokens", "40"]
    code, _, err = generate(capsys, *options)
    assert code == 0
    assert "stopped at the context limit of 32 tokens" in err and "--window N" in err
    assert "decode: 29 tokens" in err  # 4 prompt tokens + 28 decoded fill the 32 positions, plus one more
    code, _, err = generate(capsys, *options, "--window", "16")
    assert code == 0 and "context limit" not in err and "decode: 40 tokens" in err


def one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("generate: ")
    return err


@pytest.mark.parametrize(
    "options, message",
    [
        (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
        (["--top-p", "0"], r"--top-p must be in \(0, 1\]"),
        (["--top-p", "1.5"], r"--top-p must be in \(0, 1\]"),
        (["--top-k", "-3"], "--top-k must be >= 0"),
        (["--window", "32"], r"--window must be in \[1, 32\)"),
        (["--window", "0"], r"--window must be >= 1, got 0"),
        (["--max-context", "0"], r"--max-context must be >= 1"),
        (["--prompt", "caf\udcff"], r"the prompt is not UTF-8 text \(a byte that is not UTF-8 at character 3\)"),
        (["--max-context", "64"], "exceeds the model's 32 learned positions"),
        (["--prompt", ""], "the prompt is empty"),
        (["--prompt", "a", "--prompt", ""], "prompt 2 is empty"),
    ],
)
def test_unusable_arguments_give_one_line_errors(runs, capsys, options, message):
    if "--prompt" not in options:
        options = [*options, "--prompt", "Hello"]
    err = one_line_error(*generate(capsys, "--ckpt", str(runs["learned"]), *options))
    assert re.search(message, err), err


def test_a_prompt_file_is_read_verbatim_and_stdin_must_be_utf8(runs, capsys, monkeypatch, tmp_path):
    (tmp_path / "dos.txt").write_bytes(b"A\r\nB")
    code, out, _ = generate(capsys, "--ckpt", str(runs["rope"]), "--prompt-file", str(tmp_path / "dos.txt"),
                            "--max-new-tokens", "0")
    assert code == 0 and out == "A\r\nB\n"  # the echo: "\r\n" kept, as --prompt and stdin keep it
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xff\xfe bad")))
    err = one_line_error(*generate(capsys, "--ckpt", str(runs["rope"])))
    assert err == ("generate: stdin is not UTF-8 text (byte 0xff at offset 0); convert it to UTF-8 (iconv -t "
                   "UTF-8)\n")


def test_ctrl_c_keeps_the_text_of_every_prompt_so_far(runs, capsys, monkeypatch):
    real = cli.generate

    def interrupted_after_three_steps(*args, **kwargs):
        for step, tokens in enumerate(real(*args, **kwargs)):
            if step == 3:
                raise KeyboardInterrupt
            yield tokens

    monkeypatch.setattr(cli, "generate", interrupted_after_three_steps)
    code, out, err = generate(capsys, "--ckpt", str(runs["rope"]), "--prompt", "Hi", "--prompt", "Yo",
                              "--max-new-tokens", "50", "--temperature", "0")
    assert code == 130 and err.endswith("generate: interrupted\n") and STATS.match(err.splitlines()[-2])
    first, second = out.split("--- prompt 2 ---\n")
    assert first.startswith("--- prompt 1 ---\nHi") and len(first) > len("--- prompt 1 ---\nHi\n")
    assert second.startswith("Yo") and len(second) > len("Yo\n")


def test_ctrl_c_while_the_prompt_is_read_is_one_line(runs, capsys, monkeypatch):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "read_stdin", interrupted)
    code, out, err = generate(capsys, "--ckpt", str(runs["rope"]))
    assert (code, out, err) == (130, "", "\ngenerate: interrupted\n")


def test_a_reader_that_goes_away_ends_the_output_quietly(runs):
    command = [sys.executable, "scripts/generate.py", "--ckpt", str(runs["rope"]), "--prompt", "Hi",
               "--max-new-tokens", "400", "--no-stop", "--max-context", "100000"]
    result = subprocess.run(["bash", "-o", "pipefail", "-c", f"{shlex.join(command)} | head -c 5"], cwd=ROOT,
                            capture_output=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 141  # generate's own status: pipefail passes it on
    assert result.stdout.startswith(b"Hi") and len(result.stdout) == 5  # bytes: the cut may split a character
    assert b"Traceback" not in result.stderr and b"BrokenPipe" not in result.stderr


@pytest.mark.parametrize("known", [True, False], ids=["memory known", "memory unknown"])
def test_a_kv_cache_larger_than_memory_is_a_one_line_error_naming_its_size(runs, capsys, monkeypatch, known):
    """Refused up front where the free memory is known (an overcommitting allocator would hand it out and the
    machine swap later), else when the allocation fails."""
    tokens = 10**13  # its buffers exceed any machine's address space, so allocating them fails everywhere
    monkeypatch.setattr(generation, "available_bytes", lambda device: 8 * 2**30 if known else None)
    err = one_line_error(*generate(capsys, "--ckpt", str(runs["kv_rope"]), "--prompt", "Hi", "--temperature", "0",
                                   "--max-new-tokens", str(tokens), "--max-context", str(tokens)))
    needed = 2 * 2 * 2 * tokens * 16 * 4  # layers x (keys, values) x heads x tokens x head size x fp32 bytes
    over = "more than the 8.0 GiB available" if known else "more than could be allocated"
    assert err == (f"generate: a softmax KV cache of {tokens:,} tokens for 1 prompt needs {needed / 2**30:,.1f} GiB, "
                   f"{over}; lower --max-context or --max-new-tokens\n")


@pytest.mark.parametrize("tokens", [10**17, 2**63])  # the meta-device sizing overflows; past 2**63 torch's size too
def test_a_kv_cache_past_what_a_tensor_can_address_is_a_one_line_error(runs, capsys, tokens):
    err = one_line_error(*generate(capsys, "--ckpt", str(runs["kv_rope"]), "--prompt", "Hi", "--temperature", "0",
                                   "--max-new-tokens", str(tokens), "--max-context", str(tokens)))
    assert err == (f"generate: a softmax KV cache of {tokens:,} tokens for 1 prompt needs more bytes than a tensor can "
                   "address, more than any machine has; lower --max-context or --max-new-tokens\n")


def test_the_cpu_memory_available_is_read_from_the_kernel():
    available = generation.available_bytes(torch.device("cpu"))
    assert available is None or 0 < available <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@pytest.mark.parametrize("seed", ["99999999999999999999999", str(2**64), "-1"])
def test_a_seed_outside_64_bits_is_refused_before_the_checkpoint_loads(capsys, seed):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--ckpt", "not/read", "--prompt", "Hi", "--seed", seed])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (f"generate: --seed must be in [0, 2**64) (0 to 18446744073709551615), got "
                                       f"{seed} (see --help)\n")


def test_the_largest_seed_samples(runs, capsys):
    code, _, err = generate(capsys, "--ckpt", str(runs["rope"]), "--prompt", "Hi", "--max-new-tokens", "3",
                            "--seed", str(2**64 - 1))
    assert code == 0 and err.rstrip().endswith(f"seed {2**64 - 1}"), err


def test_a_bad_checkpoint_path_is_a_one_line_error(capsys, tmp_path):
    err = one_line_error(*generate(capsys, "--ckpt", str(tmp_path / "missing"), "--prompt", "Hi"))
    assert "does not exist" in err
    err = one_line_error(*generate(capsys, "--ckpt", str(tmp_path), "--prompt", "Hi"))
    assert "no checkpoint in" in err


def test_a_checkpoint_from_another_vocabulary_is_refused(runs, capsys):
    err = one_line_error(*generate(capsys, "--ckpt", str(runs["small_vocab"]), "--prompt", "Hi"))
    assert "vocabulary of 1000 tokens" in err and "another vocabulary" in err


@pytest.mark.parametrize("vocab_size", [64, 50304])  # the task's vocabulary, or the default one, wider than GPT-2's
def test_an_mqar_checkpoint_is_refused_as_having_no_text_tokenizer(capsys, tmp_path, vocab_size):
    data = DataConfig(source=MQAR, block_size=32, mqar=MQARConfig(vocab_size=64, num_pairs=4, num_queries=4))
    cfg = RunConfig(model=ModelConfig(vocab_size=vocab_size, n_layer=1, n_head=2, n_embd=16, n_positions=32),
                    data=data)
    (tmp_path / "mqar").mkdir()
    save_checkpoint(tmp_path / "mqar", GPT(cfg.model), TrainState(step=1), config_to_dict(cfg), keep=1)
    err = one_line_error(*generate(capsys, "--ckpt", str(tmp_path / "mqar"), "--prompt", "Hi"))
    assert "was trained on MQAR (data.source 'mqar')" in err and "no text tokenizer" in err, err
    assert "vocabulary" not in err


@pytest.mark.parametrize("run", ["learned", "rope"])
def test_a_seeded_prompt_samples_in_every_row_of_a_batch_what_it_samples_alone(runs, capsys, run):
    prompts = ["Once", "To be or", "JULIET:\nO Romeo,"]  # 1, 3 and 9 tokens: the shorter ones are padded
    options = ["--ckpt", str(runs[run]), "--max-new-tokens", "8", "--top-k", "50", "--seed", "3"]
    alone = {p: generate(capsys, *options, "--prompt", p)[1] for p in prompts}
    assert len(set(alone.values())) == 3
    for shift in range(len(prompts)):  # each prompt in each row
        order = prompts[shift:] + prompts[:shift]
        code, out, _ = generate(capsys, *options, *(a for p in order for a in ("--prompt", p)))
        assert code == 0
        assert out == "".join(f"--- prompt {i + 1} ---\n{alone[p]}" for i, p in enumerate(order))
    code, out, _ = generate(capsys, *options, "--prompt", "Once", "--prompt", "Once")
    assert out == f"--- prompt 1 ---\n{alone['Once']}--- prompt 2 ---\n{alone['Once']}"  # one seed, one sample
    assert generate(capsys, *options[:-1], "4", "--prompt", "Once")[1] != alone["Once"]


def test_the_help_says_a_seeded_prompt_samples_in_a_batch_as_alone(capsys):
    out = help_text(capsys)
    assert ("Sampled, each prompt draws from a generator of its own, seeded with --seed S itself, so a prompt in any "
            "row of a batch continues as it does sampled alone with --seed S") in out
    assert "the same prompt given twice is sampled the same way twice" in out
    assert "so it continues in a batch as it does alone with the same seed" in out  # --seed's own help


def test_the_help_says_what_dtype_auto_picks_and_which_dtype_matches_the_export(capsys):
    out = help_text(capsys)
    assert ("auto: bfloat16 on a CPU with bf16 matmul instructions (avx512_bf16, amx_bf16) and on Ampere or later "
            "GPUs, float16 on older GPUs, else float32") in out
    assert "With --dtype float32, greedy text equals the transformers export's" in out


def test_the_command_end_to_end(runs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "scripts/generate.py", "--ckpt", str(runs["rope"]), "--max-new-tokens", "5",
               "--temperature", "0"]
    result = subprocess.run(command, input="ROMEO:", cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ROMEO:") and STATS.match(result.stderr.strip()), result.stderr
    result = subprocess.run([*command, "--top-p", "2"], input="ROMEO:", cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["generate: --top-p must be in (0, 1] (1 = no limit), got 2.0"]
