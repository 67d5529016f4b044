"""Where a GPT's parameters and compute live, counted from its config without building it.

`python -m model.report CONFIG` prints it (model/cli.py).

Every count follows the shapes in model/nn/gpt.py and model/nn/attention.py, so even a 175B config is
counted without allocating anything (tests/test_report.py checks the counts against sum(p.numel())
of real models). Each component is one small function below: an architecture option
(another norm, no position table, another MLP) changes the count in the function it touches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model.config import GPTConfig
from model.errors import ConfigError

GROUPS = ("embeddings", "attention", "mlp", "norms", "lm_head")
BYTES_PER_VALUE = {"fp32": 4, "bf16": 2}
ADAMW_MOMENTS = 2
"""AdamW keeps two running averages (m and v) per parameter."""


@dataclass(frozen=True)
class Component:
    """A set of parameters with one role, e.g. a layer's W_Q (weight matrix and bias vector)."""

    name: str
    group: str
    """One of GROUPS: which total it adds to."""
    shape: str
    weights: int
    biases: int = 0
    macs: int = 0
    """Multiply-accumulates per token in matmuls that use these weights (a tied LM head has no
    parameters of its own but still does vocab_size * n_embd of them)."""
    per_head: tuple[int, int] | None = None
    """(weights, biases) of one head's slice, when the matrix splits into heads."""
    note: str = ""

    @property
    def total(self) -> int:
        return self.weights + self.biases


def linear(name: str, group: str, n_in: int, n_out: int, bias: bool, **extra: Any) -> Component:
    """nn.Linear(n_in, n_out): an (n_out, n_in) matrix and, with bias, n_out biases."""
    return Component(name, group, f"{n_in} x {n_out}", n_in * n_out, n_out if bias else 0, n_in * n_out, **extra)


def norm(name: str, config: GPTConfig) -> Component:
    """LayerNorm: a gain per channel, and a shift per channel when bias is on; RMSNorm: the gain only."""
    shift = config.n_embd if config.bias and config.norm == "layernorm" else 0
    kind = "RMSNorm" if config.norm == "rmsnorm" else "LayerNorm"
    return Component(f"{name} {kind}", "norms", f"{config.n_embd}", config.n_embd, shift)


def qk_norms(config: GPTConfig) -> list[Component]:
    """QK-norm: an RMSNorm gain over each head's channels for the queries and one for the keys,
    shared by all heads."""
    if not config.qk_norm:
        return []
    hs = config.n_embd // config.n_head
    return [Component("query RMSNorm", "norms", f"{hs}", hs), Component("key RMSNorm", "norms", f"{hs}", hs)]


def embeddings(config: GPTConfig) -> list[Component]:
    d = config.n_embd
    rows = [Component("token embedding", "embeddings", f"{config.vocab_size} x {d}", config.vocab_size * d)]
    if config.pos_embedding == "learned":  # rotary positions rotate q and k instead: no table
        rows.append(Component("position embedding", "embeddings", f"{config.block_size} x {d}", config.block_size * d))
    return rows


def attention(config: GPTConfig) -> list[Component]:
    """W_Q, W_K, W_V (stored fused as c_attn) and the output projection W_O (c_proj).

    Their sizes don't depend on how the width is split into heads; the per-head slices do, so they
    are only given when n_head divides n_embd. W_O's bias is added after the heads are mixed, so it
    belongs to no head.
    """
    d, nh = config.n_embd, config.n_head
    split = d % nh == 0
    hs = d // nh
    qkv_head = (d * hs, hs if config.bias else 0) if split else None
    out_head = (hs * d, 0) if split else None
    rows = [linear(f"W_{x}", "attention", d, d, config.bias, per_head=qkv_head) for x in "QKV"]
    note = "bias shared by all heads" if config.bias else ""
    rows.append(linear("W_O", "attention", d, d, config.bias, per_head=out_head, note=note))
    return rows


def mlp(config: GPTConfig) -> list[Component]:
    d, hidden = config.n_embd, config.mlp_ratio * config.n_embd
    return [linear("MLP up", "mlp", d, hidden, config.bias), linear("MLP down", "mlp", hidden, d, config.bias)]


def block(config: GPTConfig) -> list[Component]:
    """One transformer block, in the order its forward pass uses them."""
    return [norm("attention", config), *qk_norms(config), *attention(config), norm("MLP", config), *mlp(config)]


def lm_head(config: GPTConfig) -> Component:
    """Always bias-free; when tied it reuses the token embedding, so it adds no parameters."""
    d, v = config.n_embd, config.vocab_size
    if config.tie_weights:
        return Component("LM head", "lm_head", f"{d} x {v}", 0, macs=d * v, note="tied to the token embedding")
    return linear("LM head", "lm_head", d, v, bias=False)


def final(config: GPTConfig) -> list[Component]:
    return [norm("final", config), lm_head(config)]


@dataclass
class Report:
    """Parameter, FLOP and memory counts of one GPTConfig."""

    config: GPTConfig
    name: str = ""

    def __post_init__(self) -> None:
        if self.config.vocab_size is None:
            raise ConfigError("vocab_size is not set; a parameter report needs it (pass --vocab_size=N)")
        self.embeddings = embeddings(self.config)
        self.block = block(self.config)
        self.final = final(self.config)
        try:
            self.config.check_buildable()
            self.unbuildable = ""
        except ConfigError as e:
            self.unbuildable = str(e)

    def counted(self) -> list[tuple[Component, int]]:
        """Every component with how many times the model holds it (n_layer for block components)."""
        L = self.config.n_layer
        return [(c, 1) for c in self.embeddings] + [(c, L) for c in self.block] + [(c, 1) for c in self.final]

    def group_total(self, group: str) -> int:
        return sum(c.total * n for c, n in self.counted() if c.group == group)

    @property
    def total(self) -> int:
        return sum(c.total * n for c, n in self.counted())

    @property
    def non_embedding(self) -> int:
        """Kaplan et al.'s N: everything but the token and position tables (an untied LM head counts)."""
        return self.total - self.group_total("embeddings")

    # -- compute ---------------------------------------------------------------------------------
    @property
    def attention_score_flops(self) -> int:
        """Forward FLOPs per token for q.k over T keys and the weighted sum of T values, every layer.

        Counted over the whole context T = block_size, as a dense score matrix computes it; a causal
        kernel that skips the masked half does about half of this.
        """
        c = self.config
        return 2 * 2 * c.n_layer * c.block_size * c.n_embd

    @property
    def forward_flops(self) -> int:
        """Matmul FLOPs (2 per multiply-accumulate) plus attention scores, per token. Norms, GELU,
        softmax and residual additions are left out: they are O(n_embd) per token, not O(n_embd^2)."""
        return 2 * sum(c.macs * n for c, n in self.counted()) + self.attention_score_flops

    @property
    def training_flops(self) -> int:
        """The backward pass does two matmuls for each forward one (gradients of inputs and weights)."""
        return 3 * self.forward_flops

    @property
    def approx_training_flops(self) -> int:
        """The usual 6N + 12.L.T.d estimate (Kaplan et al. 2020; PaLM appendix B), N = non-embedding."""
        c = self.config
        return 6 * self.non_embedding + 12 * c.n_layer * c.block_size * c.n_embd

    def memory_bytes(self) -> dict[str, dict[str, int]]:
        """Bytes for weights, gradients and AdamW's two moments, every tensor in one precision."""
        out = {}
        for dtype, size in BYTES_PER_VALUE.items():
            parts = {"weights": self.total * size, "gradients": self.total * size,
                     "adamw": ADAMW_MOMENTS * self.total * size}
            out[dtype] = {**parts, "total": sum(parts.values())}
        return out

    # -- output ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        c = self.config
        totals = {group: self.group_total(group) for group in GROUPS}
        return {
            "name": self.name,
            "config": {k: getattr(c, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size",
                                                   "mlp_ratio", "bias", "tie_weights")},
            "buildable": not self.unbuildable,
            "unbuildable_reason": self.unbuildable or None,
            "total": self.total,
            **totals,
            "non_embedding": self.non_embedding,
            "per_layer": sum(comp.total for comp in self.block),
            "attention_share": totals["attention"] / self.total,
            "mlp_share": totals["mlp"] / self.total,
            "flops_per_token": self.training_flops,
            "forward_flops_per_token": self.forward_flops,
            "training_flops_per_token": self.training_flops,
            "approx_training_flops_per_token": self.approx_training_flops,
            "memory_bytes": self.memory_bytes(),
            "components": [
                {"name": comp.name, "group": comp.group, "shape": comp.shape, "count": n, "weights": comp.weights,
                 "biases": comp.biases, "total": comp.total,
                 "per_head": list(comp.per_head) if comp.per_head else None, "note": comp.note or None}
                for comp, n in self.counted()
            ],
        }

    def format(self) -> str:
        c = self.config
        L = c.n_layer
        head_size = f"head size {c.n_embd // c.n_head}" if c.n_embd % c.n_head == 0 else "n_head doesn't divide d_model: can't be instantiated, see note"
        lines = [
            f"{self.name or 'model'}: {L} layers, {c.n_head} heads, d_model {c.n_embd} ({head_size}), "
            f"context {c.block_size}, vocabulary {c.vocab_size:,}, MLP {c.mlp_ratio * c.n_embd}, "
            f"biases {'on' if c.bias else 'off'}, LM head {'tied' if c.tie_weights else 'untied'}",
            "",
            _row("component", "shape", "weights", "biases", "total", "per head (w + b)"),
        ]
        lines += [_component_row(comp) for comp in self.embeddings]
        lines.append(f"per layer (x {L}):")
        lines += [_component_row(comp, indent=2) for comp in self.block]
        per_layer = [sum(getattr(comp, k) for comp in self.block) for k in ("weights", "biases", "total")]
        lines.append(_row("  layer total", "", *(f"{n:,}" for n in per_layer), ""))
        lines.append(_row(f"  all {L} layers", "", *(f"{n * L:,}" for n in per_layer), ""))
        lines += [_component_row(comp) for comp in self.final]

        lines += ["", _row("totals", "", "", "", "parameters", "share of total")]
        for label, n in (
            ("embeddings (token + position)", self.group_total("embeddings")),
            ("attention (W_Q, W_K, W_V, W_O)", self.group_total("attention")),
            ("MLP (up, down)", self.group_total("mlp")),
            ("norms", self.group_total("norms")),
            ("LM head" + (" (tied: counted in embeddings)" if c.tie_weights else ""), self.group_total("lm_head")),
            ("non-embedding", self.non_embedding),
            ("overall", self.total),
        ):
            lines.append(_row(f"  {label}", "", "", "", f"{n:,}", f"{100 * n / self.total:5.1f}%  {_si(n)}"))

        approx_forward = self.approx_training_flops // 3
        lines += [
            "",
            f"per token, context T = {c.block_size} (matmuls and attention scores):",
            f"  {'':<26}{'exact':>22}{'approximation':>22}",
            f"  {'forward FLOPs':<26}{_si(self.forward_flops, 'FLOP'):>22}{_si(approx_forward, 'FLOP'):>22}",
            f"  {'training FLOPs (3x fwd)':<26}{_si(self.training_flops, 'FLOP'):>22}"
            f"{_si(self.approx_training_flops, 'FLOP'):>22}",
            "  approximation: forward 2N + 4·L·T·d, training 6N + 12·L·T·d, N = non-embedding parameters;",
            f"  exact counts the LM head's matmul ({_si(6 * c.vocab_size * c.n_embd, 'FLOP')} of training) and no "
            f"biases or norms",
            "",
            "memory (every tensor in one precision):",
            f"  {'':<26}{'fp32':>22}{'bf16':>22}",
        ]
        memory = self.memory_bytes()
        for key, label in (("weights", "weights"), ("gradients", "gradients"), ("adamw", "AdamW state (m, v)"),
                           ("total", "total")):
            lines.append(f"  {label:<26}{_si(memory['fp32'][key], 'B'):>22}{_si(memory['bf16'][key], 'B'):>22}")
        if self.unbuildable:
            lines += ["", f"note: this model can't be instantiated as written: {self.unbuildable}. "
                          "The counts above don't depend on how the width is split into heads."]
        return "\n".join(lines)

    def summary(self) -> str:
        """Two lines for the start of a training run."""
        groups = {g: self.group_total(g) for g in GROUPS}
        parts = ", ".join(
            f"{label} {_si(groups[g])} ({100 * groups[g] / self.total:.0f}%)"
            for g, label in (("embeddings", "embeddings"), ("attention", "attention"), ("mlp", "MLP"), ("norms", "norms"))
        )
        head = "tied" if self.config.tie_weights else _si(groups["lm_head"])
        return (
            f"parameters: {parts}, LM head {head}; non-embedding {_si(self.non_embedding)}\n"
            f"training FLOPs per token: {_si(self.training_flops, 'FLOP')} "
            f"(6N + 12·L·T·d: {_si(self.approx_training_flops, 'FLOP')})"
        )


def count_parameters(config: GPTConfig) -> int:
    """Parameters of the GPT that config describes (a tied table counted once), without building it."""
    return Report(config).total


def flops_per_token(config: GPTConfig) -> int:
    """Training FLOPs (forward and backward) per token over a full context: what the report shows, and
    what the trainer's MFU and the training benchmark divide by."""
    return Report(config).training_flops


def _row(name: str, shape: str, weights: str, biases: str, total: str, per_head: str) -> str:
    return f"{name:<34}{shape:>14}{weights:>19}{biases:>13}{total:>19}   {per_head}".rstrip()


def _component_row(comp: Component, indent: int = 0) -> str:
    per_head = f"{comp.per_head[0]:,} + {comp.per_head[1]:,}" if comp.per_head else ""
    extra = "; ".join(s for s in (per_head, comp.note) if s)
    return _row(" " * indent + comp.name, comp.shape, f"{comp.weights:,}", f"{comp.biases:,}", f"{comp.total:,}", extra)


def _si(n: float, unit: str = "") -> str:
    """124439808 -> '124.4M'; with a unit, 1.4e9 bytes -> '1.40 GB'."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G" if unit else "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            value = f"{n / factor:.2f}" if unit else f"{n / factor:.1f}"
            return f"{value} {prefix}{unit}" if unit else f"{value}{prefix}"
    return f"{n:,} {unit}".rstrip()
