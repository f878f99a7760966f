"""evals/extract.py on tiny random-weight checkpoints: for every attention backend the saved queries, keys and
hidden states reproduce the model's own attention; selection, manifest, MQAR windows, the CLI, and one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data import mqar
from data.config import DataConfig
from evals.extract import extract, load_extracted, main, open_val_data, val_batches
from model.attention import BACKENDS, get_backend
from model.gpt import GPT
from model.position import apply_rotary, rotary_angles
from training.checkpoint import load_checkpoint_model
from training.run_data import open_run_data
from training.runtime import Runtime

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
POSITIONS = {"softmax": "learned", "expressive": "rope", "expressive_sq": "none", "logexp": "rope", "taylor": "rope"}


def model_attention(ckpt: Path, windows: int) -> tuple[GPT, dict[int, dict[str, torch.Tensor]]]:
    """The checkpoint's model and, per layer, its attention output before c_proj `y` (W, T, C) and the (q, k)
    entering qk_transform, from one run over the same val windows as the extraction."""
    model, cfg, _ = load_checkpoint_model(ckpt)
    tokens = torch.cat([x for x, _ in val_batches(open_val_data(cfg, windows, CPU), windows)])
    seen: dict[int, dict[str, torch.Tensor]] = {layer: {} for layer in range(cfg.model.n_layer)}
    for block, store in zip(model.transformer.h, seen.values()):
        block.attn.c_proj.register_forward_pre_hook(lambda m, args, s=store: s.update(y=args[0]))
        block.attn.qk_transform.register_forward_hook(lambda m, args, out, s=store: s.update(q=args[0], k=args[1]))
    with torch.no_grad():
        model(tokens)
    return model, seen


@pytest.mark.parametrize("backend", BACKENDS)
def test_saved_q_k_x_reproduce_the_models_attention(backend, tmp_path, prepared_dir, checkpoint_writer):
    position = POSITIONS[backend]
    ckpt = checkpoint_writer(tmp_path / "run", DataConfig(prepared_dir=prepared_dir, block_size=32, eval_windows=4),
                             attention=backend, position=position)
    extract(ckpt, tmp_path / "out", windows=3, device="cpu", batch_size=2)  # two batches, the last one short
    manifest, extraction = load_extracted(tmp_path / "out")
    model, seen = model_attention(ckpt, windows=3)
    C, H, d = 32, 2, 16
    assert manifest["attention"]["backend"] == backend and manifest["model"]["position"] == position
    for layer, block in enumerate(model.transformer.h):
        x = extraction.x(layer, stacked=False)  # (W, T, C)
        with torch.no_grad():
            q_pre, k_pre, v = (t.view(3, 32, H, d).transpose(1, 2) for t in block.attn.c_attn(x).split(C, dim=2))
        if position == "rope":
            cos, sin = rotary_angles(torch.arange(32), d, 10000.0)
            q_pre, k_pre = apply_rotary(q_pre, cos, sin), apply_rotary(k_pre, cos, sin)
        torch.testing.assert_close(q_pre, seen[layer]["q"], rtol=0, atol=1e-5)  # Q = X W_Q (then RoPE)
        torch.testing.assert_close(k_pre, seen[layer]["k"], rtol=0, atol=1e-5)
        for head in range(H):
            q, k = extraction.q(layer, head, stacked=False), extraction.k(layer, head, stacked=False)  # (W, T, d)
            y = get_backend(backend).reference(q[:, None], k[:, None], v[:, head, None])[:, 0]  # (W, T, d)
            torch.testing.assert_close(y, seen[layer]["y"][..., head * d : (head + 1) * d], rtol=0, atol=1e-5)
            if backend == "taylor":  # the kernel inputs come after taylor's L2 normalisation (temperature 1)
                torch.testing.assert_close(k.norm(dim=-1), torch.ones(3, 32))
                torch.testing.assert_close(q.norm(dim=-1), torch.ones(3, 32))


def test_selected_layers_and_heads_and_the_manifest(softmax_run, tmp_path):
    extract(softmax_run, tmp_path / "out", layers="1", heads="1", windows=4, device="cpu")
    manifest, extraction = load_extracted(tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["layer01.safetensors", "manifest.json"]
    assert manifest["layers"] == [1] and manifest["heads"] == [1] and manifest["dtype"] == "float32"
    assert manifest["checkpoint"] == {"path": str(softmax_run.resolve() / "checkpoints" / "step_000007"), "step": 7}
    _, cfg, _ = load_checkpoint_model(softmax_run)
    run_fingerprint = open_run_data(cfg, Runtime(device=CPU, dtype=torch.float32)).fingerprint
    assert manifest["windows"]["fingerprint"] == run_fingerprint  # --windows = data.eval_windows: train's val set
    assert {(t["name"], t["head"], tuple(t["shape"])) for t in manifest["tensors"]} == {
        ("x", None, (4, 32, 32)), ("q", 1, (4, 32, 16)), ("k", 1, (4, 32, 16))}
    assert extraction.q(1, 1).shape == (128, 16) and extraction.x(1).shape == (128, 32)  # windows x T stacked
    for record in manifest["tensors"]:
        rows = getattr(extraction, record["name"])(1, *([] if record["head"] is None else [1]))
        norms = rows.double().square().sum(-1).numpy()
        stats = record["row_norm_sq"]
        assert np.allclose([stats["min"], stats["median"], stats["max"]], [norms.min(), np.median(norms), norms.max()])
    with pytest.raises(ValueError, match=r"head 0 was not extracted \(heads: \[1\]\)"):
        extraction.k(1, 0)
    with pytest.raises(ValueError, match=r"layer 0 was not extracted"):
        extraction.x(0)


def test_mqar_checkpoints_use_the_deterministic_val_sequences(tmp_path, checkpoint_writer):
    task = mqar.MQARConfig(vocab_size=64, num_pairs=4, num_queries=4)
    ckpt = checkpoint_writer(tmp_path / "run", DataConfig(source="mqar", block_size=32, mqar=task), vocab_size=64)
    extract(ckpt, tmp_path / "out", windows=5, device="cpu")
    manifest, extraction = load_extracted(tmp_path / "out")
    assert manifest["windows"]["fingerprint"] == mqar.val_fingerprint(task, 32, 5)
    model, _, _ = load_checkpoint_model(ckpt)
    x, _ = mqar.val_set(task, 32, 5)
    with torch.no_grad():
        first = model.transformer.h[0].ln_1(model.transformer.wte(x) + model.transformer.wpe(torch.arange(32)))
    torch.testing.assert_close(extraction.x(0, stacked=False), first)


def test_the_cli_writes_an_extraction(softmax_run, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "evals.extract", "--ckpt", str(softmax_run), "--layers", "0,1", "--heads", "all",
         "--windows", "2", "--out", str(tmp_path / "out"), "--device", "cpu", "--batch-size", "1"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"extract: wrote {tmp_path / 'out'}: layers [0, 1], heads [0, 1], 2 windows")
    manifest, _ = load_extracted(tmp_path / "out")
    assert manifest["windows"]["count"] == 2 and len(manifest["tensors"]) == 2 * (1 + 2 * 2)


@pytest.mark.parametrize("args, message", [
    (["--ckpt", "{tmp}/nowhere"], r"checkpoint path .*nowhere does not exist"),
    (["--layers", "0,2"], r"--layers: layer 2 is out of range \(this model has layers 0\.\.1\)"),
    (["--heads", "-1"], r"--heads: head -1 is out of range \(this model has heads 0\.\.1\)"),
    (["--heads", "one"], r"--heads: 'one' is not a head index"),
    (["--windows", "100000000"], r"--windows \(100,000,000\) is more than the val split holds: .* different windows"),
    (["--windows", "0"], r"--windows must be >= 1"),
])
def test_errors_are_one_line_and_leave_nothing_behind(softmax_run, tmp_path, capsys, args, message):
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    code = main(["--ckpt", str(softmax_run), "--out", str(tmp_path / "out"), "--device", "cpu", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("extract: ")
    assert re.search(message, err), err
    assert os.listdir(tmp_path) == []  # no output and no temporary directory


def test_an_existing_extraction_is_replaced_only_with_force(softmax_run, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--ckpt", str(softmax_run), "--out", str(out), "--device", "cpu", "--windows", "1"]
    assert main([*base, "--layers", "0"]) == 0
    assert main([*base, "--layers", "1"]) == 2
    assert "already holds an extraction; pass --force to replace it" in capsys.readouterr().err
    assert main([*base, "--layers", "1", "--force"]) == 0
    assert load_extracted(out)[0]["layers"] == [1] and sorted(os.listdir(tmp_path)) == ["out"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main([*base[:2], "--out", str(other), "--force"]) == 2
    assert "is not empty and holds no extraction" in capsys.readouterr().err
    assert os.listdir(other) == ["notes.txt"]


def test_an_out_under_a_file_is_refused_before_the_checkpoint_loads(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "sub"
    assert main(["--ckpt", str(tmp_path / "nowhere"), "--out", str(out)]) == 2  # checked first: no such checkpoint
    assert capsys.readouterr().err == (f"extract: --out {out} lies under {tmp_path / 'afile'}, an existing file; "
                                       "give a folder for the extraction\n")


def damage(folder: Path, how: str) -> None:
    manifest = folder / "manifest.json"
    if how == "missing file":
        (folder / "layer00.safetensors").unlink()
    elif how == "truncated file":
        os.truncate(folder / "layer00.safetensors", 1000)
    elif how == "missing key":
        manifest.write_text(manifest.read_text().replace('"windows"', '"panes"'))
    elif how == "not an object":
        manifest.write_text("[1]")
    elif how == "other shape":
        data = json.loads(manifest.read_text())
        data["tensors"][0]["shape"][0] = 999
        manifest.write_text(json.dumps(data))


@pytest.mark.parametrize("how, message", [
    ("missing file", r"layer00.safetensors cannot be read \(.*\); extract it again"),
    ("truncated file", r"layer00.safetensors cannot be read \(.*incomplete metadata.*\); extract it again"),
    ("missing key", r"manifest.json lacks windows; extract it again"),
    ("not an object", r"manifest.json is not an extraction manifest \(a JSON object\); extract it again"),
    ("other shape", r"layer00.safetensors: x is of shape \[2, 32, 32\], where manifest.json records shape "
                    r"\[999, 32, 32\]; extract it again"),
])
def test_a_damaged_extraction_is_named_when_it_loads(softmax_run, tmp_path, how, message):
    extract(softmax_run, tmp_path / "ex", layers="0", heads="0", windows=2, device="cpu")
    damage(tmp_path / "ex", how)
    with pytest.raises(ValueError, match=message):
        load_extracted(tmp_path / "ex")
