"""The length from which taylor and expressive_sq use their linear form, measured on the machine that runs them.

The direct form costs O(n² d) and the linear form O(n D d) with D ≈ d²/2 features, but where one overtakes the
other depends on the machine (cache sizes, GEMM versus elementwise speed), the dtype and the head size. The
`crossover` option of these backends (model/attention/linear.py) is decided by this rule:

1. an integer set in the config wins;
2. None (the default) runs the direct form below MIN_LENGTH tokens, where no measurement could choose the linear
   one; from there on it is looked up in the cache file `$ATTNLAB_CACHE_DIR/crossover.json` (default directory
   ~/.cache/attnlab) under the key machine | device type (on the CPU with torch's thread count) | dtype | head size
   | heads measured | backend and its tile sizes | torch version | a hash of this package's source (new kernels or
   a new torch make old entries stale);
3. a key not yet there is measured once, like cuDNN's benchmark mode: forward+backward of both forms on the
   layer's heads, at most MEASURED_HEADS of them, at lengths chosen by bisection on a grid of GRID tokens between
   MIN_LENGTH and MAX_LENGTH; the first length where the linear form is at least as fast is stored (MAX_LENGTH when
   none is). Both forms batch the heads into each GEMM, and the direct form's small tiles gain more from it, so
   timing a single head overstates the direct form's cost and puts the crossover too low; a few heads come close
   to a layer of 12 at a third of its measuring time;
4. with `ATTNLAB_CROSSOVER=default` nothing is measured or read: DEFAULT_CROSSOVER (the test suite sets this).

The choice is made once per process and key, in eager code: the measurement runs on its own random tensors (its
own generator, so the run's random stream is untouched), outside the model's autograd graph. Under torch.compile
the graph keeps the number as a constant (no graph break); train.py has it measured before it compiles
(GPT.settle_crossovers), since inside the trace flex_attention (the direct form on CUDA) runs unfused.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from model.compiling import assume_constant_result

DEFAULT_CROSSOVER = 6144  # where the linear form overtook the direct one on the first benchmark CPU (d = 64)
GRID, MIN_LENGTH, MAX_LENGTH = 512, 512, 16384
MEASURED_HEADS = 4  # at most this many heads are timed (the module docstring says why more than one)
MODE_VARIABLE, CACHE_VARIABLE = "ATTNLAB_CROSSOVER", "ATTNLAB_CACHE_DIR"
MODES = ("measure", "default")

_chosen: dict[tuple, int] = {}  # (backend, tiles, d, heads, dtype, device setting) -> crossover, for this process


def mode() -> str:
    """`measure` (the default) or `default`, from $ATTNLAB_CROSSOVER."""
    value = os.environ.get(MODE_VARIABLE, "measure")
    if value not in MODES:
        raise ValueError(f"{MODE_VARIABLE}={value!r} is invalid (allowed: {', '.join(MODES)})")
    return value


def cache_file() -> Path:
    return Path(os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "attnlab") / "crossover.json"


def machine_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model as lscpu names it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine() or "unknown"


@functools.cache
def code_version() -> str:
    """12 hex digits of a hash of the attention package's source files: any change to the forms timed here, or to
    what they call, can move the crossover."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def device_setting(device: torch.device) -> str:
    """The device type, with torch's thread count on the CPU: the two forms need not gain alike from more threads, so
    a crossover measured on 2 threads is not taken for 1."""
    return f"cpu, {torch.get_num_threads()} threads" if device.type == "cpu" else device.type


def cache_key(backend, d: int, heads: int, dtype: torch.dtype, device: torch.device) -> str:
    """`machine | device type (CPU: and threads) | dtype | d=head size | heads=heads timed | backend[tile sizes] |
    torch version | code version`, the key of the cache file."""
    tiles = f"chunk_size={backend.chunk_size},block_size={backend.block_size}"
    dtype_name = str(dtype).removeprefix("torch.")
    return (f"{machine_name(device)} | {device_setting(device)} | {dtype_name} | d={d} | heads={heads} | "
            f"{backend.name}[{tiles}] | torch {torch.__version__} | code {code_version()}")


def bisect_crossover(linear_is_faster: Callable[[int], bool], low: int = MIN_LENGTH, high: int = MAX_LENGTH,
                     grid: int = GRID) -> int:
    """The smallest multiple of `grid` in [low, high] at which `linear_is_faster`, assuming that once the linear form
    is faster it stays faster; `high` when it is not faster anywhere below."""
    lo, hi = low // grid, high // grid  # in grid units; the answer lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if linear_is_faster(mid * grid):
            hi = mid
        else:
            lo = mid + 1
    return lo * grid


def form_timer(backend, d: int, heads: int, dtype: torch.dtype, device: torch.device, reps: int = 2,
               clock: Callable[[], float] = time.perf_counter) -> Callable[[int], bool]:
    """`linear_is_faster(n)`: whether the backend's linear form runs forward+backward on `heads` heads of n tokens
    at least as fast as its direct form (the faster of `reps` runs of each, after one untimed run)."""
    generator = torch.Generator(device=device).manual_seed(0)
    direct, linear = dataclasses.replace(backend, crossover=1 << 62), dataclasses.replace(backend, crossover=1)

    def seconds(form, n: int) -> float:
        q, k, v = (torch.randn(1, heads, n, d, generator=generator, device=device, dtype=dtype).requires_grad_()
                   for _ in range(3))
        times = []
        for _ in range(reps + 1):
            start = clock()
            form.forward(q, k, v).sum().backward()
            if device.type != "cpu":  # GPU kernels run asynchronously
                torch.accelerator.synchronize(device)
            times.append(clock() - start)
        return min(times[1:])

    def linear_is_faster(n: int) -> bool:
        with torch.inference_mode(False), torch.enable_grad():
            return seconds(linear, n) <= seconds(direct, n)

    return linear_is_faster


def read_cache(path: Path) -> dict[str, int]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def write_cache(path: Path, key: str, value: int) -> None:
    """Add `key` to the cache file (written whole to a temporary file, then renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = {**read_cache(path), key: value}
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(entries, handle, indent=1, sort_keys=True)
    os.replace(handle.name, path)


def crossover_length(backend, d: int, heads: int, dtype: torch.dtype, device: torch.device) -> int:
    """The length from which `backend` runs a layer of `heads` heads of size d in its linear form: its configured
    crossover, else the rule in this module's docstring (steps 2-4)."""
    if backend.crossover is not None:
        return backend.crossover
    return measured_crossover(backend, d, min(heads, MEASURED_HEADS), dtype, device)


def leaves_to_measure(backend, n: int) -> bool:
    """Whether `backend` running n tokens would look its crossover up or measure it (step 2-3 of the module
    docstring): a crossover left to the machine, a length that reaches the measured range, measuring mode."""
    return getattr(backend, "crossover", 0) is None and n >= MIN_LENGTH and mode() == "measure"


def uses_linear_form(backend, n: int, d: int, heads: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether `backend` runs n tokens in its linear form (`crossover_length`); below MIN_LENGTH a crossover left to
    measure is not measured: no measurement could choose the linear form there."""
    if backend.crossover is None and n < MIN_LENGTH:
        return False
    return n >= crossover_length(backend, d, heads, dtype, device)


@assume_constant_result  # torch.compile calls it while tracing (eagerly) and keeps the number
def measured_crossover(backend, d: int, heads: int, dtype: torch.dtype, device: torch.device) -> int:
    """The crossover of `backend` for head size d, timed on `heads` heads, by the rule in this module's docstring
    (steps 2-4)."""
    key = (backend.name, backend.chunk_size, backend.block_size, d, heads, dtype, device_setting(device))
    if key not in _chosen:
        _chosen[key] = _cached_or_measured(backend, d, heads, dtype, device)
    return _chosen[key]


def _cached_or_measured(backend, d: int, heads: int, dtype: torch.dtype, device: torch.device) -> int:
    """The crossover for this key: the default in default mode, else the cached value, else measured and cached."""
    if mode() == "default":
        return DEFAULT_CROSSOVER
    path, key = cache_file(), cache_key(backend, d, heads, dtype, device)
    cached = read_cache(path).get(key)
    if isinstance(cached, int) and cached >= 1:
        return cached
    # the measurement takes minutes on a CPU: a run that goes quiet for that long must say why, once
    say(f"note: measuring where {backend.name}'s linear form overtakes its direct form on this machine "
        f"({str(dtype).removeprefix('torch.')}, head size {d}), once: it is cached in {path}; a crossover in "
        f"model.attention_options, or {MODE_VARIABLE}=default, skips this")
    start = time.perf_counter()
    measured = bisect_crossover(form_timer(backend, d, heads, dtype, device))
    write_cache(path, key, measured)
    say(f"note: {backend.name}'s crossover here: {measured} tokens (measured in {time.perf_counter() - start:.0f} s)")
    return measured


def say(message: str) -> None:
    """A note on stderr, printed above a progress bar if one is drawn (train.py's is, when the first step measures)."""
    tqdm.write(message, file=sys.stderr)
