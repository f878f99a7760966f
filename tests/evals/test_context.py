"""evals/context.py and scripts/eval_context.py: loss per position bucket past the training context; the decode
form of a constant-memory backend reproduces the training form; learned positions stop at n_positions."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.config import DataConfig
from evals.context import bucket_edges, context_curve, records, scored_length, token_losses
from model.config import ModelConfig
from model.gpt import GPT
from training.checkpoint import TrainState, save_checkpoint
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
    with pytest.raises(ValueError, match=r"^the val split holds 48 tokens, fewer than --max-length 48 \+ 1; lower "
                                         r"--max-length$"):
        context_curve(tiny(), tokens[:48], label="x", train_context=16, max_length=48, sequences=1)


def test_the_cli_writes_a_page_a_csv_and_a_plot(tmp_path, prepared_dir, capsys):
    runs = []
    for attention in ("softmax", "logexp"):
        cfg = RunConfig(model=ModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=32, attention=attention,
                                          position="rope"),
                        data=DataConfig(block_size=32, prepared_dir=prepared_dir),
                        train=TrainConfig(out_dir=str(tmp_path / attention)))
        save_checkpoint(tmp_path / attention, GPT(cfg.model), TrainState(step=1), config_to_dict(cfg), keep=1)
        runs += ["--ckpt", str(tmp_path / attention)]
    assert cli.main([*runs, "--max-length", "128", "--sequences", "2", "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "context.md").read_text()
    assert page.startswith("# Loss against position") and "Machine:" in page and "Date:" in page
    assert "| softmax position=rope |" in page and "| logexp position=rope |" in page
    assert "96–128" in page
    rows = (tmp_path / "out" / "context.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 4 and all(math.isfinite(float(r.split(",")[3])) for r in rows[1:])
    assert (tmp_path / "out" / "context.png").stat().st_size > 1000
    assert cli.main([*runs[:2], "--max-length", "10000000", "--out", str(tmp_path / "o2")]) == 2
    assert "fewer than --max-length" in capsys.readouterr().err
