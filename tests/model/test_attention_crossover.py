"""The crossover of taylor and expressive_sq: a configured value wins; otherwise it is measured once per machine,
device, dtype, head size and backend, cached in a file, and skipped (the default) with ATTNLAB_CROSSOVER=default.
Measuring is tested on tiny sizes, with fake timings."""

import itertools
import json
import re

import pytest
import torch

from model.attention import crossover, get_backend


@pytest.fixture
def measuring(monkeypatch, tmp_path):
    """Measuring mode, a cache file under tmp_path, nothing chosen yet in this process."""
    monkeypatch.setenv(crossover.MODE_VARIABLE, "measure")
    monkeypatch.setenv(crossover.CACHE_VARIABLE, str(tmp_path))
    monkeypatch.setattr(crossover, "_chosen", {})
    monkeypatch.setattr(crossover, "MIN_LENGTH", 8)  # the tiny backend's lengths
    return tmp_path / "crossover.json"


@pytest.fixture
def fake_measurement(monkeypatch) -> list[int]:
    """Measuring returns 32 (the tiny backend's switch); the list counts the measurements."""
    runs = []
    monkeypatch.setattr(crossover, "form_timer", lambda *args, **kwargs: None)
    monkeypatch.setattr(crossover, "bisect_crossover", lambda linear_is_faster: runs.append(32) or 32)
    return runs


def tiny(**options):
    return get_backend("taylor", chunk_size=8, block_size=8, **options)


def qkv(t, d=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, t, d, generator=g, dtype=dtype) for _ in range(3)]


def test_bisection_finds_the_first_grid_length_where_the_linear_form_wins():
    asked = []

    def linear_is_faster(n):  # direct n², linear 3000 n: equal at n = 3000
        asked.append(n)
        return 3000 * n <= n * n

    assert crossover.bisect_crossover(linear_is_faster, low=512, high=16384, grid=512) == 3072
    assert len(asked) <= 5 and all(n % 512 == 0 for n in asked)


def test_bisection_stays_within_its_range():
    assert crossover.bisect_crossover(lambda n: True, low=512, high=16384, grid=512) == 512
    assert crossover.bisect_crossover(lambda n: False, low=512, high=16384, grid=512) == 16384


def test_the_timer_runs_both_forms_forward_and_backward_on_its_own_tensors(forms_run):
    ticks = itertools.count()  # every run takes one tick: a tie, which counts for the linear form
    rng = torch.get_rng_state()
    with torch.no_grad():
        linear_is_faster = crossover.form_timer(tiny(), 4, 2, torch.float32, torch.device("cpu"), reps=2,
                                                clock=lambda: float(next(ticks)))
        assert linear_is_faster(24) is True
    assert sorted(forms_run) == ["direct"] * 3 + ["linear"] * 3  # one untimed run and two timed runs each
    assert torch.equal(torch.get_rng_state(), rng)  # the run's random stream is untouched


def test_the_timer_compares_the_two_forms_times(monkeypatch):
    slow = {"linear": 5.0, "direct": 1.0}
    now = [0.0]
    monkeypatch.setattr(crossover, "dataclasses", _Replace(slow, now))
    linear_is_faster = crossover.form_timer(tiny(), 4, 1, torch.float32, torch.device("cpu"), reps=1,
                                            clock=lambda: now[0])
    assert linear_is_faster(16) is False
    slow["linear"] = 0.5
    assert linear_is_faster(16) is True


class _Replace:
    """Stands in for `dataclasses` in the crossover module: replace() gives a form whose run advances a fake clock by
    its time (crossover=1: the linear form's, else the direct form's)."""

    def __init__(self, seconds, now):
        self.seconds, self.now = seconds, now

    def replace(self, backend, crossover):
        outer = self

        class Form:
            def forward(self, q, k, v):
                outer.now[0] += outer.seconds["linear" if crossover == 1 else "direct"]
                return q * k * v

        return Form()


def test_default_mode_measures_nothing_and_reads_no_file(monkeypatch, measuring, fake_measurement):
    monkeypatch.setenv(crossover.MODE_VARIABLE, "default")
    assert crossover.measured_crossover(tiny(), 4, 2, torch.float32, torch.device("cpu")) == crossover.DEFAULT_CROSSOVER
    assert fake_measurement == [] and not measuring.exists()


def test_an_unknown_mode_is_an_error_that_names_the_variable(monkeypatch, measuring):
    monkeypatch.setenv(crossover.MODE_VARIABLE, "sometimes")
    with pytest.raises(ValueError, match="ATTNLAB_CROSSOVER='sometimes' is invalid"):
        crossover.measured_crossover(tiny(), 4, 2, torch.float32, torch.device("cpu"))


def test_a_measurement_says_what_it_does_and_a_cached_value_says_nothing(monkeypatch, measuring, fake_measurement,
                                                                         capsys):
    cpu = torch.device("cpu")
    crossover.measured_crossover(tiny(), 4, 2, torch.float32, cpu)
    notes = capsys.readouterr().err.splitlines()
    assert notes[0] == (f"note: measuring where taylor's linear form overtakes its direct form on this machine "
                        f"(float32, head size 4), once: it is cached in {measuring}; a crossover in "
                        "model.attention_options, or ATTNLAB_CROSSOVER=default, skips this")
    assert notes[1].startswith("note: taylor's crossover here: 32 tokens (measured in ") and len(notes) == 2
    monkeypatch.setattr(crossover, "_chosen", {})  # a new process reads the file
    crossover.measured_crossover(tiny(), 4, 2, torch.float32, cpu)
    assert capsys.readouterr().err == ""


def test_measured_once_then_read_from_the_cache_file(monkeypatch, measuring, fake_measurement):
    cpu = torch.device("cpu")
    assert crossover.measured_crossover(tiny(), 4, 2, torch.float32, cpu) == 32
    assert crossover.measured_crossover(tiny(), 4, 2, torch.float32, cpu) == 32  # this process: no second look
    key = crossover.cache_key(tiny(), 4, 2, torch.float32, cpu)
    assert json.loads(measuring.read_text()) == {key: 32}
    monkeypatch.setattr(crossover, "_chosen", {})  # a new process on the same machine reads the file
    assert crossover.measured_crossover(tiny(), 4, 2, torch.float32, cpu) == 32
    assert fake_measurement == [32]
    crossover.measured_crossover(tiny(), 8, 2, torch.float32, cpu)  # another head size is another key
    crossover.measured_crossover(tiny(), 4, 2, torch.bfloat16, cpu)  # and so is another dtype
    crossover.measured_crossover(tiny(), 4, 3, torch.float32, cpu)  # and another number of heads timed
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        crossover.measured_crossover(tiny(), 4, 2, torch.float32, cpu)  # and another thread count
    finally:
        torch.set_num_threads(threads)
    assert fake_measurement == [32] * 5 and len(json.loads(measuring.read_text())) == 5


def test_the_key_names_machine_device_dtype_head_size_heads_backend_torch_and_code():
    key = crossover.cache_key(tiny(), 64, 4, torch.bfloat16, torch.device("cpu"))
    machine, device, dtype, head, heads, backend, torch_version, code = key.split(" | ")
    assert machine == crossover.machine_name(torch.device("cpu")) and machine
    assert (device, dtype, head, heads, backend) == (f"cpu, {torch.get_num_threads()} threads", "bfloat16", "d=64",
                                                     "heads=4", "taylor[chunk_size=8,block_size=8]")
    assert torch_version == f"torch {torch.__version__}" and re.fullmatch(r"code [0-9a-f]{12}", code)


def test_a_change_to_the_attention_code_makes_cached_crossovers_stale(tmp_path, monkeypatch):
    package = tmp_path / "attention"
    package.mkdir()
    (package / "direct.py").write_text("tiles = 128\n")
    monkeypatch.setattr(crossover, "__file__", str(package / "crossover.py"))
    crossover.code_version.cache_clear()
    before = crossover.code_version()
    (package / "direct.py").write_text("tiles = 64\n")
    crossover.code_version.cache_clear()
    assert crossover.code_version() != before
    crossover.code_version.cache_clear()


def test_an_unreadable_cache_file_is_measured_again(measuring, fake_measurement):
    measuring.write_text("{not json")
    assert crossover.measured_crossover(tiny(), 4, 2, torch.float32, torch.device("cpu")) == 32
    assert fake_measurement == [32] and len(json.loads(measuring.read_text())) == 1


@pytest.mark.parametrize("name", ["taylor", "expressive_sq"])
def test_the_backend_switches_at_the_measured_length(measuring, fake_measurement, forms_run, name):
    backend = get_backend(name, chunk_size=8, block_size=8)
    assert backend.crossover is None
    backend.forward(*qkv(31))
    backend.forward(*qkv(32))
    assert forms_run == ["direct", "linear"] and fake_measurement == [32]


def test_below_the_shortest_measured_length_nothing_is_measured(measuring, fake_measurement, forms_run):
    tiny().forward(*qkv(crossover.MIN_LENGTH - 1))
    assert forms_run == ["direct"] and fake_measurement == [] and not measuring.exists()


def test_the_layers_heads_are_timed_up_to_the_cap(monkeypatch, measuring):
    timed = []
    monkeypatch.setattr(crossover, "form_timer", lambda backend, d, heads, *args: timed.append(heads))
    monkeypatch.setattr(crossover, "bisect_crossover", lambda linear_is_faster: 32)
    for heads in (2, 12):
        g = torch.Generator().manual_seed(0)
        tiny().forward(*(torch.randn(1, heads, 16, 4, generator=g) for _ in range(3)))
    assert timed == [2, crossover.MEASURED_HEADS]


def test_a_configured_crossover_wins(measuring, fake_measurement, forms_run):
    tiny(crossover=1).forward(*qkv(16))
    assert forms_run == ["linear"] and fake_measurement == [] and not measuring.exists()


def test_torch_compile_takes_the_crossover_as_a_constant_without_a_graph_break(measuring, fake_measurement):
    backend = tiny()
    explained = torch._dynamo.explain(backend.forward)(*qkv(24))  # below 32: the direct form, one graph
    torch._dynamo.reset()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    assert fake_measurement == [32]  # measured once, while tracing


@pytest.mark.parametrize("name, measured", [("taylor", 1), ("expressive_sq", 1), ("softmax", 0)])
def test_a_model_settles_its_crossover_eagerly_as_its_forward_will_ask(monkeypatch, measuring, name, measured):
    """train.py asks before it compiles: measured while the model is traced, flex would run unfused. Asked by a
    forward, so with the dtype the layer produces: here q and k in fp32 under bf16 autocast, as CUDA's autocast
    gives taylor's normalised ones."""
    from model.attention.base import QKIdentity
    from model.attention.taylor import TaylorQKTransform
    from model.config import ModelConfig
    from model.gpt import GPT

    asked = []
    monkeypatch.setattr(crossover, "_cached_or_measured", lambda backend, d, heads, dtype, device: asked.append(
        (backend.name, d, heads, dtype, torch.compiler.is_compiling())) or 32)
    for transform in (QKIdentity, TaylorQKTransform):
        original = transform.forward
        monkeypatch.setattr(transform, "forward", lambda self, q, k, f=original: tuple(t.float() for t in f(self, q, k)))
    model = GPT(ModelConfig(n_layer=3, n_head=2, n_embd=8, n_positions=16, vocab_size=10, attention=name,
                            dropout=0.5))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    state = torch.random.get_rng_state()
    model.settle_crossovers(16, autocast)
    assert asked == [(name, 4, 2, torch.float32, False)] * measured  # one key for every layer: measured once
    assert model.training and torch.equal(torch.random.get_rng_state(), state)  # no dropout drawn, mode kept
    with autocast:
        model(torch.zeros(2, 16, dtype=torch.long))
    assert len(asked) == measured  # the forward finds it settled


def test_settling_runs_no_forward_where_nothing_would_be_measured(monkeypatch, measuring):
    """A crossover set in the config, a length below the measured range, or the default mode: the eager forward
    before compiling would measure nothing, and is not run."""
    from model.config import ModelConfig
    from model.gpt import GPT

    forwards = []
    monkeypatch.setattr(crossover, "_cached_or_measured", lambda *args: 32)
    monkeypatch.setattr(GPT, "forward", lambda self, idx, *args, **kwargs: forwards.append(idx.shape[1]))

    def settled(length: int, **options) -> list[int]:
        forwards.clear()
        model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=8, n_positions=16, vocab_size=10, attention="taylor",
                                attention_options=options))
        model.settle_crossovers(length, torch.autocast("cpu", enabled=False))
        return list(forwards)

    assert settled(16) == [16]
    assert settled(16, crossover=12) == [] and settled(4) == []  # set in the config; below MIN_LENGTH (8 here)
    monkeypatch.setenv(crossover.MODE_VARIABLE, "default")
    assert settled(16) == []
