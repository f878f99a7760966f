"""Every generated results page opens with a heading and one line: what, command, config, machine, date."""

from __future__ import annotations

from pathlib import Path

from fileio.pages import REPO, command_line, opening, this_machine


def test_the_opening_is_a_heading_and_one_line():
    text = opening("Decode benchmark", "latency per token", "python scripts/bench_decode.py", "fp32, 1 thread",
                   "AMD EPYC, 2 logical CPUs", "2026-12-02")
    assert text == ("# Decode benchmark\n\nMeasured: latency per token. Command: `python scripts/bench_decode.py`. "
                    "Config: fp32, 1 thread. Machine: AMD EPYC, 2 logical CPUs. Date: 2026-12-02.\n\n")


def test_the_command_is_shown_as_typed_from_the_repository_root():
    script = REPO / "scripts" / "compare.py"
    assert command_line(script, ["runs/a b", "--out", "x"]) == "python scripts/compare.py 'runs/a b' --out x"
    assert command_line(Path("/elsewhere/tool.py"), []) == "python /elsewhere/tool.py"


def test_the_machine_names_a_cpu_and_counts_its_logical_cpus():
    model, _, count = this_machine().rpartition(", ")
    assert model and count.endswith(" logical CPUs") and int(count.split()[0]) >= 1
