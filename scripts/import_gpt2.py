"""Start a run from GPT-2 weights: load a local transformers GPT2LMHeadModel checkpoint into our model.

    python scripts/import_gpt2.py --from ~/gpt2 --attention softmax --out runs/gpt2-import
    python scripts/import_gpt2.py --from ~/gpt2 --attention taylor --out runs/gpt2-taylor
    python train.py configs/gpt2-125m-taylor.yaml train.out_dir=runs/gpt2-taylor-ft --resume runs/gpt2-taylor

--from is a folder with config.json + weights, as `GPT2LMHeadModel.save_pretrained` or a Hub download writes it
(nothing is downloaded here). A folder of another model_type, or one with a tensor missing, unknown or of another
shape than config.json says, is refused (transformers would fill the gaps randomly). Our module names are GPT-2's,
so the import is a state-dict copy with the Conv1D weights transposed. With `softmax` the model computes exactly
GPT-2's function. With another backend every non-attention weight and the q/k/v/o projections are copied and the
backend's own new parameters (e.g. taylor's temperature) keep their fresh initialisation: a starting point for
fine-tuning, not a converted model.

The output is a run directory with one weights-only checkpoint at step 0 (no optimiser state). `train.py --resume`
on it starts a fresh optimiser, schedule and data order from these weights, with any data and train settings, as
long as the model section of the config matches (the checkpoint's config.json holds that section).
"""

from __future__ import annotations

import contextlib
import json
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import transformers
from safetensors import SafetensorError
from transformers import GPT2Config, GPT2LMHeadModel

from data.config import DataConfig
from fileio.folders import check_out_folder
from model.attention import BACKENDS
from model.config import ModelConfig
from model.gpt import GPT
from training.checkpoint import TrainState, latest_checkpoint, save_checkpoint
from training.config import RunConfig, TrainConfig, config_to_dict
from typedconfig.cli import ArgumentParser, path_argument

CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")


class GPT2ImportError(ValueError):
    """A GPT-2 checkpoint this model cannot represent, or an unusable --from/--out."""


def model_config(hf: GPT2Config, attention: str, attention_options: dict[str, str]) -> ModelConfig:
    """Our config for the GPT-2 architecture `hf` with another attention backend; refuses what we cannot express."""
    unsupported = {
        "activation_function": hf.activation_function not in GELU_TANH,
        "n_inner": hf.n_inner not in (None, 4 * hf.n_embd),
        "scale_attn_weights": not hf.scale_attn_weights,
        "scale_attn_by_inverse_layer_idx": hf.scale_attn_by_inverse_layer_idx,
        "add_cross_attention": hf.add_cross_attention,
    }
    if bad := [name for name, flag in unsupported.items() if flag]:
        raise GPT2ImportError(
            f"the GPT-2 config sets {bad[0]}={getattr(hf, bad[0])!r}, which this model does not implement "
            f"(it is GPT-2: tanh GELU, 4x MLP, 1/sqrt(d) scores)"
        )
    return ModelConfig(
        vocab_size=hf.vocab_size, n_positions=hf.n_positions, n_layer=hf.n_layer, n_head=hf.n_head, n_embd=hf.n_embd,
        attention=attention, attention_options=attention_options, position="learned",
        layer_norm_eps=hf.layer_norm_epsilon, dropout=0.0, bias=True, init_std=hf.initializer_range,
        tie_word_embeddings=hf.tie_word_embeddings,
    )


def converted_state_dict(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """GPT-2's tensors under our names: Conv1D (in, out) weights transposed to Linear (out, in); the causal-mask
    buffers older transformers versions store are dropped."""
    state = {}
    for name, tensor in hf_state.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        state[name] = tensor.t().contiguous() if name.endswith(CONV1D_WEIGHTS) else tensor
    return state


def check_model_type(source: Path) -> None:
    """Refuse a folder of another architecture: GPT2Config.from_pretrained reads any config.json (a Llama one too)
    and GPT2LMHeadModel.from_pretrained fills what it cannot find with random weights."""
    path = source / "config.json"
    if not source.is_dir():
        raise GPT2ImportError(f"{source} is not a folder ({'a file' if source.exists() else 'it does not exist'}); "
                              "pass a folder written by GPT2LMHeadModel.save_pretrained")
    if not path.is_file():
        raise GPT2ImportError(
            f"{source} holds no config.json; pass a folder written by GPT2LMHeadModel.save_pretrained")
    try:
        model_type = json.loads(path.read_text()).get("model_type")
    except (ValueError, AttributeError) as exc:  # not JSON, or JSON that is not an object
        raise GPT2ImportError(f"{path} is not a transformers config ({type(exc).__name__}: {exc})") from None
    if model_type != "gpt2":
        raise GPT2ImportError(f"{path} has model_type {model_type!r}, not 'gpt2': only GPT-2 checkpoints import "
                              "(a folder written by GPT2LMHeadModel.save_pretrained)")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bar or load report from transformers: what matters in the report is checked and refused here in
    one line (`check_loading_info`)."""
    verbosity, bar = transformers.logging.get_verbosity(), transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bar:
            transformers.utils.logging.enable_progress_bar()


def load_gpt2(source: Path) -> GPT2LMHeadModel:
    """The transformers model at `source`, every weight read from the folder (see `check_loading_info`)."""
    try:
        with quiet_transformers():
            # ignore_mismatched_sizes: a tensor of another shape is listed in the info (and refused below) instead
            # of raising a RuntimeError whose details are in the suppressed report
            hf_model, info = GPT2LMHeadModel.from_pretrained(source, dtype=torch.float32, output_loading_info=True,
                                                             ignore_mismatched_sizes=True)
    except (SafetensorError, RuntimeError, pickle.UnpicklingError, EOFError) as exc:  # truncated or garbled files
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise GPT2ImportError(f"{source}: the weights cannot be read ({type(exc).__name__}: {reason})") from None
    check_loading_info(source, info, hf_model.config.tie_word_embeddings)
    return hf_model


def check_loading_info(source: Path, info: dict, tied: bool) -> None:
    """Refuse a checkpoint transformers loaded only in part: it initialises a missing or misshapen tensor randomly
    and only reports it, so the import would be a partly random model. The tied head and the causal-mask buffers
    (attn.bias, attn.masked_bias, which files may hold or not) are not weights of the file."""
    def real(key: str) -> bool:
        return not (key.endswith((".attn.bias", ".attn.masked_bias")) or (tied and key == "lm_head.weight"))

    # mismatched entries are (name, shape in the file, shape the config needs)
    found = {
        "missing": sorted(key for key in info.get("missing_keys", ()) if real(key)),
        "unexpected": sorted(key for key in info.get("unexpected_keys", ()) if real(key)),
        "of another shape": sorted(f"{key} {list(shape)} where config.json needs {list(needed)}"
                                   for key, shape, needed in info.get("mismatched_keys", ())),
    }
    if problems := [f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                    for what, keys in found.items() if keys]:
        raise GPT2ImportError(f"{source} is not a complete GPT-2 checkpoint, tensors {'; '.join(problems)}: "
                              "transformers would fill them randomly; pass an intact save_pretrained folder")
    if errors := info.get("error_msgs"):
        raise GPT2ImportError(f"{source}: the weights do not load ({str(errors[0]).splitlines()[0]})")


def import_gpt2(source: Path, attention: str, attention_options: dict[str, str], seed: int) -> GPT:
    """Our model with the GPT-2 weights at `source` (see the module docstring)."""
    check_model_type(source)
    cfg = model_config(GPT2Config.from_pretrained(source), attention, attention_options)  # checked before the weights
    hf_model = load_gpt2(source)
    torch.manual_seed(seed)  # the backend's new parameters, if any
    model = GPT(cfg)
    missing, unexpected = model.load_state_dict(converted_state_dict(hf_model.state_dict()), strict=False)
    own = {name for name, _ in model.named_parameters() if ".attn.qk_transform." in name}
    if cfg.tie_word_embeddings:  # the head is the token embedding, whether or not the file repeats it
        own.add("lm_head.weight")
    if unexpected or set(missing) - own:
        raise GPT2ImportError(
            f"{source}: weights do not map onto the model (unexpected {sorted(unexpected)[:3]}, "
            f"missing {sorted(set(missing) - own)[:3]})"
        )
    return model.eval()


def check_out(out: Path) -> None:
    """Refuse an --out that is, or lies under, a file, or that already holds a run's checkpoints."""
    check_out_folder(out, "the run")
    if latest_checkpoint(out) is not None:
        raise GPT2ImportError(f"{out} already holds checkpoints; choose another --out")


def write_run(model: GPT, out: Path, source: Path) -> Path:
    """A run directory holding `model` as a weights-only step-0 checkpoint."""
    check_out(out)
    data = DataConfig(block_size=model.config.n_positions)  # a placeholder: a weights-only resume takes the run's data
    cfg = RunConfig(model=model.config, data=data, train=TrainConfig(out_dir=str(out)))
    state = TrainState(kind="weights_only", source=str(source))
    out.mkdir(parents=True, exist_ok=True)  # save_checkpoint takes an existing run folder
    return save_checkpoint(out, model, state, config_to_dict(cfg), keep=1)


def parse_options(items: list[str]) -> dict[str, str]:
    """NAME=VALUE pairs as strings; ModelConfig converts each to the type its backend declares."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise GPT2ImportError(f"--attention-option {item!r}: expected NAME=VALUE, e.g. crossover=4096")
        options[key] = value
    return options


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="import_gpt2", description=__doc__)
    parser.add_argument("--from", dest="source", required=True, type=path_argument, help="local GPT2LMHeadModel folder")
    parser.add_argument("--attention", default="softmax", choices=BACKENDS, help="attention backend of the result")
    parser.add_argument("--attention-option", action="append", default=[], metavar="NAME=VALUE",
                        help="a backend hyperparameter (model.attention_options), repeatable")
    parser.add_argument("--out", required=True, type=path_argument, help="run directory to create")
    parser.add_argument("--seed", type=int, default=1337, help="initialises the backend's new parameters")
    args = parser.parse_args(argv)
    try:
        if args.out.resolve() == args.source.resolve():
            raise GPT2ImportError(f"--out {args.out} is the --from folder: the run's files would mix with the GPT-2 "
                                  "files it reads; choose another --out")
        check_out(args.out)  # before minutes of loading
        model = import_gpt2(args.source, args.attention, parse_options(args.attention_option), args.seed)
        path = write_run(model, args.out, args.source)
    except (ValueError, OSError) as exc:  # GPT2ImportError, ModelConfig's checks (a bad option), unreadable files
        print(f"import_gpt2: {exc}", file=sys.stderr)
        return 2
    print(f"imported {args.source} ({model.num_params():,} parameters, attention {args.attention}) into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
