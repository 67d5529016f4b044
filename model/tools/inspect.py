"""`python -m model.inspect VIEW MODEL`: look inside a model, on the command line.

    python -m model.inspect step MODEL --start=TEXT --layer=0 --head=1 --position=-1
    python -m model.inspect lens MODEL --start=TEXT
    python -m model.inspect heads MODEL --start=TEXT
    python -m model.inspect ablate MODEL [--text=FILE] [--mode=mean]
    python -m model.inspect embeddings MODEL --token=e --start=TEXT
    python -m model.inspect params MODEL --layer=0

MODEL is a training run folder, a checkpoint file or a Hugging Face GPT-2 folder. Each view prints a
table, or with --json one JSON object (the keys of model/evaluation/inspect.py), and with --out=X.png
draws its picture. Without --start or --text a view reads the start of the run's validation split.
The analyses are in model/evaluation/inspect.py; this module reads the arguments and draws.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from model.cli import OneLineArgumentParser, add_inference_flags, guarded, load_for_inference
from model.errors import TinyGPTError
from model.evaluation import inspect as analyses
from model.tools.visualize import VISIBLE, plot_attention

VIEWS = ("step", "lens", "heads", "ablate", "embeddings", "params")
DEFAULT_TOKENS = 64
"""Tokens of the validation split a view other than ablate reads when given no text."""
DEFAULT_ABLATE_TOKENS = 4096
"""Tokens of the validation split ablate scores when given no text."""


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(
        prog="python -m model.inspect",
        description="Look inside a model: attention step by step (step), the logit lens (lens), head scores and "
        "patterns (heads), head ablation (ablate), the embedding space (embeddings), parameters per head (params).",
    )
    parser.add_argument("view", choices=VIEWS)
    parser.add_argument("model", help="a training run folder, a checkpoint file, or a Hugging Face GPT-2 folder")
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--start", default=None, help="the text to look at")
    text.add_argument("--text", default=None, help="a UTF-8 file holding the text to look at")
    parser.add_argument("--cut", choices=["first", "last"], default=None,
                        help="a text longer than the model's context: keep its first or last block_size tokens "
                        "(default: refuse it); ablate cuts any text into windows instead")
    parser.add_argument("--layer", type=int, default=0, help="step, params: the layer (from 0)")
    parser.add_argument("--head", type=int, default=0, help="step: the head (from 0)")
    parser.add_argument("--position", type=int, default=-1,
                        help="step, embeddings: the query position (from 0; -1 = the last token)")
    parser.add_argument("--top_k", type=int, default=5, help="lens: next tokens shown per position")
    parser.add_argument("--sort", choices=analyses.HEAD_SCORES, default="induction", help="heads: rank by this score")
    parser.add_argument("--mode", choices=analyses.ABLATION_MODES, default="zero",
                        help="ablate: zero each head's output, or replace it by its mean over the text")
    parser.add_argument("--tokens", type=int, default=DEFAULT_ABLATE_TOKENS,
                        help="ablate without a text: how many tokens of the validation split to score")
    parser.add_argument("--token", default=None,
                        help="embeddings: the token whose neighbours to list (default: the one at --position)")
    parser.add_argument("--neighbours", type=int, default=10, help="embeddings: neighbours listed")
    parser.add_argument("--map_tokens", type=int, default=300,
                        help="embeddings: tokens on the PCA map (every token of a smaller vocabulary)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", default=None,
                        help="draw the view into this picture, in the format its suffix names (.png, .pdf, .svg, ...)")
    add_inference_flags(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar (ablate)")
    return parser


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.out is not None:
        from model.training.plots import figure_format

        figure_format(args.out)  # refused before the model is loaded
    if args.tokens < 2 or args.top_k < 1 or args.neighbours < 1 or args.map_tokens < 2:
        raise TinyGPTError("--tokens and --map_tokens must be at least 2, --top_k and --neighbours at least 1")

    from model.sources import resolve_model

    model, tok, _, dtype = load_for_inference(resolve_model(args.model), args)
    model.to(dtype).eval()
    result = run_view(args, model, tok)
    if args.out is not None:
        print(f"wrote {draw(args.view, result, args.out)}", file=sys.stderr)
    print(json.dumps(without_arrays(result)) if args.json else describe(args.view, result))
    return 0


def run_view(args, model, tok) -> dict:
    """The view's result (analyses' dict), for the text the arguments name."""
    c = model.config
    if args.view == "params":
        return analyses.head_parameters(model, args.layer)
    if args.view == "ablate":
        from model.data.dataset import eval_windows

        ids = given_ids(args, tok)
        if ids is None:
            ids = validation_ids(args.model, tok, args.tokens + 1)
        x, y = eval_windows(np.array(ids, dtype=np.int64), c.block_size)
        with analyses_progress(c.n_layer, args.quiet) as advance:
            return analyses.ablate(model, x, y, args.mode, progress=advance) | {"windows": len(x)}
    ids = given_ids(args, tok)
    if ids is None:
        ids = validation_ids(args.model, tok, min(DEFAULT_TOKENS, c.block_size))
    ids, offset = analyses.fit_context(ids, c.block_size, args.cut)
    if args.view == "step":
        return analyses.attention_step(model, tok, ids, args.layer, args.head, args.position) | {"offset": offset}
    if args.view == "lens":
        return analyses.logit_lens(model, tok, ids, args.top_k) | {"offset": offset}
    if args.view == "heads":
        return analyses.head_scores(model, tok, ids, args.sort) | {"offset": offset}
    token = analyses.single_token(tok, args.token) if args.token is not None else None
    trajectory = analyses.residual_trajectory(model, tok, ids, args.position)
    if token is None:
        token = ids[trajectory["position"]]
    counts = token_counts(args.model, tok) if c.vocab_size > args.map_tokens else None
    return {"neighbours": analyses.nearest_tokens(model, tok, token, args.neighbours),
            "map": analyses.embedding_map(model, tok, args.map_tokens, counts), "trajectory": trajectory,
            "offset": offset}


class analyses_progress:
    """A progress bar over the layers of an ablation; the `with` gives ablate's progress callback."""

    def __init__(self, total: int, quiet: bool):
        from model.progress import progress

        self.bar = progress(total=total, desc="ablate", unit="layer", quiet=quiet)

    def __enter__(self):
        return lambda done, total: self.bar.update(done - self.bar.n)

    def __exit__(self, *exc):
        self.bar.close()


def given_ids(args, tok) -> list[int] | None:
    if args.start is not None:
        return analyses.encode_text(tok, args.start)
    if args.text is not None:
        from model.data.dataset import read_corpus

        return analyses.encode_text(tok, read_corpus(args.text))
    return None


def run_dataset(model_path: str, tok):
    """The prepared dataset a training run was trained on (its config.json names it), when it is
    still there and has the model's tokenizer; else None."""
    from model.checkpoint import CONFIG_FILE
    from model.data.dataset import META, TokenDataset
    from model.files import read_json

    path = Path(model_path)
    folder = path if path.is_dir() else path.parent
    try:
        config = read_json(folder / CONFIG_FILE)
    except (TinyGPTError, OSError):
        return None
    if not isinstance(config, dict) or "dataset" not in config or "data_dir" not in config:
        return None
    data = Path(config["data_dir"]) / str(config["dataset"])
    if not (data / META).is_file():
        return None
    dataset = TokenDataset(data)
    return dataset if dataset.meta["tokenizer"] == tok.to_meta() else None


def validation_ids(model_path: str, tok, n: int) -> list[int]:
    """The first n tokens of the run's validation split."""
    dataset = run_dataset(model_path, tok)
    if dataset is None:
        raise TinyGPTError(f"no text to look at: {model_path} names no prepared dataset with the model's tokenizer "
                           "(in its config.json); pass --start=TEXT or --text=FILE")
    return [int(t) for t in dataset.splits["val"].arrays[0][:n]]


def token_counts(model_path: str, tok, most: int = 10_000_000) -> np.ndarray | None:
    """How often each token occurs in (the first `most` tokens of) the run's training split, or None."""
    dataset = run_dataset(model_path, tok)
    if dataset is None:
        return None
    return np.bincount(np.asarray(dataset.splits["train"].arrays[0][:most]), minlength=dataset.vocab_size)


def without_arrays(result: dict) -> dict:
    """The result without its tensors (the head gallery's patterns are drawn, not printed)."""
    return {k: v for k, v in result.items() if k != "patterns"}


def visible(text: str) -> str:
    return "".join(VISIBLE.get(ch, ch) for ch in text)


# -- text output --------------------------------------------------------------------------------

def describe(view: str, r: dict) -> str:
    return {"step": describe_step, "lens": describe_lens, "heads": describe_heads, "ablate": describe_ablate,
            "embeddings": describe_embeddings, "params": describe_params}[view](r)


def describe_step(r: dict) -> str:
    p = r["position"]
    lines = [f"layer {r['layer']}, head {r['head']}: the query at position {p} ({visible(r['tokens'][p])!r}) "
             f"against every key; scale 1/sqrt({r['head_size']}) = {r['scale']:.4f}",
             f"{'pos':>4} {'token':<10}{'q.k':>10}{'scaled':>10}{'mask':>6}{'weight':>9}{'|w v W_O|':>11}"]
    for j, token in enumerate(r["tokens"]):
        lines.append(f"{j:>4} {visible(token)[:9]:<10}{r['scores'][j]:>10.3f}{r['scaled'][j]:>10.3f}"
                     f"{'yes' if r['mask'][j] else 'no':>6}{r['weights'][j]:>9.4f}{r['contribution_sizes'][j]:>11.4f}")
    size = float(np.linalg.norm(r["output"]))
    lines.append(f"this head adds a vector of length {size:.4f} to the residual stream at position {p} "
                 f"(the whole attention block: {float(np.linalg.norm(r['block_output'])):.4f})")
    return "\n".join(lines)


def describe_lens(r: dict) -> str:
    T = len(r["tokens"])
    shown = range(max(0, T - 8), T)
    lines = [f"logit lens: the most likely next token after each layer (last {len(shown)} positions; p of the "
             "final prediction in brackets)", f"{'':<12}" + "".join(f"{visible(r['tokens'][t])[:8]:>14}" for t in shown)]
    for layer in r["layers"]:
        name = "embeddings" if layer["layer"] == "embeddings" else f"block {layer['layer']}"
        cells = [f"{visible(layer['top'][t][0]['token'])[:6]} ({layer['p_final'][t]:.2f})" for t in shown]
        lines.append(f"{name:<12}" + "".join(f"{cell:>14}" for cell in cells))
    return "\n".join(lines)


def describe_heads(r: dict) -> str:
    lines = [f"heads ranked by {r['sort']} (induction on {r['probe_tokens'] // 2} random tokens seen twice, "
             f"the rest over the text's {len(r['tokens'])} tokens)",
             f"{'layer':>5}{'head':>5}{'previous':>10}{'induction':>11}{'first':>8}{'self':>8}{'distance':>10}"]
    for h in r["heads"]:
        lines.append(f"{h['layer']:>5}{h['head']:>5}{h['previous_token']:>10.3f}{h['induction']:>11.3f}"
                     f"{h['first_token']:>8.3f}{h['self']:>8.3f}{h['mean_distance']:>10.2f}")
    return "\n".join(lines)


def describe_ablate(r: dict) -> str:
    lines = [f"baseline loss {r['baseline_loss']:.4f} over {r['tokens']:,} tokens; each head's output "
             f"{'zeroed' if r['mode'] == 'zero' else 'replaced by its mean'}, by loss increase:",
             f"{'layer':>5}{'head':>5}{'loss':>9}{'increase':>10}"]
    for h in sorted(r["heads"], key=lambda h: -h["loss"]):
        lines.append(f"{h['layer']:>5}{h['head']:>5}{h['loss']:>9.4f}{h['loss'] - r['baseline_loss']:>+10.4f}")
    return "\n".join(lines)


def describe_embeddings(r: dict) -> str:
    n = r["neighbours"]
    lines = [f"nearest tokens to {visible(n['token'])!r}:", f"{'by cosine similarity':<28}{'by dot product':<28}"]
    for a, b in zip(n["cosine"], n["dot"]):
        lines.append(f"{visible(a['token'])[:12]!r:<16}{a['value']:>8.3f}    {visible(b['token'])[:12]!r:<16}{b['value']:>8.3f}")
    t = r["trajectory"]
    lines.append(f"position {t['position']} ({visible(t['token'])!r}, predicts {visible(t['predicted'])!r}): the "
                 "residual vector's cosine to its input embedding and to the prediction's unembedding")
    for layer in t["layers"]:
        name = "embeddings" if layer["layer"] == "embeddings" else f"block {layer['layer']}"
        lines.append(f"  {name:<12}{layer['cos_input']:>8.3f}{layer['cos_predicted']:>8.3f}   |x| {layer['norm']:.3f}")
    return "\n".join(lines)


def describe_params(r: dict) -> str:
    lines = [f"layer {r['layer']}: {r['n_head']} heads of size {r['head_size']} over d = {r['n_embd']}",
             f"{'head':>4}  " + "".join(f"{name:>22}" for name in ("W_Q", "W_K", "W_V", "W_O slice")) + f"{'total':>10}"]
    for h in r["heads"]:
        cells = [f"{m['shape'][0]}x{m['shape'][1]}: {m['weights'] + m['biases']:,}" for m in
                 (h["W_Q"], h["W_K"], h["W_V"], h["W_O"])]
        lines.append(f"{h['head']:>4}  " + "".join(f"{cell:>22}" for cell in cells) + f"{h['total']:>10,}")
    lines.append(f"W_O's bias ({r['shared']['W_O bias']:,}) is added after the heads are mixed: it belongs to no head. "
                 f"Attention parameters per layer: {r['attention_total']:,} (python -m model.report)")
    return "\n".join(lines)


# -- pictures -----------------------------------------------------------------------------------

def draw(view: str, r: dict, path: str) -> Path:
    if view == "heads":
        return draw_heads(r, path)
    return {"step": draw_step, "lens": draw_lens, "ablate": draw_ablate, "embeddings": draw_embeddings,
            "params": draw_params}[view](r, path)


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save(fig, path: str) -> Path:
    from model.training.plots import save_figure

    return save_figure(fig, path)


def draw_step(r: dict, path: str) -> Path:
    T = len(r["tokens"])
    labels = [visible(t) for t in r["tokens"]]
    fig = new_figure(max(6.0, 0.28 * T + 2), 7.5)
    axes = fig.subplots(4, 1, sharex=True)
    keys = np.arange(T)
    mask = np.array(r["mask"])
    colours = np.where(mask, "tab:blue", "lightgrey")
    panels = (("q·k", r["scores"]), (f"scaled: q·k / √{r['head_size']}", r["scaled"]),
              ("softmax weight (masked keys: 0)", r["weights"]), ("|weight · v W_O| (contribution)", r["contribution_sizes"]))
    for ax, (title, values) in zip(axes, panels):
        ax.bar(keys, values, color=colours)
        ax.set_ylabel(title, fontsize=8)
        ax.axhline(0, color="black", linewidth=0.5)
    axes[0].set_title(f"layer {r['layer']}, head {r['head']}: query at position {r['position']} "
                      f"({labels[r['position']]!r}); grey keys are in the future (masked)", fontsize=9)
    axes[-1].set_xticks(keys, labels, fontsize=7, rotation=0 if all(len(s) <= 2 for s in labels) else 90)
    axes[-1].set_xlabel("key token")
    return save(fig, path)


def draw_lens(r: dict, path: str) -> Path:
    T, L = len(r["tokens"]), len(r["layers"])
    shown = list(range(max(0, T - 24), T))
    p = np.array([[layer["p_final"][t] for t in shown] for layer in r["layers"]])
    fig = new_figure(max(6.0, 0.55 * len(shown) + 2), 0.45 * L + 2)
    ax = fig.subplots()
    image = ax.imshow(p, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i, layer in enumerate(r["layers"]):
        for j, t in enumerate(shown):
            ax.text(j, i, visible(layer["top"][t][0]["token"])[:5], ha="center", va="center", fontsize=7,
                    color="white" if p[i, j] > 0.6 else "black")
    ax.set_yticks(range(L), ["embeddings" if l["layer"] == "embeddings" else f"block {l['layer']}" for l in r["layers"]])
    ax.set_xticks(range(len(shown)), [visible(r["tokens"][t]) for t in shown], fontsize=7,
                  rotation=0 if all(len(r["tokens"][t]) <= 2 for t in shown) else 90)
    ax.set_xlabel("input token (the cell: the top next token after that layer)")
    fig.colorbar(image, ax=ax, shrink=0.8, label="p of the model's final prediction")
    ax.set_title("logit lens: what the final norm and LM head read from the residual stream after each layer", fontsize=9)
    return save(fig, path)


def draw_heads(r: dict, path: str) -> Path:
    patterns = r["patterns"].numpy()  # (L, nh, T, T)
    L, H = patterns.shape[:2]
    by_head = {(h["layer"], h["head"]): h for h in r["heads"]}
    titles = {key: f"L{key[0]} H{key[1]}  prev {h['previous_token']:.2f} ind {h['induction']:.2f}\n"
                   f"first {h['first_token']:.2f} self {h['self']:.2f} dist {h['mean_distance']:.1f}"
              for key, h in by_head.items()}
    labels = [visible(t) for t in r["tokens"]]
    return plot_attention(patterns, labels, list(range(L)), list(range(H)), path,
                          title="every head's attention over the text, with its scores", titles=titles)


def draw_ablate(r: dict, path: str) -> Path:
    L = 1 + max(h["layer"] for h in r["heads"])
    H = 1 + max(h["head"] for h in r["heads"])
    increase = np.zeros((L, H))
    for h in r["heads"]:
        increase[h["layer"], h["head"]] = h["loss"] - r["baseline_loss"]
    fig = new_figure(max(4.5, 0.6 * H + 2.5), max(3.0, 0.45 * L + 1.8))
    ax = fig.subplots()
    image = ax.imshow(increase, cmap="Reds", aspect="auto", vmin=min(0.0, increase.min()))
    if L * H <= 256:
        for (i, j), value in np.ndenumerate(increase):
            ax.text(j, i, f"{value:+.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value > 0.6 * increase.max() > 0 else "black")
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, shrink=0.8, label="loss increase (nats/token)")
    how = "zeroed" if r["mode"] == "zero" else "replaced by its mean"
    ax.set_title(f"each head's output {how}: loss - baseline ({r['baseline_loss']:.3f})", fontsize=9)
    return save(fig, path)


def draw_embeddings(r: dict, path: str) -> Path:
    fig = new_figure(13, 5.5)
    left, middle, right = fig.subplots(1, 3, width_ratios=[2.2, 1.2, 1.2])
    m = r["map"]
    left.scatter(m["x"], m["y"], s=6, color="tab:blue", alpha=0.5)
    for x, y, token in zip(m["x"], m["y"], m["tokens"]):
        left.annotate(visible(token)[:8], (x, y), fontsize=6)
    left.set_title(f"token embeddings, 2-D PCA ({len(m['tokens'])} tokens; "
                   f"{100 * sum(m['explained']):.0f}% of the variance)", fontsize=9)
    n = r["neighbours"]
    for ax, key, label in ((middle, "cosine", "cosine similarity"), (right, "dot", "dot product")):
        rows = n[key][::-1]
        ax.barh(range(len(rows)), [row["value"] for row in rows], color="tab:green" if key == "cosine" else "tab:orange")
        ax.set_yticks(range(len(rows)), [repr(visible(row["token"]))[:14] for row in rows], fontsize=8)
        ax.set_title(f"nearest to {visible(n['token'])!r} by {label}", fontsize=9)
    return save(fig, path)


def draw_params(r: dict, path: str) -> Path:
    fig = new_figure(8, 0.5 * r["n_head"] + 2)
    ax = fig.subplots()
    names = ("W_Q", "W_K", "W_V", "W_O")
    left = np.zeros(r["n_head"])
    for name, colour in zip(names, ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        counts = np.array([h[name]["weights"] + h[name]["biases"] for h in r["heads"]])
        shape = r["heads"][0][name]["shape"]
        ax.barh(range(r["n_head"]), counts, left=left, color=colour, label=f"{name} ({shape[0]} → {shape[1]})")
        left += counts
    ax.set_yticks(range(r["n_head"]), [f"head {h['head']}" for h in r["heads"]])
    ax.invert_yaxis()
    ax.set_xlabel("parameters")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"layer {r['layer']}: each head's share of the attention parameters "
                 f"(W_O's bias, {r['shared']['W_O bias']:,}, belongs to no head)", fontsize=9)
    return save(fig, path)
