"""Pictures of attention: for a prompt, which earlier tokens each token looks at, per layer and head.

    python -m model.visualize --out_dir=out --start="ROMEO: But soft" [--layer L] [--head H]
                              [--out attention.png] [--save weights.npy|weights.json]

The picture is a grid of heatmaps, one row per layer and one column per head. In each heatmap, row i
is the query at token i and column j the key at token j; the colour is how much of token i's
attention goes to token j (each row sums to 1). Everything above the diagonal is 0: the causal mask.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from model.errors import TinyGPTError

MAX_LABELLED_TOKENS = 64
"""Beyond this many tokens, tick labels would overlap; only every k-th token is labelled."""
VISIBLE = {"\n": "\\n", "\t": "\\t", " ": "␣"}


@torch.no_grad()
def attention_weights(model, ids: list[int], layers: list[int], heads: list[int]) -> np.ndarray:
    """The attention patterns of the prompt `ids` as an array (len(layers), len(heads), T, T)."""
    model.eval()  # no dropout on the pattern
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    patterns = model.attention_patterns(idx)  # n_layer x (1, nh, T, T)
    picked = torch.stack([patterns[layer][0, heads] for layer in layers])  # (L, H, T, T)
    return picked.float().cpu().numpy()


def token_labels(tokenizer, ids: list[int]) -> list[str]:
    """Each token's text, with whitespace made visible, for tick labels."""
    from model.data.tokenizer import token_bytes

    labels = []
    for i in ids:
        text = token_bytes(tokenizer, [i]).decode("utf-8", errors="replace")
        labels.append("".join(VISIBLE.get(ch, ch) for ch in text))
    return labels


def plot_attention(weights: np.ndarray, labels: list[str], layers: list[int], heads: list[int],
                   path: str | Path, title: str = "", titles: dict[tuple[int, int], str] | None = None) -> Path:
    """A grid of heatmaps (rows: layers, columns: heads) of weights (L, H, T, T), saved as a PNG.
    titles: a panel title per (layer, head), instead of "layer L, head H"."""
    from matplotlib.figure import Figure

    from model.training.plots import save_figure

    n_rows, n_cols, T = len(layers), len(heads), len(labels)
    panel = min(4.5, max(2.2, 0.16 * T))  # inches: big enough to read the labels, small enough to fit
    fig = Figure(figsize=(panel * n_cols + 1.2, panel * n_rows + 0.6), dpi=100, layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    step = max(1, -(-T // MAX_LABELLED_TOKENS))
    ticks = list(range(0, T, step))
    fontsize = max(4, min(9, int(0.7 * panel * 72 * step / T)))  # points: about one label per row
    rotation = 0 if all(len(label) <= 2 for label in labels) else 90  # characters stay upright
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r, c]
            image = ax.imshow(weights[r, c], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title((titles or {}).get((layer, head), f"layer {layer}, head {head}"), fontsize=9)
            ax.set_xticks(ticks, [labels[t] for t in ticks], rotation=rotation, fontsize=fontsize)
            ax.set_yticks(ticks, [labels[t] for t in ticks], fontsize=fontsize)
            ax.tick_params(length=0)
            if r == n_rows - 1:
                ax.set_xlabel("key (attended to)", fontsize=8)
            if c == 0:
                ax.set_ylabel("query (attending)", fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="attention weight")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def save_weights(path: str | Path, weights: np.ndarray, labels: list[str], layers: list[int], heads: list[int]) -> Path:
    """.npy: the float32 array (len(layers), len(heads), T, T). .json: the same as nested lists under
    "weights", with the "tokens", "layers" and "heads" it belongs to."""
    from model.files import atomic_write_bytes

    path = Path(path)
    if path.suffix == ".npy":
        import io

        buffer = io.BytesIO()
        np.save(buffer, weights.astype(np.float32))
        atomic_write_bytes(path, buffer.getvalue())
    elif path.suffix == ".json":
        record = {"tokens": labels, "layers": layers, "heads": heads, "weights": weights.tolist()}
        atomic_write_bytes(path, json.dumps(record).encode())
    else:
        raise TinyGPTError(f"--save must end in .npy or .json, got '{path.name}'")
    return path
