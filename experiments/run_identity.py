"""What makes two runs the same experiment: their resolved configs, less the keys that only say where a run was
kept and how it was watched (bookkeeping). A sweep reuses a run directory only when these settings are the ones it
asks for; compare groups runs whose settings are equal apart from the seed.

Bookkeeping keys (no number that compare reports depends on them):

    train.out_dir, data.prepared_dir                       where the run and its prepared data live
    train.resume                                           how the run was started or continued
    train.log_interval, train.ckpt_interval, train.keep_checkpoints   how often it logs and checkpoints
    train.sample_tokens, train.sample_prompt               the text sample printed after training
    logging.*                                              wandb mirroring, run name, progress bar

Everything else counts, train.threads, train.device and train.eval_interval included: threads and device decide
the wall time and tokens/s, the evaluation steps decide the best val loss and the curves. data.mqar.* counts only
when data.source is mqar; other sources never read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data.config import MQAR
from training.config import config_to_dict, load_config

SEED = "train.seed"
BOOKKEEPING = ("train.out_dir", "data.prepared_dir", "train.resume", "train.log_interval", "train.ckpt_interval",
               "train.keep_checkpoints", "train.sample_tokens", "train.sample_prompt", "logging.")  # "." ends a prefix
_ABSENT = object()  # the value of a key that one config lacks


def read_run_config(path: Path) -> dict[str, Any]:
    """The resolved config a run's config.yaml records, read as a config file so that keys added to the config since
    get their defaults (ConfigError if it no longer loads)."""
    return config_to_dict(load_config(path))


def settings(config: dict[str, Any]) -> dict[str, Any]:
    """The flat settings of a resolved config ({'model.attention': 'taylor', 'optim.lr': 0.002, ...}), bookkeeping
    and unused MQAR knobs left out."""
    flat = _flat(config, "")
    unused = ("data.mqar.",) if flat.get("data.source") != MQAR else ()
    return {key: value for key, value in flat.items() if not _matches(key, BOOKKEEPING + unused)}


def differences(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two settings dicts (a key only one has counts), in first's order."""
    keys = [*first, *(key for key in second if key not in first)]
    return [key for key in keys if first.get(key, _ABSENT) != second.get(key, _ABSENT)]


def describe(keys: list[str], first: dict[str, Any], second: dict[str, Any], where: tuple[str, str]) -> str:
    """'optim.lr: 0.002 there, 0.001 requested; ...': each key with its value in `first` and in `second`, followed
    by the words of `where` (here ('there', 'requested'))."""
    return "; ".join(f"{key}: {_shown(first, key)} {where[0]}, {_shown(second, key)} {where[1]}" for key in keys)


def _shown(settings: dict[str, Any], key: str) -> str:
    return repr(settings[key]) if key in settings else "absent"


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(key.startswith(pattern) if pattern.endswith(".") else key == pattern for pattern in patterns)


def _flat(mapping: dict[str, Any], prefix: str) -> dict[str, Any]:
    """{'data': {'mqar': {'num_pairs': 8}}} -> {'data.mqar.num_pairs': 8}."""
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
