"""Which weight init and LM-head tying let a small model learn multi-query associative recall (MQAR), and why GPT-2's
init stalls there: our `GPT` and an independent minimal decoder, each trained in a bare loop.

    python scripts/mqar_init.py                                   # every run of results/mqar_init.md
    python scripts/mqar_init.py --rows gpt-std0.1-tied,ref-default-untied --steps 300

Every run trains a 2-layer, 64-wide, 2-head model with learned positions on `data.mqar` batches (vocabulary 64, 4
pairs and 4 queries in 32 tokens, 64 sequences a step, seed 0 unless the run says otherwise) with AdamW (lr 1e-3
constant unless the run says otherwise, betas 0.9/0.999, weight decay 0), no warm-up and no clipping: train.py's
warm-up, clipping and schedule are left out so that only the init differs between runs. The loss is the
cross-entropy on the answers; one CPU thread. Every --eval-every steps the answer accuracy on the 512 fixed val
sequences is measured, and a run stops at the first that reaches 0.95 (or after --steps); a run reports that step
("–" if none) and its accuracy where it stopped.

The inits (`Init`): `model.init_std` (ModelConfig: normal, residual projections at init_std / √(2 n_layer)) and
`model.tie_word_embeddings` express the std-only ones; ModelConfig has no option for the others, so this script
re-initialises our GPT's weights after construction: `default` calls every module's reset_parameters (PyTorch's
own init: Linear U(±1/√fan_in) with biases alike, Embedding N(0, 1), LayerNorm 1/0), `fanin` draws Linear weights
from N(0, 1/fan_in) (biases stay 0), `emb1` draws the token and position embeddings from N(0, 1). A tied head is
the token embedding, so with `default` it keeps the embedding's N(0, 1).

The independent model (`Reference`) is written here from torch primitives alone, so that the stall cannot come from
a quirk of model/: PyTorch's default init, untied head, exact GELU, attention written out.

<out>.md gets the tables and <out>.csv one line per run with its accuracy at every evaluation; results/mqar_init.md
is these tables with the reading of them written around them, so the default --out (runs/mqar_init) leaves it alone.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from data.config import MQARConfig
from data.mqar import MQARBatches, answer_accuracy, elimination_accuracy, val_set
from fileio.folders import OutFolderError, check_out_folder
from fileio.pages import (check_replace, command_line, opening, page_file, replacing, this_machine, today,
                          write_page_files)
from fileio.tables import markdown_table
from model.config import ModelConfig
from model.gpt import GPT
from typedconfig.cli import path_argument

TASK = MQARConfig(vocab_size=64, num_pairs=4, num_queries=4)
LENGTH, BATCH, VAL_SEQUENCES = 32, 64, 512
LAYERS, HEADS, WIDTH = 2, 2, 64
TARGET = 0.95  # accuracy that counts as learnt: well above the no-recall 0.521, short of the last stragglers
BETAS = (0.9, 0.999)  # torch's AdamW defaults, not train.py's 0.95: no schedule or clipping to lean on either


# ---- the independent model ----------------------------------------------------------------------------------------

class RefAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # each (B, h, T, d)
        scores = q @ k.transpose(-2, -1) / math.sqrt(C // self.heads)
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        y = scores.masked_fill(future, float("-inf")).softmax(dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class RefBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.attn, self.ln2 = nn.LayerNorm(width), RefAttention(width, heads), nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Reference(nn.Module):
    """A pre-LayerNorm decoder with learned positions; forward has GPT's signature, so one loop trains both."""

    def __init__(self, vocab: int, length: int, tied: bool) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, WIDTH), nn.Embedding(length, WIDTH)
        self.blocks = nn.Sequential(*(RefBlock(WIDTH, HEADS) for _ in range(LAYERS)))
        self.norm, self.head = nn.LayerNorm(WIDTH), nn.Linear(WIDTH, vocab, bias=False)
        if tied:
            self.head.weight = self.tok.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        logits = self.head(self.norm(self.blocks(x)))
        if targets is None:
            return logits, None
        return None, F.cross_entropy(logits.flatten(0, 1), targets.flatten())  # -100 (not an answer) is ignored


# ---- inits --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Init:
    """How the weights start: normal with `std` (GPT's own init at init_std), then the overrides that are set."""

    label: str
    std: float = 0.02
    pytorch_default: bool = False  # every module's reset_parameters instead
    fan_in_linear: bool = False  # Linear weights N(0, 1/fan_in), residual projections and an untied head included
    unit_embeddings: bool = False  # token and position embeddings N(0, 1)


INITS = {
    "default": Init("PyTorch default (Linear U(±1/√fan_in), Embedding N(0, 1))", pytorch_default=True),
    "fanin-emb1": Init("Linear normal 1/√fan_in, Embedding N(0, 1)", fan_in_linear=True, unit_embeddings=True),
    "fanin": Init("Linear normal 1/√fan_in, Embedding 0.02", fan_in_linear=True),
    "emb1": Init("Linear 0.02, Embedding N(0, 1)", unit_embeddings=True),
}


def init_of(name: str) -> Init:
    """INITS[name], or `stdX`: normal with std X (for our GPT: model.init_std = X)."""
    if name in INITS:
        return INITS[name]
    if name.startswith("std"):
        std = float(name[3:])
        return Init(f"normal, std {std:g}" + (" (GPT-2)" if std == 0.02 else ""), std=std)
    raise ValueError(f"unknown init {name!r} (allowed: {', '.join(INITS)}, stdX)")


def reinitialise(model: nn.Module, init: Init) -> None:
    """Apply what `init` sets beyond a plain std, to our GPT or the reference model (whichever `model` is)."""
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    shared = {id(m.weight) for m in embeddings}
    if init.pytorch_default:
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)):
                module.reset_parameters()
        for module in embeddings:  # a tied head was reset as a Linear after the embedding; it is the embedding
            module.reset_parameters()
    for module in model.modules():
        if init.fan_in_linear and isinstance(module, nn.Linear) and id(module.weight) not in shared:
            nn.init.normal_(module.weight, std=module.in_features**-0.5)
    if init.unit_embeddings:
        for module in embeddings:
            nn.init.normal_(module.weight, std=1.0)


def reference_at_std(model: Reference, std: float) -> None:
    """Every Linear and Embedding weight N(0, std), biases 0 (GPT-2's init without its residual scaling), written out
    rather than taken from model/, as the rest of the independent model is."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


# ---- runs ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    model: str  # "gpt" (model/) or "ref" (the independent model)
    init: str  # a name for init_of
    tied: bool
    backend: str = "softmax"
    seed: int = 0
    lr: float = 1e-3

    @property
    def id(self) -> str:
        parts = [self.model, self.init, "tied" if self.tied else "untied"]
        parts += [self.backend] if self.backend != "softmax" else []
        parts += [f"seed{self.seed}"] if self.seed else []
        parts += [f"lr{self.lr:g}"] if self.lr != 1e-3 else []
        return "-".join(parts)

    def build(self) -> nn.Module:
        torch.manual_seed(self.seed)
        init = init_of(self.init)
        if self.model == "ref":
            model = Reference(TASK.vocab_size, LENGTH, self.tied)
            if not init.pytorch_default:
                reference_at_std(model, init.std)
            return model
        model = GPT(ModelConfig(vocab_size=TASK.vocab_size, n_positions=LENGTH, n_layer=LAYERS, n_head=HEADS,
                                n_embd=WIDTH, attention=self.backend, position="learned", init_std=init.std,
                                tie_word_embeddings=self.tied))
        reinitialise(model, init)
        return model


@dataclass
class Outcome:
    reached: int | None  # first evaluated step at TARGET or above
    accuracies: dict[int, float]  # step -> val answer accuracy
    seconds: float

    @property
    def last(self) -> float:
        return self.accuracies[max(self.accuracies)]

    @property
    def step(self) -> str:
        return "–" if self.reached is None else f"{self.reached:,}"

    def cell(self) -> str:
        """'300 (1.000)', '– (0.521)': the step, then the accuracy where the run stopped."""
        return f"{self.step} ({self.last:.3f})"


def train(run: Run, steps: int, eval_every: int, val: tuple[torch.Tensor, torch.Tensor]) -> Outcome:
    start = time.perf_counter()
    model = run.build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.lr, betas=BETAS, weight_decay=0.0)
    batches = MQARBatches(TASK, LENGTH, BATCH, run.seed)
    accuracies: dict[int, float] = {}
    for step in range(1, steps + 1):
        model.train()
        _, loss = model(*batches.batch(step - 1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every and step != steps:
            continue
        model.eval()
        with torch.no_grad():
            correct, total = answer_accuracy(model(val[0])[0], val[1])
        accuracies[step] = int(correct) / int(total)
        if accuracies[step] >= TARGET:
            return Outcome(step, accuracies, time.perf_counter() - start)
    return Outcome(None, accuracies, time.perf_counter() - start)


# ---- the page's tables --------------------------------------------------------------------------------------------

STD_GRID = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
BACKEND_NAMES = ("softmax", "expressive", "expressive_sq", "logexp", "taylor")
STALL = [Run("ref", "default", False), Run("ref", "std0.02", False), Run("ref", "default", True),
         Run("gpt", "std0.02", True), Run("gpt", "std0.02", False), Run("gpt", "default", False),
         Run("gpt", "default", True), Run("gpt", "fanin-emb1", False), Run("gpt", "fanin", False),
         Run("gpt", "emb1", False)]
LRS = [Run("gpt", "std0.02", True, lr=lr) for lr in (1e-3, 3e-3, 1e-2)]
STDS = [Run("gpt", f"std{std:g}", tied) for std in STD_GRID for tied in (False, True)]
SEED_VARIANTS = [("std0.1", False), ("std0.1", True), ("std0.05", False), ("default", False), ("std0.02", True)]
SEEDS = [Run("gpt", init, tied, seed=seed) for init, tied in SEED_VARIANTS for seed in (0, 1, 2)]
BACKEND_COLUMNS = [("std0.02", True), ("std0.1", True), ("std0.1", False)]
SECOND_SEED = {("logexp", "std0.1", False), ("taylor", "std0.1", True), ("taylor", "std0.1", False)}
BACKEND_RUNS = [Run("gpt", init, tied, backend, seed) for backend in BACKEND_NAMES for init, tied in BACKEND_COLUMNS
                for seed in ((0, 1) if (backend, init, tied) in SECOND_SEED else (0,))]
ALL_RUNS = list(dict.fromkeys(STALL + LRS + STDS + SEEDS + BACKEND_RUNS))  # each run once, in page order


def head(tied: bool) -> str:
    return "tied" if tied else "untied"


def page_tables(done: dict[Run, Outcome]) -> str:
    """The tables, each with the rows whose runs are in `done` (a table with none is left out)."""
    sections = []

    def section(caption: str, header: list[str], rows: list[list[str]], right: set[str]) -> None:
        if rows:
            sections.append(f"{caption}\n\n{markdown_table(header, rows, right)}\n")

    model_names = {"ref": "independent model", "gpt": "our GPT"}
    section(f"**Inits and heads** (softmax; the step at which accuracy first reaches {TARGET}, \"–\" for never, and "
            f"the accuracy where the run stopped):", ["model", "init", "head", f"reaches {TARGET} at step",
                                                      "last accuracy"],
            [[model_names[r.model], init_of(r.init).label, head(r.tied),
              done[r].step, f"{done[r].last:.3f}"]
             for r in STALL if r in done], {f"reaches {TARGET} at step", "last accuracy"})
    section("**Learning rate at GPT-2's init** (our GPT, std 0.02, tied head, softmax):",
            ["lr", "step (last accuracy)"], [[f"{r.lr:g}", done[r].cell()] for r in LRS if r in done],
            {"step (last accuracy)"})
    section("**One std for every weight** (`model.init_std`, residual projections at init_std / √(2 n_layer)), "
            "softmax:", ["init_std", "untied: step (last)", "tied: step (last)"],
            [[f"{std:g}", *(done[r].cell() if r in done else "not run"
                            for r in (Run("gpt", f"std{std:g}", tied) for tied in (False, True)))]
             for std in STD_GRID if any(Run("gpt", f"std{std:g}", t) in done for t in (False, True))],
            {"untied: step (last)", "tied: step (last)"})
    section("**Seeds** (our GPT, softmax):", ["init", "head", "seed 0", "seed 1", "seed 2"],
            [[init_of(init).label, head(tied),
              *(done[r].cell() if r in done else "not run" for r in (Run("gpt", init, tied, seed=s) for s in range(3)))]
             for init, tied in SEED_VARIANTS if any(Run("gpt", init, tied, seed=s) in done for s in range(3))],
            {"seed 0", "seed 1", "seed 2"})
    columns = [f"{init_of(init).std:g} {head(tied)}" for init, tied in BACKEND_COLUMNS]

    def backend_cell(backend: str, init: str, tied: bool) -> str:
        found = [(seed, done[r]) for seed in (0, 1) if (r := Run("gpt", init, tied, backend, seed)) in done]
        cells = [("" if seed == 0 else f"seed {seed} ") + outcome.cell() for seed, outcome in found]
        return "; ".join(cells) or "not run"

    section("**Every backend** (our GPT, init_std and head per column; seed 0, and seed 1 where given):",
            ["backend", *columns],
            [[backend, *(backend_cell(backend, init, tied) for init, tied in BACKEND_COLUMNS)]
             for backend in BACKEND_NAMES
             if any(Run("gpt", i, t, backend, s) in done for i, t in BACKEND_COLUMNS for s in (0, 1))],
            set(columns))
    return "\n".join(sections)


def record(run: Run, outcome: Outcome) -> dict:
    return {"run": run.id, "model": run.model, "init": init_of(run.init).label, "head": head(run.tied),
            "backend": run.backend, "seed": run.seed, "lr": run.lr, "reached_step": outcome.reached,
            "last_accuracy": round(outcome.last, 4), "steps_trained": max(outcome.accuracies),
            "seconds": round(outcome.seconds, 1),
            "accuracies": {str(step): round(acc, 4) for step, acc in outcome.accuracies.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1200, help="training steps at most per run")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between val accuracy checks")
    parser.add_argument("--rows", help=f"comma-separated run ids (default: all {len(ALL_RUNS)}), e.g. "
                                       f"{ALL_RUNS[0].id},{ALL_RUNS[3].id}")
    parser.add_argument("--out", type=path_argument, default=Path("runs/mqar_init"),
                        help="page/CSV path stem (not results/mqar_init, whose reading of the tables would be lost)")
    parser.add_argument("--overwrite", action="store_true", help="replace a page at --out that another command wrote")
    args = parser.parse_args(argv)
    by_id = {run.id: run for run in ALL_RUNS}
    wanted = [name.strip() for name in args.rows.split(",")] if args.rows else list(by_id)
    unknown = [name for name in wanted if name not in by_id]
    if unknown or args.steps < 1 or args.eval_every < 1:
        problem = f"unknown run ids {', '.join(unknown)}" if unknown else "--steps and --eval-every must be >= 1"
        print(f"mqar_init: {problem} (run ids: {', '.join(by_id)})", file=sys.stderr)
        return 2
    try:  # before hours of training: where the page goes, and whether it would replace another command's
        check_out_folder(args.out.parent, "the page and CSV", option="--out's folder")
        outputs = ([page_file(args.out, suffix) for suffix in (".md", ".csv")], command_line(__file__, argv),
                   args.overwrite, "give another --out")
        note = check_replace(*outputs)
    except (ValueError, OutFolderError) as exc:
        print(f"mqar_init: {exc}", file=sys.stderr)
        return 2
    if note:
        print(f"mqar_init: {note}", flush=True)
    torch.set_num_threads(1)  # a 64-wide model gains nothing from more threads, and the machine is shared
    val = val_set(TASK, LENGTH, VAL_SEQUENCES)
    start, done = time.perf_counter(), {}
    for name in wanted:
        run = by_id[name]
        done[run] = train(run, args.steps, args.eval_every, val)
        print(f"{name}: {done[run].cell()} in {done[run].seconds:.0f} s", flush=True)
    minutes = (time.perf_counter() - start) / 60

    measured = (f"the training step at which answer accuracy on the {VAL_SEQUENCES} fixed val sequences first reaches "
                f"{TARGET} (checked every {args.eval_every:,} steps, at most {args.steps:,}; a run stops there) and "
                f"the accuracy where a run stops, for our `GPT` and an independent minimal model under different "
                f"weight inits, LM heads tied or untied; {len(done)} runs, {minutes:.1f} min wall time")
    config = (f"{LAYERS} layers × {WIDTH}, {HEADS} heads, learned positions, vocabulary {TASK.vocab_size}, "
              f"{TASK.num_pairs} pairs and {TASK.num_queries} queries in {LENGTH} tokens, batch {BATCH}; AdamW lr 1e-3 "
              f"constant unless noted, betas {BETAS[0]}/{BETAS[1]}, weight decay 0, no clipping, no warm-up; "
              f"cross-entropy on the answers; seed 0 unless noted; 1 thread")
    page = (opening("Why GPT-2's init cannot learn MQAR at CPU scale, and what can", measured,
                    command_line(__file__, argv), config, this_machine(), today())
            + f"The no-recall accuracy here is {elimination_accuracy(TASK.num_pairs, TASK.num_queries):.3f} "
              f"(`data.mqar.elimination_accuracy({TASK.num_pairs}, {TASK.num_queries})`).\n\n" + page_tables(done))
    try:
        with replacing(*outputs):  # checked again: another command may have written there during the runs
            write_page_files(args.out, page, [record(run, outcome) for run, outcome in done.items()])
    except (ValueError, OSError) as exc:
        print(f"mqar_init: {exc}", file=sys.stderr)
        return 2
    print(page, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
