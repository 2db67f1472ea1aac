"""A tiny character-level GPT: token and position embeddings, pre-norm blocks, a language-model head.

Each block is ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``; attention is causal (position ``t`` reads
positions ``<= t`` only). Module names follow Hugging Face's GPT-2 (``transformer.wte``, ``transformer.h.0.attn
.c_proj``, ``lm_head``), so a domains file written for GPT-2 reads the same way here.

Seed slots go on the two projections that write into the residual stream, ``attn.c_proj`` and
``mlp.c_proj``: a seed there is a residual kernel applied to the branch's output at each position. Kernels
that act on each position separately keep the model causal; a kernel that mixes tokens would not (see
:data:`esper_recipes.lm.CAUSAL_KERNEL_EXCLUSIONS`).

``forward`` returns logits flattened to ``(B·T, vocab)``: Tolaria scores ``(rows, classes)`` against
``(rows,)`` labels, so loss and accuracy come out per character (targets come flattened from
:class:`esper_recipes.text.NextCharBatches`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTShape:
    """How big the model is."""

    vocab_size: int
    block_size: int = 32  # longest context, in characters
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 32
    mlp_ratio: int = 2  # hidden width of each block's MLP, in multiples of d_model


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position attends to itself and the positions before it."""

    def __init__(self, shape: GPTShape) -> None:
        super().__init__()
        if shape.d_model % shape.n_head:
            raise ValueError(f"d_model {shape.d_model} is not a multiple of n_head {shape.n_head}")
        self.n_head = shape.n_head
        self.c_attn = nn.Linear(shape.d_model, 3 * shape.d_model)  # queries, keys and values at once
        self.c_proj = nn.Linear(shape.d_model, shape.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)  # 3 x (B, T, D)
        # (B, T, D) -> (B, heads, T, D / heads)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, D / heads)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class MLP(nn.Module):
    """Position-wise feed-forward: expand, GELU, project back."""

    def __init__(self, shape: GPTShape) -> None:
        super().__init__()
        hidden = shape.mlp_ratio * shape.d_model
        self.c_fc = nn.Linear(shape.d_model, hidden)
        self.c_proj = nn.Linear(hidden, shape.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))  # (B, T, D)


class Block(nn.Module):
    """One pre-norm transformer block."""

    def __init__(self, shape: GPTShape) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(shape.d_model)
        self.attn = CausalSelfAttention(shape)
        self.ln_2 = nn.LayerNorm(shape.d_model)
        self.mlp = MLP(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Trunk(nn.Module):
    """Embeddings, the blocks and the final norm (``transformer`` in GPT-2's module names)."""

    def __init__(self, shape: GPTShape) -> None:
        super().__init__()
        self.wte = nn.Embedding(shape.vocab_size, shape.d_model)
        self.wpe = nn.Embedding(shape.block_size, shape.d_model)
        self.h = nn.ModuleList(Block(shape) for _ in range(shape.n_layer))
        self.ln_f = nn.LayerNorm(shape.d_model)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(positions)  # (B, T, D)
        for block in self.h:
            x = block(x)
        return self.ln_f(x)  # (B, T, D)


class CharGPT(nn.Module):
    """The language model: ``forward(idx (B, T) int64) -> logits (B·T, vocab)``."""

    def __init__(self, shape: GPTShape) -> None:
        super().__init__()
        self.shape = shape
        self.transformer = Trunk(shape)
        self.lm_head = nn.Linear(shape.d_model, shape.vocab_size)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Small normal weights and zero biases, as GPT-2 starts: the first losses are near log(vocab).
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.shape
        if t > self.shape.block_size:
            raise ValueError(f"sequence of {t} tokens is longer than block_size {self.shape.block_size}")
        logits = self.lm_head(self.transformer(idx))  # (B, T, vocab)
        return logits.reshape(b * t, -1)  # (B·T, vocab): one row per position

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, new_tokens: int, *, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue ``idx`` (B, T) by ``new_tokens`` sampled tokens (the last ``block_size`` as context)."""
        was_training = self.training
        self.eval()
        for _ in range(new_tokens):
            context = idx[:, -self.shape.block_size:]
            logits = self(context).view(idx.shape[0], context.shape[1], -1)[:, -1] / temperature  # (B, vocab)
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
        self.train(was_training)
        return idx
