"""Extract the attention kernel's inputs from a checkpoint: per layer and head the queries and keys as the kernel
receives them, and the attention's input hidden states, on the fixed val windows of the run's data.

    python -m evals.extract --ckpt runs/x --layers 0,5,11 --heads all --windows 64 --out extracted/x
    python -m evals.extract --ckpt runs/x/checkpoints/step_001000 --layers all --heads 0,3 --windows 8 --out DIR

The model runs unchanged (float32, no autocast); forward hooks take, for each selected layer L,

    x  = the input of transformer.h[L].attn, i.e. ln_1 of the residual stream, so that q = x W_Q   (T, C)
    q, k = the output of transformer.h[L].attn.qk_transform: after the position encoding (RoPE) and the backend's
         own normalisation (taylor: L2 norm and temperature), before the kernel; no d^-1/4 or 1/sqrt(d) scaling
         (softmax applies 1/sqrt(d) inside its kernel)                                              (T, d) per head

Windows are the run's val windows as training evaluates them (training/run_data.py) with data.eval_windows set to
--windows: evenly spaced windows of the val tokens, or the deterministic MQAR val sequences. The fingerprint in the
manifest is the one train.py logs whenever --windows equals the run's data.eval_windows.

Layout of the output directory (written under a temporary name and renamed when complete):

    DIR/manifest.json            checkpoint, model, backend and options, windows, layers, heads, and one record per
                                 tensor: layer, head (null for x), file, key, shape, row_norm_sq {min, median, max}
    DIR/layer{L:02d}.safetensors  float32 tensors  x: [windows, T, C],  q.{h}, k.{h}: [windows, T, d] per head h

`load_extracted(DIR)` returns the manifest and an `Extraction` that reads Q, K (per head) and X (per layer), stacked
to tall [windows * T, d] matrices or per window.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from data.errors import DataError
from data.loader import eval_batches
from fileio.folders import check_out_folder
from model.attention import AttentionBackend
from model.config import ModelConfig
from model.gpt import GPT
from training import runtime as rt
from training.checkpoint import CheckpointError, checkpoint_step, load_checkpoint_model, replace_dir
from training.config import RunConfig
from training.run_data import RecallData, TextData, open_run_data
from typedconfig.cli import ArgumentParser, with_flag_names

FORMAT = "attnlab-extract/1"
MANIFEST = "manifest.json"
MANIFEST_KEYS = ("checkpoint", "model", "attention", "windows", "layers", "heads", "tensors")  # what readers use


def parse_indices(text: str, count: int, what: str) -> list[int]:
    """'all' -> 0 .. count - 1; '0,5,11' -> [0, 5, 11] (sorted, without repeats), each checked against `count`."""
    if text.strip() == "all":
        return list(range(count))
    indices = set()
    for part in text.split(","):
        try:
            index = int(part)
        except ValueError:
            raise ValueError(f"--{what}s: {part.strip()!r} is not a {what} index (write all or e.g. 0,5,11)") from None
        if not 0 <= index < count:
            raise ValueError(f"--{what}s: {what} {index} is out of range (this model has {what}s 0..{count - 1})")
        indices.add(index)
    return sorted(indices)


def open_val_data(cfg: RunConfig, windows: int, device: torch.device) -> TextData | RecallData:
    """The run's val data as training opens it, with `windows` val windows (text) or sequences (MQAR)."""
    if windows < 1:
        raise ValueError(f"--windows must be >= 1, got {windows}")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, eval_windows=windows))
    try:
        return open_run_data(cfg, rt.Runtime(device=device, dtype=torch.float32))
    except DataError as exc:  # data.eval_windows is --windows here
        raise DataError(with_flag_names(str(exc), {"data.eval_windows": "--windows"})) from None


def val_batches(data: TextData | RecallData, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) of the val windows, in order, `batch_size` at a time: what `data.evaluate` runs the model on."""
    if isinstance(data, RecallData):
        return zip(data.val_x.split(batch_size), data.val_y.split(batch_size))
    return eval_batches(data.val_tokens, data.val_starts, data.block_size, batch_size, data.vocab_size)


@contextlib.contextmanager
def attention_inputs(model: GPT, layers: list[int]) -> Iterator[dict[int, dict[str, torch.Tensor]]]:
    """While active, each forward of `model` leaves in captured[L] the attention input `x` (B, T, C) and the kernel's
    `q`, `k` (B, H, T, d) of every layer L in `layers`."""
    captured: dict[int, dict[str, torch.Tensor]] = {layer: {} for layer in layers}
    handles = []
    for layer in layers:
        attn, store = model.transformer.h[layer].attn, captured[layer]

        def keep_x(module, args, store=store):
            store["x"] = args[0].detach()

        def keep_qk(module, args, output, store=store):
            store["q"], store["k"] = output[0].detach(), output[1].detach()

        handles += [attn.register_forward_pre_hook(keep_x), attn.qk_transform.register_forward_hook(keep_qk)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def extract(ckpt: str | Path, out: str | Path, *, layers: str = "all", heads: str = "all", windows: int = 64,
            device: str = "auto", batch_size: int | None = None, force: bool = False,
            check_planned: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Run the checkpoint on `windows` val windows and write the extraction directory `out` (see the module
    docstring); `layers` and `heads` are 'all' or comma-separated indices. `check_planned` sees the manifest's
    `model` and `windows` shapes once the checkpoint is loaded, before the data and the forward passes, and may
    raise to stop there. Returns `out`."""
    out = Path(out)
    _check_out(out, force)
    model, cfg, ckpt = load_checkpoint_model(ckpt)
    mc = cfg.model
    layer_ids = parse_indices(layers, mc.n_layer, "layer")
    head_ids = parse_indices(heads, mc.n_head, "head")
    if check_planned is not None:
        check_planned({"model": _model_section(mc), "windows": {"count": windows, "block_size": cfg.data.block_size}})
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    device = rt.pick_device(device, option="--device")
    data = open_val_data(cfg, windows, device)
    T = cfg.data.block_size
    shapes = {"x": (windows, T, mc.n_embd)}
    shapes.update({f"{name}.{h}": (windows, T, mc.head_dim) for h in head_ids for name in ("q", "k")})

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        arrays = {layer: _allocate_safetensors(tmp / _layer_file(layer), shapes) for layer in layer_ids}
        norms = {(layer, key): np.empty(shape[:2]) for layer in layer_ids for key, shape in shapes.items()}
        model.to(device)
        start = 0
        with torch.no_grad(), attention_inputs(model, layer_ids) as captured:
            for x, y in val_batches(data, batch_size or cfg.train.eval_batch_size):
                model(x.to(device), y.to(device))  # with targets: the loss in chunks, never (B, T, vocab) logits
                rows = slice(start, start + len(x))
                for layer in layer_ids:
                    got = captured[layer]
                    tensors = {"x": got["x"]}
                    tensors.update({f"{name}.{h}": got[name][:, h] for h in head_ids for name in ("q", "k")})
                    for key, tensor in tensors.items():
                        tensor = tensor.float().cpu()  # (B, T, C) or (B, T, d)
                        arrays[layer][key][rows] = tensor.numpy()
                        norms[layer, key][rows] = tensor.double().square().sum(-1).numpy()
                start += len(x)
        for layer_arrays in arrays.values():
            for array in layer_arrays.values():
                array.flush()
        del arrays
        backend = model.transformer.h[0].attn.backend
        manifest = _manifest(cfg, backend, ckpt, data, device, layer_ids, head_ids, shapes, norms)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclasses.dataclass(frozen=True)
class Extraction:
    """Read access to an extraction directory: Q and K per (layer, head), X per layer, as float32 tensors."""

    root: Path
    manifest: dict[str, Any]

    def q(self, layer: int, head: int, *, stacked: bool = True) -> torch.Tensor:
        """The kernel's queries: (windows * T, d) with `stacked`, else (windows, T, d)."""
        return self._read(layer, f"q.{self._head(head)}", stacked)

    def k(self, layer: int, head: int, *, stacked: bool = True) -> torch.Tensor:
        """The kernel's keys: (windows * T, d) with `stacked`, else (windows, T, d)."""
        return self._read(layer, f"k.{self._head(head)}", stacked)

    def x(self, layer: int, *, stacked: bool = True) -> torch.Tensor:
        """The attention's input hidden states (after ln_1): (windows * T, C) with `stacked`, else (windows, T, C)."""
        return self._read(layer, "x", stacked)

    def _head(self, head: int) -> int:
        if head not in self.manifest["heads"]:
            raise ValueError(f"head {head} was not extracted (heads: {self.manifest['heads']})")
        return head

    def _read(self, layer: int, key: str, stacked: bool) -> torch.Tensor:
        if layer not in self.manifest["layers"]:
            raise ValueError(f"layer {layer} was not extracted (layers: {self.manifest['layers']})")
        with safe_open(self.root / _layer_file(layer), framework="pt") as handle:
            tensor = handle.get_tensor(key)
        return tensor.reshape(-1, tensor.shape[-1]) if stacked else tensor


def load_extracted(path: str | Path) -> tuple[dict[str, Any], Extraction]:
    """The manifest of the extraction directory `path` and an `Extraction` reading its tensors. Raises ValueError,
    naming the file, where the manifest or a tensor file is missing, damaged or disagrees with the other (every
    file's header is read: its keys and shapes, not its data)."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not an extraction directory ({exc}); write one with python -m evals.extract "
                         "--ckpt RUN --out FOLDER") from None
    again = "; extract it again (python -m evals.extract ... --force)"
    if not isinstance(manifest, dict):
        raise ValueError(f"{path / MANIFEST} is not an extraction manifest (a JSON object){again}")
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path / MANIFEST} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ValueError(f"{path / MANIFEST} lacks {', '.join(missing)}{again}")
    entries = manifest["tensors"]
    if not (isinstance(entries, list) and all(isinstance(entry, dict) and {"file", "key", "shape"} <= entry.keys()
                                              and isinstance(entry["file"], str) for entry in entries)):
        raise ValueError(f"{path / MANIFEST}: its tensors are not a list of file, key and shape entries{again}")
    by_file: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_file.setdefault(entry["file"], []).append(entry)
    for file, listed in by_file.items():
        try:
            with safe_open(path / file, framework="pt") as handle:
                shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}
        except (OSError, SafetensorError) as exc:
            raise ValueError(f"{path / file} cannot be read ({str(exc).splitlines()[0]}){again}") from None
        for entry in listed:
            if shapes.get(entry["key"]) != entry["shape"]:
                found = "absent" if entry["key"] not in shapes else f"of shape {shapes[entry['key']]}"
                raise ValueError(f"{path / file}: {entry['key']} is {found}, where {MANIFEST} records shape "
                                 f"{entry['shape']}{again}")
    return manifest, Extraction(path, manifest)


def _layer_file(layer: int) -> str:
    return f"layer{layer:02d}.safetensors"


def _allocate_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.memmap]:
    """A safetensors file of zero float32 tensors with these shapes, and a writable memmap of each: the batches are
    written in place, so an extraction never holds more than one batch in memory."""
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = 4 * math.prod(shape)
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header so the data starts 8-byte aligned
    data_start = 8 + len(blob)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)) + blob)
        handle.truncate(data_start + offset)
    return {
        key: np.memmap(path, dtype=np.float32, mode="r+", offset=data_start + entry["data_offsets"][0],
                       shape=tuple(entry["shape"]))
        for key, entry in header.items()
    }


def _manifest(cfg: RunConfig, backend: AttentionBackend, ckpt: Path, data: TextData | RecallData,
              device: torch.device, layers: list[int], heads: list[int], shapes: dict[str, tuple[int, ...]],
              norms: dict[tuple[int, str], np.ndarray]) -> dict:
    mc = cfg.model
    tensors = []
    for layer in layers:
        for key, shape in shapes.items():
            name, _, head = key.partition(".")
            row_norm_sq = norms[layer, key]
            tensors.append({
                "layer": layer, "head": int(head) if head else None, "name": name, "file": _layer_file(layer),
                "key": key, "shape": list(shape),
                "row_norm_sq": {"min": float(row_norm_sq.min()), "median": float(np.median(row_norm_sq)),
                                "max": float(row_norm_sq.max())},
            })
    return {
        "format": FORMAT,
        "checkpoint": {"path": str(ckpt.resolve()), "step": checkpoint_step(ckpt)},
        "model": _model_section(mc),
        "attention": {"backend": mc.attention, "options": dataclasses.asdict(backend)},
        "windows": {"source": cfg.data.source, "count": shapes["x"][0], "block_size": cfg.data.block_size,
                    "fingerprint": data.fingerprint, "description": data.description,
                    "run_eval_windows": cfg.data.eval_windows},
        "layers": layers,
        "heads": heads,
        "dtype": "float32",
        "device": str(device),
        "tensors": tensors,
    }


def _model_section(mc: ModelConfig) -> dict[str, Any]:
    """The manifest's `model`: the shapes a reader of the extraction needs."""
    return {"n_layer": mc.n_layer, "n_head": mc.n_head, "n_embd": mc.n_embd, "head_dim": mc.head_dim,
            "position": mc.position, "rope_base": mc.rope_base if mc.position == "rope" else None}


def _check_out(out: Path, force: bool) -> None:
    check_out_folder(out, "the extraction")  # a file, under a file, or unwritable
    if not out.exists():
        return
    if not any(out.iterdir()):
        return
    if not (out / MANIFEST).is_file():
        raise ValueError(f"--out {out} is not empty and holds no extraction; choose another directory")
    if not force:
        raise ValueError(f"--out {out} already holds an extraction; pass --force to replace it")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m evals.extract", description=__doc__)
    parser.add_argument("--ckpt", required=True, help="run directory, its checkpoints/ folder, or a checkpoint dir")
    parser.add_argument("--layers", default="all", help="all, or comma-separated layer indices")
    parser.add_argument("--heads", default="all", help="all, or comma-separated head indices")
    parser.add_argument("--windows", type=int, default=64, help="val windows (MQAR: val sequences)")
    parser.add_argument("--out", required=True, help="output directory (new, empty, or an extraction with --force)")
    parser.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per forward (default: the run's "
                        "train.eval_batch_size)")
    parser.add_argument("--force", action="store_true", help="replace an existing extraction in --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = extract(args.ckpt, args.out, layers=args.layers, heads=args.heads, windows=args.windows,
                      device=args.device, batch_size=args.batch_size, force=args.force)
        manifest, _ = load_extracted(out)  # what the summary reports is what a reader of the folder gets
    except (ValueError, CheckpointError) as exc:  # DataError and ConfigError are ValueErrors
        print(f"extract: {exc}", file=sys.stderr)
        return 2
    w = manifest["windows"]
    print(f"extract: wrote {out}: layers {manifest['layers']}, heads {manifest['heads']}, {w['count']} windows of "
          f"{w['block_size']} tokens ({manifest['attention']['backend']}, step {manifest['checkpoint']['step']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
