"""Backend sweeps: one training run per (attention backend, seed) with everything else equal.

    <out>/<backend>-seed<k>/      an ordinary run directory: config.yaml, metrics.jsonl, checkpoints/

Run k of backend B is `train.py CONFIG <overrides> model.attention=B train.seed=k train.out_dir=<out>/B-seed<k>
logging.wandb_group=<out's name> logging.wandb_tags=[B] train.resume=auto`: the same data, val windows and token
budget for every run, an interrupted run continues from its last checkpoint, and a finished one (its last
checkpoint, or for a kept run record its last evaluation, is at train.max_steps) is skipped. A run directory is
reused (resumed or skipped) only when the config.yaml it holds has the settings this sweep asks for, bookkeeping
aside (experiments/run_identity.py); any other is refused before the first run starts, so a changed override never
hides behind an old run. The wall time of a run is the `elapsed` of its metrics (seconds spent in training steps,
carried across resumes), so a sweep writes nothing beyond the run directories.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from experiments.run_identity import describe, differences, read_run_config, settings
from model.attention import BACKENDS
from training import checkpoint as ckpt
from training.config import RunConfig, config_to_dict, load_config
from training.metrics import read_metrics
from typedconfig.parsing import ConfigError

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "train.py"
SWEEP_KEYS = ("model.attention", "train.seed", "train.out_dir", "train.resume", "logging.wandb_group",
              "logging.wandb_tags")  # set by the sweep for each run, so not overridable


class RunMismatch(ValueError):
    """A run directory of the sweep that holds a run with other settings than the sweep asks for."""


@dataclass(frozen=True)
class SweepRun:
    overrides: tuple[str, ...]  # everything train.py gets after the config file
    config: RunConfig  # the run's resolved config

    @property
    def run_dir(self) -> Path:
        return Path(self.config.train.out_dir)

    @property
    def name(self) -> str:
        return self.run_dir.name


def parse_backends(text: str) -> list[str]:
    """'softmax,taylor' -> ['softmax', 'taylor'], each a registered backend (model.attention.BACKENDS)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names:
        problem = f"unknown attention backend {unknown[0]!r}" if unknown else "no attention backend"
        raise ConfigError(f"{problem} in --backends (registered: {', '.join(BACKENDS)})")
    if (twice := next((name for name in names if names.count(name) > 1), None)) is not None:
        raise ConfigError(f"--backends names {twice} twice; give each backend once")
    return names


def plan(config: str, backends: list[str], seeds: int, out_dir: Path, overrides: list[str]) -> list[SweepRun]:
    """The runs of the sweep, backend by backend, seeds 0 .. seeds - 1, each config resolved and validated now (so a
    bad override fails before the first run starts)."""
    taken = [key for text in overrides if (key := text.partition("=")[0].strip().removeprefix("--")) in SWEEP_KEYS]
    if taken:
        raise ConfigError(f"the sweep sets {taken[0]} itself; leave it out of the overrides")
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    runs = []
    for backend in backends:
        for seed in range(seeds):
            run_overrides = (
                *overrides, f"model.attention={backend}", f"train.seed={seed}",
                f"train.out_dir={out_dir / f'{backend}-seed{seed}'}", f"logging.wandb_group={out_dir.resolve().name}",
                f"logging.wandb_tags=[{backend}]", "train.resume=auto",
            )
            runs.append(SweepRun(run_overrides, load_config(config, list(run_overrides))))
    return runs


def check_reusable(run: SweepRun) -> None:
    """Raise RunMismatch unless the run directory is new or its config.yaml has the settings of `run`, bookkeeping
    aside (experiments/run_identity.py), so that resuming or skipping it gives the run the sweep asks for."""
    recorded = run.run_dir / "config.yaml"
    if not recorded.is_file():
        return
    try:
        there = settings(read_run_config(recorded))
    except ConfigError as exc:
        raise RunMismatch(f"{recorded} is not a usable run config ({exc}); move {run.run_dir} away") from None
    requested = settings(config_to_dict(run.config))
    differing = differences(there, requested)
    if differing:
        what = describe(differing, there, requested, ("there", "requested"))
        raise RunMismatch(f"{run.run_dir} holds a run with other settings ({what}); use another --out, or move the "
                          "run away to train it anew")


def train_command(config: str, run: SweepRun, nproc_per_node: int) -> list[str]:
    """The command line of one run: train.py directly, or under torchrun with `nproc_per_node` processes."""
    launcher = [sys.executable]
    if nproc_per_node > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}"]
    return [*launcher, str(TRAIN_SCRIPT), config, *run.overrides]


def is_finished(run: SweepRun) -> bool:
    """True when the run directory's last checkpoint is at train.max_steps (or beyond), or, for a run record without
    checkpoints (config.yaml and metrics.jsonl kept after its checkpoints were deleted, e.g. under results/), when
    its metrics hold the evaluation at train.max_steps."""
    latest = ckpt.latest_checkpoint(run.run_dir)
    if latest is not None:
        return ckpt.checkpoint_step(latest) >= run.config.train.max_steps
    return any("val_loss" in line and line["step"] >= run.config.train.max_steps for line in read_metrics(run.run_dir))


PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


def _terminate_with_parent() -> None:
    """In a run's process before it starts (Linux): SIGTERM when the sweep dies, by kill -9 too, so that the run
    checkpoints and stops rather than training on beside the sweep started again."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Launcher:
    """Runs training commands one at a time. Ctrl-C reaches the child through the terminal and SIGTERM is passed
    on to it, so the child checkpoints and exits (train.py's own handling); after that, `stopped` is set and the
    sweep starts nothing more. A sweep that dies without a word (kill -9) takes its child along, on Linux."""

    def __init__(self) -> None:
        self.stopped = False
        self._child: subprocess.Popen | None = None

    def run(self, command: list[str]) -> int:
        """Run `command` to its end; its exit status."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._child = subprocess.Popen(
                command, preexec_fn=_terminate_with_parent if sys.platform.startswith("linux") else None)
            return self._child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._child = None

    def _on_signal(self, signum: int, frame) -> None:
        self.stopped = True
        if signum == signal.SIGTERM and self._child is not None:
            self._child.send_signal(signal.SIGTERM)
