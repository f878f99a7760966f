"""evals/context.py and scripts/eval_context.py: loss per position bucket past the training context; the decode
form of a constant-memory backend reproduces the training form; learned positions stop at n_positions."""

import gc
import importlib.util
import math
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.config import DataConfig
from data.prepare import prepare
from evals.context import (ContextCurve, bucket_edges, context_curve, records, scored_length, sequence_starts,
                           token_losses)
from model.config import ModelConfig
from model.gpt import GPT
from training.checkpoint import TrainState, checkpoint_model, find_checkpoint, save_checkpoint
from training.config import RunConfig, TrainConfig, config_to_dict

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("eval_context_cli", ROOT / "scripts" / "eval_context.py")
cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cli)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(attention="logexp", position="rope", **options) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=97, n_positions=16, n_layer=2, n_head=2, n_embd=32, attention=attention,
                           attention_options=options, position=position)).eval()


def test_buckets_are_one_training_context_wide():
    assert bucket_edges(16, 64) == (0, 16, 32, 48, 64)
    assert bucket_edges(16, 40) == (0, 16, 32, 40)


@pytest.mark.parametrize("attention", ["logexp", "taylor", "expressive_sq", "softmax"])
def test_the_decode_form_gives_the_training_forms_losses(attention):
    model = tiny(attention)
    x = torch.randint(0, 97, (2, 70), generator=torch.Generator().manual_seed(1))
    y = torch.roll(x, -1, dims=1)
    forward = token_losses(model, x, y, "forward")
    decoded = token_losses(model, x, y, "decode", chunk=16)
    torch.testing.assert_close(decoded, forward, atol=1e-4, rtol=1e-4)
    expected = F.cross_entropy(model(x)[0].transpose(1, 2), y, reduction="none")  # the definition, by hand
    torch.testing.assert_close(forward, expected)


def losses_by_hand(model, tokens: np.ndarray, starts: list[int], length: int) -> torch.Tensor:
    """Per-position loss of the windows of `length` tokens at `starts`, averaged over the windows."""
    x = torch.stack([torch.from_numpy(tokens[s : s + length].astype(np.int64)) for s in starts])
    y = torch.stack([torch.from_numpy(tokens[s + 1 : s + length + 1].astype(np.int64)) for s in starts])
    return token_losses(model, x, y).mean(dim=0)


def test_bucket_means_are_the_mean_of_the_per_token_losses():
    model = tiny()
    tokens = np.random.default_rng(0).integers(0, 97, size=400).astype(np.uint16)
    curve = context_curve(model, tokens, label="x", train_context=16, max_length=48, sequences=3)
    per_token = losses_by_hand(model, tokens, [0, (400 - 49) // 2, 400 - 49], length=48)
    assert curve.edges == (0, 16, 32, 48) and curve.sequences == 3
    for i, (a, b) in enumerate(zip(curve.edges, curve.edges[1:])):
        assert curve.loss[i] == pytest.approx(per_token[a:b].mean().item(), rel=1e-6)
    assert [r["bucket_end"] for r in records([curve])] == [16, 32, 48]


def test_learned_positions_are_scored_up_to_n_positions_and_say_so():
    length, note = scored_length(tiny(position="learned"), 64)
    assert length == 16 and "n_positions = 16" in note
    assert scored_length(tiny(position="rope"), 64) == (64, "")
    assert scored_length(tiny(position="none"), 64) == (64, "")


def test_a_learned_position_model_reads_the_same_sequences_as_the_others_only_shorter():
    """max_length 48 over 400 tokens: every model's sequences start at 0, (400 - 49) // 2 and 400 - 49; a model with
    n_positions = 16 scores the first 16 positions of each."""
    model = tiny(position="learned")
    tokens = np.random.default_rng(1).integers(0, 97, size=400).astype(np.uint16)
    curve = context_curve(model, tokens, label="x", train_context=8, max_length=48, sequences=3)
    per_token = losses_by_hand(model, tokens, [0, (400 - 49) // 2, 400 - 49], length=16)
    assert curve.length == 16 and curve.edges == (0, 8, 16)
    assert curve.loss == pytest.approx((per_token[:8].mean().item(), per_token[8:].mean().item()), rel=1e-6)


def test_a_val_split_of_max_length_plus_one_tokens_is_enough():
    tokens = np.arange(49, dtype=np.uint16) % 97
    assert context_curve(tiny(), tokens, label="x", train_context=16, max_length=48, sequences=1).sequences == 1
    with pytest.raises(ValueError, match=r"^the val split has 48 tokens but one window needs --max-length \+ 1 = 49; "
                                         r"lower --max-length or prepare more data"):
        context_curve(tiny(), tokens[:48], label="x", train_context=16, max_length=48, sequences=1)


def test_more_sequences_than_the_val_split_holds_are_refused_not_repeated():
    """50 tokens hold 2 distinct sequences of 48 + 1: a third would repeat one and count it twice."""
    tokens = np.arange(50, dtype=np.uint16) % 97
    assert sequence_starts(tokens, 48, 2).tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"^--sequences \(3\) is more than the val split holds: its 50 tokens hold "
                                         r"2 different windows of --max-length \+ 1 = 49 tokens; lower --sequences or "
                                         r"--max-length, or prepare"):
        context_curve(tiny(), tokens, label="x", train_context=16, max_length=48, sequences=3)


def save_tiny_run(path: Path, prepared_dir: str, attention: str, block_size: int = 32, **data) -> Path:
    cfg = RunConfig(model=ModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=32, attention=attention,
                                      position="rope"),
                    data=DataConfig(block_size=block_size, prepared_dir=prepared_dir, **data),
                    train=TrainConfig(out_dir=str(path)))
    path.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, GPT(cfg.model), TrainState(step=1), config_to_dict(cfg), keep=1)
    return path


def test_the_cli_writes_a_page_a_csv_and_a_plot(tmp_path, prepared_dir, capsys):
    runs = []
    for attention in ("softmax", "logexp"):
        runs += ["--ckpt", str(save_tiny_run(tmp_path / attention, prepared_dir, attention))]
    assert cli.main([*runs, "--max-length", "128", "--sequences", "2", "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "context.md").read_text()
    assert page.startswith("# Loss against position") and "Machine:" in page and "Date:" in page
    assert "| softmax position=rope block_size=32 |" in page and "| logexp position=rope block_size=32 |" in page
    assert "96–128" in page
    rows = (tmp_path / "out" / "context.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 4 and all(math.isfinite(float(r.split(",")[3])) for r in rows[1:])
    assert (tmp_path / "out" / "context.png").stat().st_size > 1000
    assert cli.main([*runs[:2], "--max-length", "10000000", "--out", str(tmp_path / "o2")]) == 2
    assert "one window needs --max-length + 1 = 10,000,001" in capsys.readouterr().err
    # another command's page in --out is refused before any checkpoint loads, unless --overwrite
    assert cli.main([*runs[:2], "--max-length", "64", "--sequences", "1", "--out", str(tmp_path / "out")]) == 2
    assert "context.md exists, written by `python scripts/eval_context.py" in capsys.readouterr().err
    assert cli.main([*runs[:2], "--max-length", "64", "--sequences", "1", "--out", str(tmp_path / "out"),
                     "--overwrite"]) == 0
    assert "note: replacing" in capsys.readouterr().out


def test_the_cli_holds_one_model_at_a_time_and_loads_none_before_every_check_passed(
    tmp_path, prepared_dir, capsys, monkeypatch
):
    loaded = []  # weak references to the models the CLI built, in order

    def tracked(ckpt, cfg):
        gc.collect()
        assert all(ref() is None for ref in loaded), "an earlier checkpoint's model is still in memory"
        model = checkpoint_model(ckpt, cfg)
        loaded.append(weakref.ref(model))
        return model

    monkeypatch.setattr(cli, "checkpoint_model", tracked)
    runs = [save_tiny_run(tmp_path / name, prepared_dir, name) for name in ("softmax", "logexp", "taylor")]
    argv = [arg for run in runs for arg in ("--ckpt", str(run))] + ["--max-length", "64", "--sequences", "1"]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert len(loaded) == 3
    loaded.clear()
    assert cli.main([*argv, "--ckpt", str(runs[0]), "--out", str(tmp_path / "again")]) == 2  # a checkpoint twice
    assert "give each checkpoint once" in capsys.readouterr().err and loaded == []


@pytest.mark.parametrize("out", ["afile", "afile/ctx"])
def test_an_out_that_is_or_lies_under_a_file_is_refused_before_any_checkpoint_loads(tmp_path, capsys, out):
    """Checked first: the checkpoint named here does not exist, and the error is still the one about --out."""
    (tmp_path / "afile").write_text("x\n")
    assert cli.main(["--ckpt", str(tmp_path / "nowhere"), "--out", str(tmp_path / out)]) == 2
    where = "is an existing file" if out == "afile" else f"lies under {tmp_path / 'afile'}, an existing file"
    assert capsys.readouterr().err == (f"eval_context: --out {tmp_path / out} {where}; give a folder for the page, "
                                       "CSV and plot\n")
    assert (tmp_path / "afile").read_text() == "x\n"


def curve(label: str, train_context: int, length: int) -> ContextCurve:
    """A curve whose loss in bucket [a, b) reads a + b / 1000, so a cell shows which bucket it came from."""
    edges = bucket_edges(train_context, length)
    return ContextCurve(label, train_context, length, edges, tuple(a + b / 1000 for a, b in zip(edges, edges[1:])),
                        2)


def test_each_loss_sits_under_its_own_bucket_in_one_table_per_training_context():
    """The reviewer's case: contexts 32 and 16 scored to 128 positions, and learned positions stopping at 64. Each
    cell's value a + b / 1000 must sit under the header a–b."""
    curves = [curve("logexp block_size=32", 32, 128), curve("logexp block_size=16", 16, 128),
              curve("softmax block_size=32", 32, 64)]
    page = cli.markdown(curves, ["--ckpt", "x"], "forward")
    first, second = page.split("Trained context: ")[1:]
    assert first.startswith("16 tokens;") and second.startswith("32 tokens;")
    header, _, *rows = [line for line in second.splitlines() if line.startswith("|")]
    assert header == "| checkpoint | 0–32 | 32–64 | 64–96 | 96–128 | last / first |"
    assert rows == ["| logexp block_size=32 | 0.032 | 32.1 | 64.1 | 96.1 | 3004.00× |",
                    "| softmax block_size=32 | 0.032 | 32.1 |  |  | 1002.00× |"]
    header, _, row = [line for line in first.splitlines() if line.startswith("|")]
    assert header.startswith("| checkpoint | 0–16 | 16–32 | 32–48 |") and header.endswith("| 112–128 | last / first |")
    assert row.startswith("| logexp block_size=16 | 0.016 | 16 | 32 |")


def test_labels_that_stay_alike_get_the_checkpoints_folder_name():
    labels = ["logexp position=rope block_size=32", "logexp position=rope block_size=32", "softmax position=rope"]
    assert cli.unique_labels(labels, ["runs/a", "other/b", "runs/c"]) == [
        "logexp position=rope block_size=32 (a)", "logexp position=rope block_size=32 (b)", "softmax position=rope"]
    assert cli.unique_labels(labels[:2], ["runs/a/ckpt", "other/a/ckpt"]) == [  # the names alike too: the paths
        "logexp position=rope block_size=32 (runs/a/ckpt)", "logexp position=rope block_size=32 (other/a/ckpt)"]


def test_the_cli_tells_checkpoints_of_different_contexts_and_alike_checkpoints_apart(tmp_path, prepared_dir, capsys):
    runs = [save_tiny_run(tmp_path / "ctx32", prepared_dir, "logexp", 32),
            save_tiny_run(tmp_path / "ctx16", prepared_dir, "logexp", 16),
            save_tiny_run(tmp_path / "again" / "ctx16", prepared_dir, "logexp", 16)]
    argv = [arg for run in runs for arg in ("--ckpt", str(run))] + ["--max-length", "64", "--sequences", "1"]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "context.md").read_text()
    assert "| checkpoint | 0–32 | 32–64 | last / first |" in page
    assert "| checkpoint | 0–16 | 16–32 | 32–48 | 48–64 | last / first |" in page
    assert f"| logexp position=rope block_size=16 ({tmp_path / 'ctx16'}) |" in page
    assert f"| logexp position=rope block_size=16 ({tmp_path / 'again' / 'ctx16'}) |" in page
    labels = [line.split(",")[0] for line in (tmp_path / "out" / "context.csv").read_text().splitlines()[1:]]
    assert labels.count("logexp position=rope block_size=32") == 2 and len(set(labels)) == 3


@pytest.mark.parametrize("again", ["{run}/", "{ckpt}"])
def test_a_checkpoint_given_twice_is_refused_however_its_path_is_written(tmp_path, prepared_dir, capsys, again):
    """The run folder and the checkpoint folder it resolves to are one checkpoint: two rows no label tells apart."""
    run = save_tiny_run(tmp_path / "run", prepared_dir, "logexp")
    ckpt = find_checkpoint(run)
    second = again.format(run=run, ckpt=ckpt)
    assert cli.main(["--ckpt", str(run), "--ckpt", second, "--max-length", "64", "--sequences", "1",
                     "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (f"eval_context: --ckpt {second} is the checkpoint {ckpt}, as --ckpt {run} is; "
                                       "give each checkpoint once\n")
    assert not (tmp_path / "out").exists()


def test_checkpoints_trained_on_different_data_are_refused_as_not_comparable(tmp_path, prepared_dir, capsys):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.txt").write_text(f"Text {i}: " + "a few words of local prose, " * 40)
    local = {"source": str(folder), "val_every": 2}
    prepare(DataConfig(prepared_dir=str(tmp_path / "prepared"), **local))
    runs = [save_tiny_run(tmp_path / "shakespeare", prepared_dir, "logexp"),
            save_tiny_run(tmp_path / "local", str(tmp_path / "prepared"), "logexp", **local)]
    argv = ["--ckpt", str(runs[0]), "--ckpt", str(runs[1]), "--max-length", "64", "--sequences", "2"]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"eval_context: --ckpt {runs[1]} reads other val sequences than --ckpt {runs[0]} "
                          f"(data.source {str(folder)!r} prepared in {tmp_path / 'prepared'}/")
    assert err.endswith("so their losses would not compare; score checkpoints trained on the same data together\n")
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_an_mqar_checkpoint_is_refused_with_a_fix_that_applies(tmp_path, prepared_dir, capsys):
    run = save_tiny_run(tmp_path / "recall", prepared_dir, "softmax", source="mqar")
    assert cli.main(["--ckpt", str(run), "--max-length", "64", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (f"eval_context: --ckpt {run}: {find_checkpoint(run)} was trained on data.source "
                                       "mqar (generated recall sequences, no val text); eval_context scores "
                                       "checkpoints trained on text only\n")


def test_a_negative_thread_count_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--ckpt", str(tmp_path), "--threads", "-1", "--out", str(tmp_path / "out")])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == "eval_context: --threads must be >= 0 (0: torch's default), got -1 (see --help)\n"
