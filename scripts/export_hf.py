"""Export a checkpoint as a self-contained transformers folder (weights, config, tokenizer and modelling code).

    python scripts/export_hf.py --ckpt runs/shakespeare-cpu --out exports/shakespeare-cpu
    # then, anywhere (this repository need not be installed):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("exports/shakespeare-cpu", trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained("exports/shakespeare-cpu", trust_remote_code=True)

The modelling code travels in the folder, as on the Hub: model/modeling_attnlab.py and every module of our
packages it imports (the model package and typedconfig's parsing, which the model config checks its options with),
flattened into one directory with their `from model.x.y import` lines rewritten to relative imports (`from .x_y
import`; `from typedconfig.parsing import` to `from .typedconfig_parsing import`), which is what transformers'
remote-code loader resolves. config.json maps
AutoConfig / AutoModelForCausalLM to them (`auto_map`). The run's tokenizer goes in too, with model_max_length the
learned positions (no limit for rope / none), unless the model cannot use it (MQAR's synthetic ids, or a vocabulary
smaller than the tokenizer's, as of a GPT-2 imported with one of its own): then the folder holds no tokenizer and
bos/eos are None. The folder is written under a temporary name and renamed,
and an existing --out is replaced only with --force, never when it is the run being exported, a checkpoint of it, or a
folder holding the run or the current directory.
"""

from __future__ import annotations

import ast
import os
import shutil
import sys
from pathlib import Path

from transformers import PreTrainedTokenizerFast
from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

from data.config import MQAR
from data.tokenizer import TextTokenizer, load_tokenizer
from fileio.folders import check_out_folder
from model.config import ModelConfig
from model.modeling_attnlab import AttnlabForCausalLM
from training.checkpoint import CHECKPOINTS, checkpoint_step, in_run, load_checkpoint_model, replace_dir
from training.config import RunConfig
from typedconfig.cli import ArgumentParser, path_argument

PACKAGES = ("model", "typedconfig")  # ours, imported by the modelling code; the rest is the standard library and torch
ENTRY_MODULES = ("model.configuration_attnlab", "model.modeling_attnlab")


def module_file(module: str, root: Path) -> Path:
    """The source file of a module of the package under `root` (a package's __init__.py)."""
    path = root.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def flat_name(module: str) -> str:
    """model.attention.base -> attention_base; model.gpt -> gpt; typedconfig.parsing -> typedconfig_parsing."""
    parts = module.split(".")
    return "_".join(parts[1:] if parts[0] == "model" else parts)


def package_imports(source: str) -> list[str]:
    """The modules of our packages that `source` imports (`from model.x import ...`)."""
    tree = ast.parse(source)
    return [
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in PACKAGES
    ]


def module_closure(entries: tuple[str, ...], root: Path) -> list[str]:
    """`entries` and every package module they import, directly or not."""
    seen: list[str] = []
    pending = list(entries)
    while pending:
        module = pending.pop()
        if module not in seen:
            seen.append(module)
            pending += package_imports(module_file(module, root).read_text())
    return sorted(seen)


def flatten_source(source: str) -> str:
    """Rewrite absolute imports of our packages into relative imports of the flattened modules."""
    lines = []
    for line in source.splitlines(keepends=True):
        stripped = line.lstrip()
        if stripped.startswith(tuple(f"from {package}{end}" for package in PACKAGES for end in ". ")):
            module, rest = stripped[len("from "):].split(" ", 1)
            line = f"{line[: len(line) - len(stripped)]}from .{flat_name(module)} {rest}"
        lines.append(line)
    return "".join(lines)


def write_modelling_code(out: Path, root: Path) -> list[str]:
    """Copy the flattened modelling code into `out`; the names of the files written."""
    names = []
    for module in module_closure(ENTRY_MODULES, root):
        name = f"{flat_name(module)}.py"
        (out / name).write_text(flatten_source(module_file(module, root).read_text()))
        names.append(name)
    return names


def transformers_tokenizer(tokenizer: TextTokenizer, model: ModelConfig) -> PreTrainedTokenizerFast:
    """The tokenizer as transformers saves it. Its model_max_length, where `truncation=True` cuts, is the learned
    position table's size; rope and no positions have no such limit (a constant-memory state decodes on without
    end, a KV cache as far as memory goes), so it is transformers' VERY_LARGE_INTEGER, its own "no limit"."""
    end = tokenizer.backend.id_to_token(tokenizer.eot_id)
    longest = model.n_positions if model.position == "learned" else VERY_LARGE_INTEGER
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend, bos_token=end, eos_token=end, unk_token=end,
                                   model_max_length=longest)


def text_tokenizer(cfg: RunConfig) -> tuple[TextTokenizer | None, str]:
    """The tokenizer to export with the model, or None when there is none it can use; and what the summary says of
    it. MQAR's tokens are synthetic ids; a model whose vocabulary is smaller than its run's tokenizer (a GPT-2
    imported with a vocabulary of its own) cannot take that tokenizer's ids, whose bos/eos included."""
    if cfg.data.source == MQAR:
        return None, "no tokenizer (mqar)"
    name, vocab_size = cfg.data.tokenizer, cfg.model.vocab_size
    tokenizer = load_tokenizer(name)
    if tokenizer.vocab_size > vocab_size:
        return None, (f"no tokenizer (the model's vocabulary of {vocab_size} tokens is smaller than tokenizer "
                      f"{name}'s {tokenizer.vocab_size}: copy in the tokenizer it was trained with)")
    return tokenizer, f"tokenizer {name}"


def run_of(ckpt_path: Path) -> Path:
    """The run directory a --ckpt path belongs to (a run, its checkpoints/ folder or a checkpoint in it), or the
    checkpoint directory itself when it is not in a run's checkpoints/ folder."""
    if ckpt_path.name == CHECKPOINTS:
        return ckpt_path.parent
    if ckpt_path.parent.name == CHECKPOINTS:
        return ckpt_path.parent.parent
    return ckpt_path


def check_out(ckpt_path: Path, out: Path, force: bool) -> None:
    """Refuse an --out that --force would take data with: replacing a folder deletes it, and with it the run being
    exported if it lies inside, or the shell's working directory. `out` and `ckpt_path` are resolved."""
    run = run_of(ckpt_path)
    if run.is_relative_to(out) or in_run(out, run):  # the run or an ancestor; the run or one of its checkpoints
        raise FileExistsError(f"--out {out} holds or lies in the run being exported ({run}); name a folder outside it")
    if Path.cwd().resolve().is_relative_to(out):
        raise FileExistsError(f"--out {out} is the current directory or holds it; name a folder to create")
    check_out_folder(out, "the export")
    if out.exists() and not force and (entries := sorted(entry.name for entry in out.iterdir())):
        listed = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise FileExistsError(f"--out {out} holds {len(entries)} entries ({listed}); pass --force to replace it "
                              "(its contents are deleted) or name another folder")


def export(ckpt_path: str, out: Path, force: bool) -> str:
    """Write the export folder; a one-line summary."""
    out = out.resolve()  # `.` or `..` have no name to build the temporary folder's name from
    check_out(Path(ckpt_path).resolve(), out, force)
    gpt, cfg, ckpt = load_checkpoint_model(ckpt_path)
    tokenizer, what = text_tokenizer(cfg)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        hf = AttnlabForCausalLM.from_gpt(gpt)
        if tokenizer is None:  # no end-of-text either: generation stops at max_new_tokens
            hf.config.bos_token_id = hf.config.eos_token_id = None
        else:
            hf.config.bos_token_id = hf.config.eos_token_id = tokenizer.eot_id
            transformers_tokenizer(tokenizer, cfg.model).save_pretrained(tmp)
        hf.config.auto_map = {
            "AutoConfig": "configuration_attnlab.AttnlabConfig",
            "AutoModelForCausalLM": "modeling_attnlab.AttnlabForCausalLM",
        }
        hf.generation_config.bos_token_id = hf.generation_config.eos_token_id = hf.config.eos_token_id
        hf.save_pretrained(tmp)
        files = write_modelling_code(tmp, Path(__file__).resolve().parent.parent)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # what is left of a failed export
    return (f"exported {ckpt} (step {checkpoint_step(ckpt)}, attention {cfg.model.attention}) to {out}: "
            f"weights, config, {what}, {len(files)} code files")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="export_hf", description=__doc__)
    parser.add_argument("--ckpt", required=True, help="run directory, its checkpoints/ folder, or a checkpoint dir")
    parser.add_argument("--out", required=True, type=path_argument, help="folder to write (loads with from_pretrained)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    try:
        print(export(args.ckpt, args.out, args.force))
    except (ValueError, OSError) as exc:  # CheckpointError, FileExistsError, DataError: each names the path
        print(f"export_hf: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
