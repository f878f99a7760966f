"""The model shapes the benchmark scripts time, by name, so that every script means the same model by a name."""

from __future__ import annotations

from dataclasses import dataclass

from model.config import ModelConfig

HEAD_SIZE = 64


@dataclass(frozen=True)
class BenchShape:
    """A model's depth and width and the batch one timed step takes (`batch` sequences of `seq_len` tokens)."""

    n_layer: int
    n_embd: int
    batch: int
    seq_len: int

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len

    def model_config(self, **options) -> ModelConfig:
        """The model of this shape: heads of 64, context = seq_len, GPT-2's vocabulary; `options` set the rest."""
        return ModelConfig(n_layer=self.n_layer, n_head=self.n_embd // HEAD_SIZE, n_embd=self.n_embd,
                           n_positions=self.seq_len, **options)


# GPT-2 small as the anchors time it (one sequence of 1024), and the model and batch of configs/shakespeare-cpu.yaml
SHAPES = {"gpt2-small": BenchShape(12, 768, 1, 1024), "demo": BenchShape(4, 256, 8, 256)}
