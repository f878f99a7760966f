"""scripts/mqar_init.py: a couple of its runs, a few steps each, write the page (opening, tables) and the CSV; the
inits ModelConfig cannot express are applied to the weights they name."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]

spec = importlib.util.spec_from_file_location("mqar_init_cli", ROOT / "scripts" / "mqar_init.py")
mqar_init = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mqar_init  # its dataclasses look their module up there
spec.loader.exec_module(mqar_init)


def tables(page: str) -> list[list[str]]:
    """The markdown tables of `page`, each as its lines."""
    found, current = [], []
    for line in page.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append(current)
            current = []
    return found


def test_a_few_steps_of_two_runs_write_the_page_and_the_csv(tmp_path, one_thread):
    out = tmp_path / "mqar_init"
    argv = ["--rows", "ref-default-untied,gpt-std0.02-tied", "--steps", "20", "--eval-every", "10", "--out", str(out)]
    assert mqar_init.main(argv) == 0
    page = out.with_suffix(".md").read_text()
    title, blank, description = page.splitlines()[:3]
    assert title.startswith("# ") and blank == ""
    assert description.startswith("Measured: ") and "2 runs" in description
    assert f"Command: `python scripts/mqar_init.py {' '.join(argv)}`" in description
    assert "Machine: " in description and "Date: " in description
    # inits and heads (both runs), lr, init_std, seeds, backends (the GPT run alone)
    assert [len(table) for table in tables(page)] == [4, 3, 3, 3, 3]
    assert all(line.count("|") == 6 for line in tables(page)[0])
    assert "| 0.02 | not run | – (" in page  # the untied run of the std table was not asked for
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert [r["run"] for r in rows] == ["ref-default-untied", "gpt-std0.02-tied"]
    assert all(r["steps_trained"] == "20" or r["reached_step"] for r in rows)


def test_unknown_runs_are_refused_before_any_training(tmp_path, capsys):
    assert mqar_init.main(["--rows", "gpt-nonsense", "--out", str(tmp_path / "x")]) == 2
    assert "unknown run ids gpt-nonsense" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_an_out_that_cannot_hold_the_page_or_would_replace_another_is_refused_before_any_training(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert mqar_init.main(["--rows", "gpt-std0.02-tied", "--out", str(tmp_path / "file" / "x")]) == 2
    err = capsys.readouterr().err
    assert err == (f"mqar_init: --out's folder {tmp_path / 'file'} is an existing file; give a folder for the page "
                   "and CSV\n")
    (tmp_path / "page.md").write_text("# another page\n")
    assert mqar_init.main(["--rows", "gpt-std0.02-tied", "--out", str(tmp_path / "page")]) == 2
    assert "page.md exists, with no recorded command" in capsys.readouterr().err


def test_a_dotted_out_keeps_its_whole_name(tmp_path, one_thread):
    assert mqar_init.main(["--rows", "gpt-std0.02-tied", "--steps", "2", "--eval-every", "1",
                           "--out", str(tmp_path / "init-0.1")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["init-0.1.csv", "init-0.1.md"]  # with_suffix gave init-0.*


def test_inits_outside_model_config_reach_the_weights_they_name():
    default_tied = mqar_init.Run("gpt", "default", True).build()
    wte = default_tied.transformer.wte.weight
    assert default_tied.lm_head.weight is wte and 0.9 < wte.std().item() < 1.1  # the head keeps Embedding's N(0, 1)
    fanin = mqar_init.Run("gpt", "fanin", False).build()
    attn = fanin.transformer.h[0].attn
    for linear in (attn.c_attn, attn.c_proj):  # residual projections too: no GPT-2 scaling on top
        assert abs(linear.weight.std().item() - 64**-0.5) < 0.01
    assert abs(fanin.transformer.wte.weight.std().item() - 0.02) < 0.002
    assert torch.equal(attn.c_attn.bias, torch.zeros_like(attn.c_attn.bias))
    emb1 = mqar_init.Run("gpt", "emb1", False).build()
    assert 0.9 < emb1.transformer.wpe.weight.std().item() < 1.1 and emb1.lm_head.weight.std().item() < 0.03
