"""Command-line entry points behind train.py, sample.py and data/prepare.py (and the tinygpt-* scripts).

Every entry point turns a TinyGPTError into one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from model.config import DTYPES, check_seed, did_you_mean, one_dash_hint, parse_bool
from model.errors import ConfigError, Interrupted, TinyGPTError
from model.threads import configure_threads, describe_threads

if TYPE_CHECKING:
    from model.sources import ModelSource

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def guarded(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Run main; a TinyGPTError or Ctrl-C becomes one line on stderr and an exit status."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        configure_threads()  # before anything imports torch: libgomp reads its settings once, when loaded
        try:
            return main(argv) or 0
        except TinyGPTError as e:
            print(f"error: {one_line(str(e))}", file=sys.stderr)
            return EXIT_ERROR
        except Interrupted as e:
            print(e, file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt as e:  # its message, if any, says what was left behind (training/signals.py)
            print(str(e) or "interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # e.g. `python sample.py | head`
            return 0

    return wrapper


def one_line(message: str) -> str:
    """`message` with line breaks and other control characters escaped (a path or a value the user
    typed may hold them), so an error stays on one line."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in message)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake prints a single line instead of usage + message, and a mistyped
    flag gets a did-you-mean (model.config.did_you_mean, the rule train.py's keys use too)."""

    def error(self, message: str):
        print(f"error: {one_line(message)} (see --help)", file=sys.stderr)
        raise SystemExit(2)

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self.unrecognized(extras[0]))
        return namespace

    def option_names(self) -> list[str]:
        """Every --flag this parser and its subcommands' parsers take."""
        names = []
        for action in self._actions:
            names += [o for o in action.option_strings if o.startswith("--")]
            subcommands = action.choices if isinstance(action.choices, dict) else {}  # add_subparsers' parsers
            names += [o for sub in subcommands.values() if isinstance(sub, OneLineArgumentParser)
                      for o in sub.option_names()]
        return names

    def unrecognized(self, arg: str) -> str:
        """The one-line message for an argument no option takes: a flag with one dash, or the closest flag."""
        flag = arg.split("=", 1)[0]
        if one_dash_hint(arg) and f"-{flag}" in self.option_names():
            return one_dash_hint(arg)
        hint = did_you_mean(flag, self.option_names()) if flag.startswith("-") else ""
        return f"unrecognized argument '{arg}'{hint}"


TRAIN_USAGE = """usage: python train.py [CONFIG.toml] [--key=value ...] [--quiet]

Train a GPT. The config file (optional) states what differs from the defaults below; --key=value
flags override both. Examples:
  python train.py                                   # Tiny Shakespeare, characters, CPU-sized model
  python train.py configs/shakespeare_char.toml --device=cpu --max_iters=2000
  python train.py --init_from=resume --max_iters=4000
"""


@guarded
def train_main(argv: list[str] | None = None) -> int:
    from model.config import describe_keys, load_config, split_config_args

    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(TRAIN_USAGE)
        print(describe_keys())
        return 0
    config_path, overrides, switches = split_config_args(args, ("--quiet",))
    quiet = "--quiet" in switches
    model_config, train_config = load_config(config_path, overrides)

    from model.device import keep_freed_memory
    from model.training.trainer import train

    keep_freed_memory()  # this process only trains: let it reuse its activations' memory
    train(model_config, train_config, quiet=quiet)
    return 0


MODEL_HELP = ("a training run folder (its best.pt, else ckpt.pt), a checkpoint file, a Hugging Face GPT-2 "
              "save_pretrained folder, or a hub name such as gpt2")
DEFAULT_OUT_DIR = "out"
"""The run folder sample.py and visualize read when no model is named, as train.py writes by default."""


def add_model_flags(parser: argparse.ArgumentParser, init_from: bool = True) -> None:
    """MODEL as an optional positional argument, and nanoGPT's flags that name one (sample.py, visualize)."""
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL", help=f"{MODEL_HELP} (default: --out_dir)")
    parser.add_argument("--out_dir", default=None, help=f"training run folder (default: {DEFAULT_OUT_DIR})")
    parser.add_argument("--checkpoint", default=None, help="a specific checkpoint file (overrides --out_dir)")
    if init_from:
        parser.add_argument("--init_from", default=None,
                            help="a Hugging Face GPT-2 save_pretrained folder or a hub name such as gpt2 (overrides "
                            "--out_dir); 'resume', as in nanoGPT, reads --out_dir")


def named_model(args: argparse.Namespace) -> ModelSource:
    """The ModelSource that MODEL, or else --init_from, --checkpoint or --out_dir (in that order), names."""
    from model.sources import resolve_model

    init_from = getattr(args, "init_from", None)
    init_from = None if init_from == "resume" else init_from
    if args.model is not None:
        if init_from is not None or args.checkpoint is not None or args.out_dir is not None:
            raise TinyGPTError("name the model once: MODEL, or --out_dir, --checkpoint or --init_from")
        return resolve_model(args.model)
    if init_from is not None:
        return resolve_model(init_from)
    return resolve_model(args.checkpoint or args.out_dir or DEFAULT_OUT_DIR, hub=False)


def add_inference_flags(parser: argparse.ArgumentParser) -> None:
    """--device and --dtype, as every command that runs a trained model takes them."""
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                        help="auto: the checkpoint's own precision (float32 for GPT-2 and tinygpt checkpoints), as "
                        "transformers computes; bfloat16 halves the weights' memory traffic")


def load_for_inference(source: ModelSource, args: argparse.Namespace) -> tuple:
    """(model, tokenizer, device, dtype): the model `source` names on `args.device`, and the precision
    `args.dtype` asks to run it in."""
    from model.device import resolve_device, resolve_inference_dtype
    from model.sources import load_source

    device = resolve_device(args.device)
    model, tok = load_source(source, device)
    return model, tok, device, resolve_inference_dtype(args.dtype, model)


def add_sampling_flags(parser: argparse.ArgumentParser, max_new_tokens: int = 500) -> None:
    """The sampling options sample.py and model.chat share (check them with check_sampling_flags),
    with --device, --dtype and --c_decode."""
    parser.add_argument("--max_new_tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    parser.add_argument("--top_k", type=int, default=200, help="keep only the k most likely tokens (0: all)")
    parser.add_argument("--top_p", type=float, default=None, help="nucleus sampling threshold in (0, 1]")
    parser.add_argument("--stop", action="append", default=[],
                        help="end a sample at this string, which is left out (repeatable)")
    parser.add_argument("--seed", type=int, default=1337)
    add_inference_flags(parser)
    parser.add_argument("--c_decode", type=parse_bool, default=True,
                        help="on a CPU, decode one sample's tokens in C (model/kernels/decode.py; built once with "
                        "the system C compiler, a few seconds); False keeps PyTorch's ops")


def check_sampling_flags(args: argparse.Namespace) -> None:
    """One clear error for a sampling option add_sampling_flags defines with an impossible value."""
    if args.max_new_tokens < 0:
        raise TinyGPTError(f"--max_new_tokens must be >= 0, got {args.max_new_tokens}")
    if not 0 <= args.temperature < math.inf:
        raise TinyGPTError(f"--temperature must be a finite number >= 0 (0 is greedy), got {args.temperature}")
    if args.top_k < 0:
        raise TinyGPTError(f"--top_k must be >= 0 (0 keeps every token), got {args.top_k}")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise TinyGPTError(f"--top_p must be in (0, 1], got {args.top_p}")
    check_seed("--seed", args.seed)


@guarded
def sample_main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(description="Sample text from a trained checkpoint or a GPT-2 model.")
    add_model_flags(parser)
    parser.add_argument("--start", default=None,
                        help="prompt text, or FILE:path to read it from a file (default: a newline, or the "
                        "vocabulary's first token if it has none)")
    parser.add_argument("--num_samples", type=int, default=10, help="samples of the prompt, generated as one batch")
    add_sampling_flags(parser)
    parser.add_argument("--compile", type=parse_bool, default=None, help=argparse.SUPPRESS)  # old name of --c_decode
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.compile is not None:
        print("warning: sample.py --compile is deprecated and will be removed; use --c_decode", file=sys.stderr)
        args.c_decode = args.compile
    if args.num_samples < 1:
        raise TinyGPTError(f"--num_samples must be >= 1, got {args.num_samples}")
    check_sampling_flags(args)
    source = named_model(args)

    from model.sampling.generate import generate_text, prepare_for_sampling
    from model.progress import progress
    from model.training.memory import check_sampling_fits

    model, tok, device, dtype = load_for_inference(source, args)
    prepare_for_sampling(model, dtype, c_decode=args.c_decode)
    if not args.quiet and sys.stderr.isatty():  # like the progress bar: on a terminal only, not in a log
        print(describe_threads(c_kernels_on(device, args.c_decode)), file=sys.stderr)
    prompt = read_prompt(args.start) if args.start is not None else default_prompt(tok)
    ids = tok.encode(prompt)
    if not ids:
        if tok.eot_token is None:
            raise TinyGPTError("the prompt is empty; pass some text with --start")
        ids = [tok.eot_token]
    check_sampling_fits(model.config, args.num_samples, len(ids), args.max_new_tokens, str(device), dtype)
    pieces = generate_text(model, tok, [ids] * args.num_samples, args.max_new_tokens, args.temperature, args.top_k,
                           args.top_p, args.stop, args.seed)
    separator = "\n---------------\n"
    # streamed text on a terminal shows the progress; for a batch, or output to a file, a bar on stderr does
    quiet = args.quiet or (args.num_samples == 1 and sys.stdout.isatty())
    pieces = progress(pieces, total=args.num_samples * args.max_new_tokens, desc="sampling", unit="tok", quiet=quiet)
    if args.num_samples == 1:  # stream the text as it arrives
        sys.stdout.write(prompt)
        for _, text in pieces:
            sys.stdout.write(text)
            sys.stdout.flush()
        sys.stdout.write(separator)
    else:  # one batch: every sample is complete at the same time
        texts = [prompt] * args.num_samples
        for row, text in pieces:
            texts[row] += text
        sys.stdout.write("".join(text + separator for text in texts))
    sys.stdout.flush()
    return 0


CHAT_EPILOG = """In the chat, /reset clears the history (the system prompt stays), /system TEXT sets the
system prompt, /quit, Ctrl-D or Ctrl-C ends. Replies stream as they are generated and end at the
model's end-of-turn token; the oldest turns are left out when the history outgrows the context."""


@guarded
def chat_main(argv: list[str] | None = None) -> int:
    """`python -m model.chat MODEL`: chat with a chat model in the terminal, or answer one --start message."""
    parser = OneLineArgumentParser(prog="python -m model.chat", epilog=CHAT_EPILOG,
                                   description="Chat with a model fine-tuned on conversations.")
    add_model_flags(parser)
    parser.add_argument("--start", default=None,
                        help="answer this message (or FILE:path, read from a file), print just the reply and exit")
    parser.add_argument("--system", default=None, help="the system prompt, or FILE:path to read it from a file")
    add_sampling_flags(parser, max_new_tokens=256)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    check_sampling_flags(args)
    source = named_model(args)
    start = read_prompt(args.start) if args.start is not None else None
    if start is not None and not start.strip():
        raise TinyGPTError("the --start message is empty; pass some text")
    system = read_prompt(args.system) if args.system is not None else None

    from model.data.chat import require_chat_tokenizer
    from model.sampling.chat import HELP, ChatSession, SamplingOptions, chat_loop
    from model.sampling.generate import prepare_for_sampling
    from model.training.memory import check_sampling_fits

    model, tok, device, dtype = load_for_inference(source, args)
    tok = require_chat_tokenizer(tok, source.name)
    prepare_for_sampling(model, dtype, c_decode=args.c_decode)
    check_sampling_fits(model.config, 1, model.config.block_size, args.max_new_tokens, str(device), dtype)
    options = SamplingOptions(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.stop, args.seed)
    session = ChatSession(model, tok, options, system)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    if start is not None:
        session.reply(start, write)
        write("\n")
        return 0
    interactive = sys.stdin.isatty()

    def read() -> str | None:
        if interactive:
            try:
                return input("> ")
            except EOFError:
                write("\n")
                return None
        line = sys.stdin.readline()
        return line if line else None

    if interactive:
        print(f"chatting with {source.name}; {HELP}", file=sys.stderr)
    chat_loop(session, read, write, lambda text: print(text, file=sys.stderr))
    return 0


def c_kernels_on(device: str, wanted: bool) -> bool | None:
    """Whether the C kernels run for a sampler or server on `device` (None: not a CPU, they don't apply)."""
    if device != "cpu":
        return None
    from model.kernels import build

    return wanted and build.library() is not None


def default_prompt(tok) -> str:
    """A newline, as nanoGPT starts its samples; for a vocabulary that has none, its first token."""
    try:
        tok.encode("\n")
        return "\n"
    except TinyGPTError:
        return tok.decode([0])


def read_prompt(start: str) -> str:
    if start.startswith("FILE:"):
        from model.files import read_user_text

        return read_user_text(start[5:], "prompt file")
    return start


@guarded
def prepare_main(argv: list[str] | None = None) -> int:
    from model.data import dataset as data

    parser = OneLineArgumentParser(
        description="Tokenize a text corpus into data_dir/DATASET/{train.bin,val.bin,meta.json}."
    )
    parser.add_argument("--dataset", default="shakespeare_char",
                        help=f"dataset folder name; known: {', '.join([*data.KNOWN_DATASETS, *hf_presets()])}")
    parser.add_argument("--input", default=None, help="local UTF-8 text file (skips downloading)")
    parser.add_argument("--format", default=None, choices=("text", "chat"),
                        help="'chat': --input is JSON Lines, one {\"messages\": [...]} conversation per line "
                        f"(docs/chat.md); the default for --dataset={data.CHAT_EXAMPLE}, the shipped example")
    parser.add_argument("--url", default=None, help="download the text from this URL")
    parser.add_argument("--synthetic", default=None, choices=synthetic_corpora(),
                        help="generate the text instead: 'repeats' (random letters, each line twice: an induction "
                        "head's task; docs/inside.md)")
    parser.add_argument("--tokenizer", default=None,
                        help="'char', 'bpe' (learn a byte-level BPE from the training split) or a tiktoken "
                        "encoding such as 'gpt2'")
    parser.add_argument("--vocab_size", type=int, default=None, help="with --tokenizer=bpe: tokens to learn, e.g. 4096")
    parser.add_argument("--data_dir", default="data")
    add_hf_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.synthetic and (args.input or args.url or args.hf_dataset):
        raise TinyGPTError("--synthetic generates the text: it takes no --input, --url or --hf_dataset")
    chat = args.format == "chat" or (args.format is None and args.dataset == data.CHAT_EXAMPLE)
    if chat and (args.url or args.synthetic or args.hf_dataset):
        raise TinyGPTError("--format=chat reads conversations from --input=FILE.jsonl: it takes no --url, --synthetic or --hf_dataset")
    if chat:
        meta = data.prepare_chat(args.dataset, args.data_dir, args.input, args.tokenizer, args.quiet, args.vocab_size)
        counts = meta["chat"]
        print(f"{args.data_dir}/{args.dataset}: {counts['train_conversations']:,} train and "
              f"{counts['val_conversations']:,} val conversations ({counts['train_targets']:,} and "
              f"{counts['val_targets']:,} reply tokens in the loss)")
    elif args.hf_dataset or (args.dataset in hf_presets() and not args.input and not args.url and not args.synthetic):
        meta = prepare_hf_from_args(args)
    else:
        meta = data.prepare(args.dataset, args.data_dir, args.input, args.url, args.tokenizer, quiet=args.quiet,
                            vocab_size=args.vocab_size, synthetic=args.synthetic)
    print(
        f"{args.data_dir}/{args.dataset}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens, "
        f"vocabulary {meta['vocab_size']:,} ({meta['tokenizer']['kind']}), {meta['dtype']}"
    )
    return 0


def synthetic_corpora() -> tuple[str, ...]:
    from model.data.synthetic import SYNTHETIC

    return SYNTHETIC


def hf_presets() -> list[str]:
    from model.data.hf_datasets import PRESETS

    return list(PRESETS)


def add_hf_arguments(parser: argparse.ArgumentParser) -> None:
    hf = parser.add_argument_group("Hugging Face datasets (written as train_NNN.bin/val_NNN.bin shards)")
    hf.add_argument("--hf_dataset", default=None,
                    help="hub name (e.g. roneneldan/TinyStories) or a file format (parquet, json, csv, text)")
    hf.add_argument("--hf_config", default=None, help="the dataset's configuration, e.g. sample-10BT")
    hf.add_argument("--split", default="train", help="split to tokenize for training")
    hf.add_argument("--val_split", default=None, help="separate split for validation (else --val_fraction)")
    hf.add_argument("--val_fraction", type=float, default=0.0005,
                    help="without --val_split, every round(1/f)-th document goes to validation")
    hf.add_argument("--text_column", default="text")
    hf.add_argument("--data_files", default=None, help="local files or glob for a file-format --hf_dataset")
    hf.add_argument("--streaming", action="store_true", help="read as a stream: for corpora larger than disk or memory")
    hf.add_argument("--num_proc", type=int, default=1, help="tokenizer processes")
    hf.add_argument("--shard_tokens", type=int, default=100_000_000, help="tokens per shard file")
    hf.add_argument("--cache_dir", default=None, help="datasets cache folder (default: HF_DATASETS_CACHE)")


def prepare_hf_from_args(args: argparse.Namespace) -> dict:
    from model.data.hf_datasets import PRESETS, HFSource, prepare_hf

    if args.hf_dataset:
        source = HFSource(args.hf_dataset, args.hf_config, args.split, args.text_column, args.val_split)
    else:
        source = PRESETS[args.dataset]
    return prepare_hf(args.dataset, args.data_dir, source, args.data_files, args.streaming, args.num_proc,
                      args.shard_tokens, args.val_fraction, args.tokenizer or "gpt2", args.cache_dir)


def vocab_from_dataset(data_dir: str, dataset: str) -> int | None:
    """The vocabulary of a prepared dataset (its meta.json), or None if it isn't prepared."""
    from model.data.dataset import META, TokenDataset

    folder = Path(data_dir) / dataset
    if not (folder / META).is_file():
        return None
    return TokenDataset(folder).vocab_size


REPORT_USAGE = """usage: python -m model.report [CONFIG.toml | OUT_DIR/config.json] [--key=value ...] [--json]

Count a GPT's parameters per component, its FLOPs per token and its training memory, from the config
(a TOML file, or the config.json a training run writes) alone (nothing is allocated). vocab_size comes from the config, else from the prepared dataset's
meta.json; pass --vocab_size=N otherwise."""


@guarded
def report_main(argv: list[str] | None = None) -> int:
    import dataclasses
    import json

    from model.config import load_config, split_config_args
    from model.nn.report import Report

    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(REPORT_USAGE)
        return 0
    config_path, overrides, switches = split_config_args(args, ("--json",))
    model_config, train_config = load_config(config_path, overrides)
    if model_config.vocab_size is None:
        vocab = vocab_from_dataset(train_config.data_dir, train_config.dataset)
        if vocab is None:
            raise ConfigError(
                f"vocab_size is not set and dataset '{train_config.dataset}' is not prepared in "
                f"{train_config.data_dir}/; pass --vocab_size=N (e.g. 65 for Tiny Shakespeare characters)"
            )
        model_config = dataclasses.replace(model_config, vocab_size=vocab)
    name = "defaults" if not config_path else Path(config_path).stem
    if config_path and Path(config_path).name == "config.json":  # a run's own config: name it after the run
        name = Path(config_path).resolve().parent.name
    report = Report(model_config, name)
    print(json.dumps(report.to_dict(), indent=2) if "--json" in switches else report.format())
    return 0


@guarded
def runs_main(argv: list[str] | None = None) -> int:
    from model.tools.runs import VAL_CURVES, compare

    parser = OneLineArgumentParser(prog="python -m model.runs", description="Compare training runs.")
    commands = parser.add_subparsers(dest="command", required=True)
    cmp = commands.add_parser("compare", help="table of runs and one plot of their val-loss curves")
    cmp.add_argument("out_dirs", nargs="+", metavar="OUT_DIR", help="training run folders")
    cmp.add_argument("--plot", default=None,
                     help="the picture of val-loss curves to write, in the format its suffix names (.png, .pdf, .svg, ...; "
                          f"default: FIRST_OUT_DIR/{COMPARE_PNG})")
    cmp.add_argument("--metric", default="val_loss", choices=list(VAL_CURVES),
                     help="what the plot draws: val loss per token, or val bits per byte (compares tokenizers)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from model.training.plots import figure_format

    plot = args.plot or Path(args.out_dirs[0]) / COMPARE_PNG
    figure_format(plot)  # a suffix no format has is refused before any run is read
    print(compare(args.out_dirs, plot, args.metric))
    print(f"wrote {plot}")
    return 0


@guarded
def hf_main(argv: list[str] | None = None) -> int:
    """`python -m model.hf MODEL DEST`: export a model as a transformers GPT-2 folder."""
    from model.huggingface import save_pretrained
    from model.sources import load_any_model

    parser = OneLineArgumentParser(
        prog="python -m model.hf", description="Export a model as a Hugging Face transformers GPT-2 folder."
    )
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    parser.add_argument("dest", metavar="DEST", help="folder for config.json, model.safetensors and tinygpt_tokenizer.json "
                        "(and, for a learned BPE or a chat model, tokenizer.json and tokenizer_config.json)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.dest.strip():
        raise TinyGPTError("the destination folder is empty; name the folder to export into")
    from model.training.resume import run_files

    if held := run_files(args.dest):
        raise TinyGPTError(f"{args.dest} holds a training run ({', '.join(held)}), which the export would overwrite; "
                           f"export into another folder, e.g. {args.dest.rstrip('/')}-hf")
    model, tok = load_any_model(args.model)
    folder = save_pretrained(model, args.dest, tok)
    from model.data.tokenizer import BPE_FILE, ChatTokenizer

    tokenizer = f" and AutoTokenizer.from_pretrained('{folder}')" if (folder / BPE_FILE).is_file() else ""
    chat = " (its chat template: apply_chat_template)" if isinstance(tok, ChatTokenizer) else ""
    print(f"wrote {folder} ({model.num_params() / 1e6:.2f}M parameters): load it with "
          f"GPT2LMHeadModel.from_pretrained('{folder}'){tokenizer}{chat}, or sample.py {folder}")
    return 0


COMPARE_PNG = "compare.png"
"""What `model.runs compare` writes into the first run's folder unless --plot names a file."""
ATTENTION_PNG = "attention.png"
"""What `model.visualize` writes into the run's folder unless --out names a file."""


def pictures_folder(source: ModelSource) -> Path:
    """Where pictures of a model go by default: its run's (or Hugging Face) folder, a checkpoint
    file's folder, or the current folder for a hub name."""
    from model.sources import CHECKPOINT, HUB

    if source.kind == HUB:
        return Path(".")
    path = Path(source.location)
    return path.parent if source.kind == CHECKPOINT else path


def _pick(value: int | None, count: int, name: str) -> list[int]:
    if value is None:
        return list(range(count))
    if not 0 <= value < count:
        raise TinyGPTError(f"--{name} must be between 0 and {count - 1} (the model has {count}), got {value}")
    return [value]


@guarded
def visualize_main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(
        prog="python -m model.visualize",
        description="Draw a model's attention patterns over a prompt: one heatmap per layer and head.",
    )
    add_model_flags(parser, init_from=False)
    parser.add_argument("--start", default="ROMEO:\nBut soft, what light", help="prompt text, or FILE:path")
    parser.add_argument("--layer", type=int, default=None, help="only this layer (0-based); default all")
    parser.add_argument("--head", type=int, default=None, help="only this head (0-based); default all")
    parser.add_argument("--out", default=None,
                        help="the picture to write, in the format its suffix names (.png, .pdf, .svg, ...; "
                             f"default: the run folder's {ATTENTION_PNG})")
    parser.add_argument("--save", default=None, help="also write the raw weights to this .npy or .json file")
    add_inference_flags(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.save is not None and Path(args.save).suffix not in (".npy", ".json"):
        raise TinyGPTError(f"--save must end in .npy or .json, got '{args.save}'")
    from model.training.plots import figure_format

    source = named_model(args)
    out = args.out or pictures_folder(source) / ATTENTION_PNG
    figure_format(out)  # refused before the model is loaded

    from model.tools.visualize import attention_weights, plot_attention, save_weights, token_labels

    model, tokenizer, _, dtype = load_for_inference(source, args)
    model.to(dtype)
    prompt = read_prompt(args.start)
    ids = tokenizer.encode(prompt)
    if not ids:
        raise TinyGPTError("the prompt is empty; pass some text with --start")
    if len(ids) > model.config.block_size:
        raise TinyGPTError(
            f"the prompt is {len(ids)} tokens but the model sees at most {model.config.block_size}; shorten it"
        )
    layers = _pick(args.layer, model.config.n_layer, "layer")
    heads = _pick(args.head, model.config.n_head, "head")
    weights = attention_weights(model, ids, layers, heads)
    labels = token_labels(tokenizer, ids)
    png = plot_attention(weights, labels, layers, heads, out, title=f"attention over {len(ids)} tokens")
    print(f"wrote {png} ({len(layers)} layer(s) x {len(heads)} head(s), {len(ids)} tokens)")
    if args.save is not None:
        print(f"wrote {save_weights(args.save, weights, labels, layers, heads)} (layers, heads, query, key)")
    return 0


@guarded
def eval_main(argv: list[str] | None = None) -> int:
    import json

    parser = OneLineArgumentParser(
        prog="python -m model.eval",
        description="Evaluate a model: loss and bits per byte over a text, multiple-choice accuracy, or a chat "
        "model's replies.",
    )
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument("--text", help="a UTF-8 text file: loss and bits per byte over every token")
    task.add_argument("--dataset", help="a prepared dataset's name: loss and bits per byte over its validation split")
    task.add_argument("--hellaswag", help="multiple-choice items in HellaSwag's jsonl format (ctx, endings, label)")
    task.add_argument("--chat", metavar="FILE.jsonl|DATASET",
                      help="conversations ({\"messages\": [...]} per line), or a chat dataset's name (its val.jsonl): "
                      "exact match of each final reply generated greedily, and the reference replies' loss and bits per byte")
    parser.add_argument("--data_dir", default="data", help="where --dataset and --chat=DATASET are prepared")
    parser.add_argument("--batch_size", type=int, default=8, help="sequences per forward pass")
    add_inference_flags(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.batch_size < 1:
        raise TinyGPTError("--batch_size must be >= 1")

    from model.sources import resolve_model

    source = resolve_model(args.model)
    if args.chat:
        from model.evaluation.chat import read_chat_items

        chat_file, chat_items = read_chat_items(args.chat, args.data_dir)  # a bad file is refused before loading
    model, tok, device, dtype = load_for_inference(source, args)
    model.to(dtype)
    from model.training.memory import evaluation_batch_that_fits

    warn = lambda message: print(f"warning: {message}", file=sys.stderr)  # noqa: E731
    args.batch_size = evaluation_batch_that_fits(model.config, args.batch_size, str(device), dtype, warn)
    if args.chat:
        from model.data.chat import require_chat_tokenizer
        from model.evaluation.chat import score_chat

        tok = require_chat_tokenizer(tok, source.name)
        result = {"chat": score_chat(model, tok, chat_items, args.batch_size, device, args.quiet)}
        summary = result["chat"]
        line = (f"{chat_file}: exact match {summary['exact_match']:.4f} over {summary['n']} conversations; replies' "
                f"loss {summary['loss']:.4f} nats/token, {summary['bpb']:.4f} bits/byte "
                f"({summary['tokens']:,} tokens, {summary['bytes']:,} bytes)")
    elif args.hellaswag:
        from model.evaluation.multiple_choice import read_items, score_items

        result = {"hellaswag": score_items(model, tok, read_items(args.hellaswag), args.batch_size, device, args.quiet)}
        summary = result["hellaswag"]
        line = f"{args.hellaswag}: acc {summary['acc']:.4f}, acc_norm {summary['acc_norm']:.4f} over {summary['n']} items"
    else:
        from model.evaluation.text import score_split, score_text

        if args.text:
            from model.data.dataset import read_corpus

            score, name = score_text(model, tok, read_corpus(args.text), args.batch_size, device, args.quiet), args.text
        else:
            from model.data.dataset import TokenDataset

            dataset = TokenDataset(Path(args.data_dir) / args.dataset)
            if dataset.meta["tokenizer"] != tok.to_meta():
                raise TinyGPTError(f"dataset '{args.dataset}' was prepared with another tokenizer than the model's; "
                                   "evaluate on a dataset prepared with the model's tokenizer, or use --text")
            score = score_split(model, dataset, "val", args.batch_size, device, args.quiet)
            name = f"{args.dataset} (validation split)"
        result = score.to_dict()
        line = (f"{name}: loss {score.loss:.4f} nats/token, {score.bpb:.4f} bits/byte "
                f"({score.tokens:,} tokens, {score.bytes:,} bytes)")
    print(json.dumps(result) if args.json else line)


SERVE_EPILOG = """The page is at http://HOST:PORT/ and the API under /v1 (see docs/serving.md). It binds
127.0.0.1 unless --host says otherwise, and then answers only to loopback host names (--allowed_hosts);
with an API key (--api_key or $TINYGPT_API_KEY) every /v1 request must send 'Authorization: Bearer KEY'."""


@guarded
def serve_main(argv: list[str] | None = None) -> int:
    import os

    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise TinyGPTError("serving needs FastAPI and uvicorn: pip install -e \".[serve]\"") from None
    from model.serving.api import API_KEY_ENV, Limits
    from model.serving.connections import ConnectionLimits, default_allowed_hosts, parse_allowed_hosts, server_options

    limits, connection_limits = Limits(), ConnectionLimits()
    limit_help = {
        "max_prompt_tokens": "longest prompt, in tokens", "max_tokens": "most tokens generated per text",
        "max_n": "most texts per prompt (n)", "max_logprobs": "most alternatives reported per token",
        "max_body_bytes": "largest request body", "max_attention_tokens": "longest text for the attention view",
        "max_ablate_tokens": "most tokens one head-ablation request (Inside panel) scores",
        "max_messages": "most messages in one chat request",
    }
    parser = OneLineArgumentParser(
        prog="python -m model.serve", epilog=SERVE_EPILOG,
        description="Serve trained models: a playground page and an OpenAI-compatible completions and chat API.",
    )
    parser.add_argument("models", nargs="*", metavar="MODEL", help=f"{MODEL_HELP} (default: --out_dir={DEFAULT_OUT_DIR})")
    parser.add_argument("--out_dir", action="append", default=[],
                        help="a training run folder (best.pt, else ckpt.pt) or checkpoint file; repeatable")
    parser.add_argument("--runs", action="append", default=[], help="serve every run folder inside this folder")
    parser.add_argument("--init_from", action="append", default=[],
                        help="a Hugging Face GPT-2 save_pretrained folder, or a hub name such as gpt2; repeatable")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api_key", default=None, help=f"require this key on API requests (default: ${API_KEY_ENV})")
    parser.add_argument("--allowed_hosts", default=None,
                        help="comma-separated Host names to answer to, * for any (default: localhost, 127.0.0.1 "
                             "and ::1 when --host is a loopback address, else any)")
    parser.add_argument("--header_timeout", type=float, default=connection_limits.header_timeout,
                        help="seconds a client has to send a request's headers")
    parser.add_argument("--body_timeout", type=float, default=connection_limits.body_timeout,
                        help="seconds a client has to send a request's body, after its headers")
    parser.add_argument("--max_connections", type=int, default=connection_limits.max_connections,
                        help="connections open at once; one more gets 503")
    add_inference_flags(parser)
    parser.add_argument("--c_decode", type=parse_bool, default=True,
                        help="on a CPU, decode a lone text's tokens in C (model/kernels/decode.py); False keeps PyTorch's ops")
    parser.add_argument("--max_batch", type=int, default=8, help="texts decoded together (concurrent streams)")
    parser.add_argument("--max_waiting", type=int, default=64, help="texts queued for a place in the batch (then 429)")
    for name, text in limit_help.items():
        parser.add_argument(f"--{name}", type=int, default=getattr(limits, name), help=text)
    parser.add_argument("--quiet", action="store_true", help="no access log")
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    at_least_one = ["max_batch", "max_waiting", *(limit for limit in limit_help if limit != "max_logprobs")]  # 0 logprobs: none
    for name in at_least_one:
        if getattr(args, name) < 1:
            raise TinyGPTError(f"--{name} must be at least 1")
    if args.max_logprobs < 0 or not 0 < args.port < 65536:
        raise TinyGPTError("--max_logprobs must be >= 0 and --port between 1 and 65535")
    for name in ("header_timeout", "body_timeout"):
        if not 0 < getattr(args, name) < math.inf:
            raise TinyGPTError(f"--{name} must be a positive number of seconds")
    if args.max_connections < 1:
        raise TinyGPTError("--max_connections must be at least 1")
    for name in limit_help:
        setattr(limits, name, getattr(args, name))
    connection_limits = ConnectionLimits(header_timeout=args.header_timeout, body_timeout=args.body_timeout,
                                         max_connections=args.max_connections)
    allowed_hosts = (default_allowed_hosts(args.host) if args.allowed_hosts is None
                     else parse_allowed_hosts(args.allowed_hosts))
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None

    import socket

    try:  # a clear error now rather than a traceback from the server once the models are loaded
        with socket.create_server((args.host, args.port)):
            pass
    except OSError as e:
        raise TinyGPTError(f"can't listen on {args.host}:{args.port}: {e.strerror or e}; pick another --port") from None

    from model.device import resolve_device
    from model.serving.api import create_app
    from model.serving.models import find_sources, load_served
    from model.sources import resolve_model

    device = resolve_device(args.device)
    out_dirs = args.out_dir or ([] if args.models or args.runs or args.init_from else [DEFAULT_OUT_DIR])
    named = [*(resolve_model(name) for name in args.models), *(resolve_model(run, hub=False) for run in out_dirs),
             *(resolve_model(name) for name in args.init_from)]
    sources = find_sources(named, args.runs)
    served = load_served(sources, device, args.dtype, args.c_decode, args.max_batch, args.max_waiting)
    app = create_app(served, limits, api_key, allowed_hosts)
    where = f"http://{args.host}:{args.port}/"
    print(f"serving {', '.join(m.id for m in served)} at {where} (API: {where}v1; Ctrl-C stops)", file=sys.stderr)
    print(describe_threads(c_kernels_on(device, args.c_decode)), file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"warning: listening on {args.host} without an API key: anyone who can reach it can use it", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=not args.quiet,
                **server_options(connection_limits))
    return 0
