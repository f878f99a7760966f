"""Generate text from a checkpoint with its own config (attention backend, position encoding, tokenizer).

    python scripts/generate.py --ckpt runs/shakespeare-cpu --prompt "ROMEO:" --max-new-tokens 200
    python scripts/generate.py --ckpt runs/x --prompt "To be" --prompt "Once upon" --temperature 0   # a batch
    python scripts/generate.py --ckpt runs/x --prompt-file scene.txt --top-k 50 --top-p 0.9 --seed 1
    echo "ROMEO:" | python scripts/generate.py --ckpt runs/x/checkpoints/step_001000

Prompts: each --prompt TEXT and each --prompt-file PATH (the whole file, verbatim, newlines included) is one prompt,
in command-line order; without either, all of stdin is one prompt. One prompt is echoed and its continuation is
streamed to stdout token by token. Several prompts, of any lengths, form one batch (left-padded: one prefill, then
one decode step per token for all of them), and each prompt's text is printed whole, under a `--- prompt N ---`
header, in the order given, when the batch is done. Greedy (--temperature 0), each prompt continues as it would
alone. Sampled, each prompt draws from a generator of its own, seeded with --seed S itself, so a prompt in any row
of a batch continues as it does sampled alone with --seed S (the same options, device and dtype), and its text does
not depend on the other prompts or their order; the same prompt given twice is sampled the same way twice (another
--seed gives another sample). Both hold bit for bit on the CPU in fp32 (tested); in bf16 or on a GPU a batch's logits
can differ from one prompt's in the last bits, which can flip a near tie.

--dtype auto decodes in bfloat16 on a CPU with bf16 matmul instructions (avx512_bf16, amx_bf16) and on Ampere or
later GPUs (float16 on older GPUs), else in float32. With --dtype float32, greedy text equals the transformers
export's (which loads in float32) token for token; bf16 rounding can change a greedy pick where two logits are close.

Generation stops after --max-new-tokens, at <|endoftext|> (unless --no-stop), or at the context limit: the
learned positions of the model, the KV cache's limit (n_positions unless --max-context raises it; rope/none
only), nothing for a constant-memory backend with rope/none positions; a batch reaches it with its longest prompt.
There it stops with a message, or, with --window N, re-prefills the last N tokens into a fresh state and goes on.
At the end, stderr gets one line with prefill and decode tokens/s and the bytes of the largest decode state held.

Exit status: 0 (also when stopped at the context limit), 2 for unusable arguments, checkpoint or prompts (text that is
not UTF-8 included), or a decode state larger than memory can hold (one line on stderr, no output), 130 on Ctrl-C
(the text generated so far printed, then the stats line and `generate: interrupted`), 141 when the reader of stdout
goes away (`| head`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from data.config import MQAR
from data.tokenizer import StreamDecoder, TextTokenizer, load_tokenizer
from model.generation import ContextLimitReached, DecodeStats, DecodeStateTooLarge, generate, left_pad
from model.gpt import GPT
from model.sampling import Sampler
from training.checkpoint import CheckpointError, load_checkpoint_model
from training.runtime import pick_device, pick_dtype
from typedconfig.cli import ArgumentParser, with_flag_names


# the parameters of generate() and Sampler that this command's flags set, for their error messages
FLAGS = {"max_new_tokens": "--max-new-tokens", "max_context": "--max-context", "window": "--window",
         "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p"}


def read_prompt_file(path: str) -> str:
    """The file's text as it is: bytes decoded as UTF-8, "\r\n" kept (text mode would make it "\n")."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read prompt file {path}: {exc}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="generate", description=__doc__)
    parser.add_argument("--ckpt", required=True, help="run directory, its checkpoints/ folder, or a checkpoint dir")
    parser.add_argument("--prompt", dest="prompts", action="append", help="a prompt (repeat for a batch)")
    parser.add_argument("--prompt-file", dest="prompts", action="append", type=read_prompt_file,
                        help="a file whose whole text is one prompt (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="tokens to generate per prompt")
    parser.add_argument("--temperature", type=float, default=1.0, help="divides the logits; 0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, help="0 = no limit")
    parser.add_argument("--top-p", type=float, default=1.0, help="in (0, 1]; 1 = no limit")
    parser.add_argument("--seed", type=int, default=None,
                        help="sampling seed in [0, 2**64) (None: a fresh one, printed with the stats); every "
                             "prompt samples with a generator of its own seeded with it, so it continues in a batch "
                             "as it does alone with the same seed")
    parser.add_argument("--no-stop", action="store_true", help="do not stop at <|endoftext|>")
    parser.add_argument("--window", type=int, default=None,
                        help="at the context limit, re-prefill the last N tokens into a fresh state and go on")
    parser.add_argument("--max-context", type=int, default=None,
                        help="most tokens in the decode state (default: n_positions, or none for a constant-memory "
                             "backend with rope/none positions); above n_positions only with rope/none")
    parser.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="weights and decode state; auto: bfloat16 on a CPU with bf16 matmul instructions "
                             "(avx512_bf16, amx_bf16) and on Ampere or later GPUs, float16 on older GPUs, else "
                             "float32 (the dtype of the transformers export, whose greedy text float32 reproduces)")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 0:
        parser.error(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.seed is not None and not 0 <= args.seed < 2**64:  # torch's generators take 64-bit seeds
        parser.error(f"--seed must be in [0, 2**64) (0 to {2**64 - 1}), got {args.seed}")
    return args


def load(args: argparse.Namespace) -> tuple[GPT, TextTokenizer, torch.device]:
    """The checkpoint's model on the chosen device and dtype, and its tokenizer (whose ids must fit the model)."""
    device = pick_device(args.device, option="--device")
    model, cfg, ckpt = load_checkpoint_model(args.ckpt)
    if cfg.data.source == MQAR:  # its data.tokenizer is the unused default, not a tokenizer of its synthetic ids
        raise CheckpointError(
            f"{ckpt} was trained on MQAR (data.source 'mqar'), whose tokens are synthetic ids with no text tokenizer, "
            "so it cannot continue text; its recall accuracy is in the run's metrics.jsonl (holdout_accuracy)"
        )
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise CheckpointError(
            f"{ckpt} was trained with a vocabulary of {cfg.model.vocab_size} tokens, but its tokenizer "
            f"{cfg.data.tokenizer!r} has {tokenizer.vocab_size}: the checkpoint is from another vocabulary"
        )
    return model.to(device=device, dtype=pick_dtype(args.dtype, device, option="--dtype")), tokenizer, device


def encode_prompts(texts: list[str], tokenizer: TextTokenizer) -> list[list[int]]:
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # bytes of the command line that are not UTF-8 arrive as lone surrogates
            which = f"prompt {i + 1}" if len(texts) > 1 else "the prompt"
            raise ValueError(f"{which} is not UTF-8 text (a byte that is not UTF-8 at character {exc.start}); "
                             "convert it to UTF-8 (iconv -t UTF-8)") from None
    ids = tokenizer.encode_batch(texts)
    for i, prompt in enumerate(ids):
        if not prompt:
            raise ValueError(f"prompt {i + 1} is empty" if len(ids) > 1 else "the prompt is empty")
    return ids


def read_stdin() -> str:
    """All of stdin, verbatim, as UTF-8 (whatever the locale's encoding)."""
    if sys.stdin.isatty():
        print("generate: reading the prompt from stdin (end it with Ctrl-D)", file=sys.stderr)
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"stdin is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); convert it "
                         "to UTF-8 (iconv -t UTF-8)") from None


def with_flags(make: Callable, *args, **kwargs):
    """make(*args, **kwargs) (Sampler, generate), its errors about its arguments naming this command's flags; a
    checkpoint's own errors (an attention option named temperature, say) keep theirs."""
    try:
        return make(*args, **kwargs)
    except DecodeStateTooLarge:
        raise
    except ValueError as exc:
        raise ValueError(with_flag_names(str(exc), FLAGS)) from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run_command(args)
    except KeyboardInterrupt:  # outside the decoding, which keeps its text: reading stdin or the checkpoint
        print("\ngenerate: interrupted", file=sys.stderr)
        return 130


def run_command(args: argparse.Namespace) -> int:
    try:
        # checked before loading
        sampler = with_flags(Sampler, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
        texts = [read_stdin()] if args.prompts is None else args.prompts
        model, tokenizer, device = load(args)
        prompts = encode_prompts(texts, tokenizer)
        sampler = dataclasses.replace(sampler, vocab_size=tokenizer.vocab_size)
        stop_id = None if args.no_stop else tokenizer.eot_id
        seed = None if sampler.greedy else secrets.randbits(63) if args.seed is None else args.seed
        # one generator per prompt, each seeded with the seed itself (not seed + i, which would need --seed S + i
        # to repeat prompt i alone): a prompt draws what it draws alone with this --seed, in any row
        generators = [torch.Generator(device=device).manual_seed(seed or 0) for _ in prompts]
        stats = DecodeStats()
        ids, mask = left_pad(prompts, device=device)
        # generate checks its arguments eagerly, before any text is printed
        run = with_flags(generate, model, ids, args.max_new_tokens, mask=None if bool(mask.all()) else mask,
                         sampler=sampler, generator=generators, stop_id=stop_id, window=args.window,
                         max_context=args.max_context, stats=stats)
    except DecodeStateTooLarge as exc:
        print(f"generate: {exc.needs}, {exc.over}; lower --max-context or --max-new-tokens", file=sys.stderr)
        return 2
    except (ValueError, CheckpointError) as exc:  # DataError and ConfigError are ValueErrors
        print(f"generate: {exc}", file=sys.stderr)
        return 2
    try:
        note, interrupted = print_completions(texts, run, tokenizer, stop_id)
    except BrokenPipeError:  # the reader went away (| head): no more output, and no traceback at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a process killed by SIGPIPE
    except OSError as exc:  # stdout cannot be written (a full disk)
        print(f"generate: cannot write the output: {exc.strerror}", file=sys.stderr)
        return 2
    if interrupted:
        print(f"{stats_line(stats, model, seed)}\ngenerate: interrupted", file=sys.stderr)
        return 130
    if note:
        print(f"generate: {with_flag_names(note, FLAGS)}; pass --window N to go on with a sliding window",
              file=sys.stderr)
    print(stats_line(stats, model, seed), file=sys.stderr)
    return 0


def print_completions(texts: list[str], run: Iterator[torch.Tensor], tokenizer: TextTokenizer,
                      stop_id: int | None) -> tuple[str | None, bool]:
    """Run the batch and print its text (see the module docstring), up to where Ctrl-C stopped it; the context-limit
    message, if it hit it, and whether Ctrl-C stopped it."""
    if len(texts) == 1:
        print(texts[0], end="", flush=True)
        _, note, interrupted = complete(run, 1, tokenizer, stop_id,
                                        lambda row, piece: print(piece, end="", flush=True))
        print(flush=True)
        return note, interrupted
    continuations, note, interrupted = complete(run, len(texts), tokenizer, stop_id, lambda row, piece: None)
    for i, (text, continuation) in enumerate(zip(texts, continuations)):
        print(f"--- prompt {i + 1} ---\n{text}{continuation}", flush=True)
    return note, interrupted


def complete(run: Iterator[torch.Tensor], rows: int, tokenizer: TextTokenizer, stop_id: int | None,
             on_text: Callable[[int, str], None]) -> tuple[list[str], str | None, bool]:
    """The continuation of every row of a generate run, each piece of text passed to on_text(row, piece) as soon
    as it is complete; a row ends before its first stop_id. Also the message if the run hit the context limit, and
    whether Ctrl-C stopped it (the text up to there is kept)."""
    decoders = [StreamDecoder(tokenizer) for _ in range(rows)]
    pieces: list[list[str]] = [[] for _ in range(rows)]
    stopped = [False] * rows
    note, interrupted = None, False

    def emit(row: int, piece: str) -> None:
        if piece:
            pieces[row].append(piece)
            on_text(row, piece)

    try:
        for tokens in run:
            for row, token in enumerate(tokens.tolist()):
                stopped[row] = stopped[row] or token == stop_id
                if not stopped[row]:
                    emit(row, decoders[row].push(token))
    except ContextLimitReached as exc:
        note = str(exc)
    except KeyboardInterrupt:
        interrupted = True
    for row, decoder in enumerate(decoders):
        emit(row, decoder.flush())
    return ["".join(p) for p in pieces], note, interrupted


def stats_line(stats: DecodeStats, model: GPT, seed: int | None) -> str:
    """Work, speed and decode-state size; the seed only when sampling used one (greedy decoding draws nothing)."""
    kind = "constant size" if model.constant_memory_decoding else "KV cache"
    line = (
        f"prefill: {stats.prefill_tokens} tokens{_rate(stats.prefill_tokens, stats.prefill_tokens_per_s, 0)} | "
        f"decode: {stats.decode_tokens} tokens{_rate(stats.decode_tokens, stats.decode_tokens_per_s, 1)} | "
        f"decode state: {stats.state_bytes:,} bytes ({stats.state_bytes / 2**20:.2f} MiB, {kind}, "
        f"{model.config.attention})"
    )
    return line if seed is None else f"{line} | seed {seed}"


def _rate(tokens: int, per_s: float, digits: int) -> str:
    return f", {per_s:,.{digits}f} tokens/s" if tokens else ""


if __name__ == "__main__":
    sys.exit(main())
