"""lm-evaluation-harness (the optional `eval` extra: pip install -e '.[eval]') runs on exports of tiny trained
models at batch size 4 as at batch size 1: a multiple-choice task scored by loglikelihood and a `generate_until`
task, both written from Shakespeare val text into a local folder (no hub download), through the `lm_eval` command
the README gives. At batch size 4 lm-eval sends generate() left-padded prompts of different lengths."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the optional eval extra: pip install -e '.[eval]'")
pytest.importorskip("accelerate", reason="lm-eval's hf model needs accelerate (the eval extra)")

from data.config import DataConfig  # noqa: E402
from data.prepare import load_prepared  # noqa: E402
from data.tokenizer import load_tokenizer  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
DOCS = 16

# A model trained for a few steps on Shakespeare predicts a newline after every prompt and then repeats one token.
# So the generate_until task suppresses the GPT-2 ids of "\n", "\n\n" and <|endoftext|> (the padding, which
# no_repeat_ngram_size would ban in padded rows only) and bans every token already in the text: each generation
# runs its 12 decode steps after the padded prefill, and what it picks depends on the prompt.
TASKS = {
    "shakespeare_mc": """\
output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
""",
    "shakespeare_gen": """\
output_type: generate_until
doc_to_text: "{{context}}"
doc_to_target: "{{continuation}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 12
  do_sample: false
  suppress_tokens: [198, 628, 50256]
  no_repeat_ngram_size: 1
metric_list:
  - metric: exact_match
""",
}


def val_lines(prepared_dir: str) -> list[str]:
    """Lines of verse (at least 7 words) from the val split of the prepared Shakespeare corpus."""
    _, _, val = load_prepared(DataConfig(prepared_dir=prepared_dir))
    text = load_tokenizer("gpt2").decode(val[2000:8000].tolist())
    return [line.strip() for line in text.splitlines() if len(line.split()) >= 7 and not line.startswith("[")]


def write_tasks(folder: Path, lines: list[str]) -> None:
    """One task YAML and its JSON-lines data per task: prompts of 2 to 6 words (so of different token lengths)
    and the rest of their line; the choices of the multiple-choice task are the rests of four lines."""
    docs = []
    for i, line in enumerate(lines[:DOCS]):
        words = line.split()
        cut = 2 + i % 5
        docs.append({"context": " ".join(words[:cut]), "continuation": " " + " ".join(words[cut:])})
    choices = [
        {"context": doc["context"], "label": 0,
         "choices": [doc["continuation"]] + [docs[(i + s) % len(docs)]["continuation"] for s in (1, 2, 3)]}
        for i, doc in enumerate(docs)
    ]
    folder.mkdir()
    for name, rows in (("shakespeare_mc", choices), ("shakespeare_gen", docs)):
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        header = (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
                  f"  cache_dir: {folder / 'datasets'}\ntest_split: test\ntarget_delimiter: \"\"\n")
        (folder / f"{name}.yaml").write_text(header + TASKS[name])


@pytest.fixture(scope="module")
def tasks(prepared_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lm_eval") / "tasks"
    write_tasks(folder, val_lines(prepared_dir))
    return folder


def trained_export(prepared_dir: str, folder: Path, *options: str) -> Path:
    """A tiny model trained for 20 steps (configs/tiny.yaml) and exported by scripts/export_hf.py."""
    run, export = folder / "run", folder / "export"
    for command in (
        [str(ROOT / "train.py"), str(ROOT / "configs" / "tiny.yaml"), f"train.out_dir={run}",
         f"data.prepared_dir={prepared_dir}", "train.sample_tokens=0", *options],
        [str(ROOT / "scripts" / "export_hf.py"), "--ckpt", str(run), "--out", str(export)],
    ):
        subprocess.run([sys.executable, *command], check=True, capture_output=True, cwd=ROOT)
    return export


def lm_eval(export: Path, tasks: Path, batch_size: int, out: Path) -> tuple[dict, dict]:
    """Run the `lm_eval` command on the export; (the scores, the responses by task and doc_id)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_MODULES_CACHE": str(out / "modules")}
    command = [str(Path(sys.executable).with_name("lm_eval")), "--model", "hf",
               "--model_args", f"pretrained={export},trust_remote_code=True",
               "--tasks", "shakespeare_mc,shakespeare_gen", "--include_path", str(tasks),
               "--batch_size", str(batch_size), "--device", "cpu", "--output_path", str(out), "--log_samples"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=out.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    # the table it prints names its columns (a pytablewriter older than lm_eval expects prints A | B | C ...)
    assert re.search(r"\|\s*Tasks\s*\|Version\|Filter\|n-shot\|", result.stdout), result.stdout[-2000:]
    (scores,) = out.rglob("results_*.json")
    responses = {}
    for task in TASKS:
        (samples,) = out.rglob(f"samples_{task}_*.jsonl")
        rows = [json.loads(line) for line in samples.read_text().splitlines()]
        responses[task] = {row["doc_id"]: row["filtered_resps"] for row in rows}
    return json.loads(scores.read_text())["results"], responses


@pytest.mark.parametrize("backend, position", [("softmax", "learned"), ("logexp", "rope")])
def test_lm_eval_scores_agree_at_batch_size_1_and_4(backend, position, tasks, prepared_dir, tmp_path):
    export = trained_export(prepared_dir, tmp_path, f"model.attention={backend}", f"model.position={position}")
    (scores_1, responses_1), (scores_4, responses_4) = (
        lm_eval(export, tasks, batch_size, tmp_path / f"batch_{batch_size}") for batch_size in (1, 4)
    )
    assert scores_4["shakespeare_mc"]["acc,none"] == scores_1["shakespeare_mc"]["acc,none"]
    assert scores_4["shakespeare_gen"]["exact_match,none"] == scores_1["shakespeare_gen"]["exact_match,none"]
    for doc in range(DOCS):  # each choice's loglikelihood, and each generated text
        for (ll_1, _), (ll_4, _) in zip(responses_1["shakespeare_mc"][doc], responses_4["shakespeare_mc"][doc]):
            assert float(ll_4) == pytest.approx(float(ll_1), abs=1e-4)
    assert responses_4["shakespeare_gen"] == responses_1["shakespeare_gen"]
    generated = [texts[0] for texts in responses_4["shakespeare_gen"].values()]
    assert all(generated) and len(set(generated)) > 1  # continuations that depend on their prompt
