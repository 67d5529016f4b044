"""A C inference engine for decoding on a CPU: row dot products for each linear layer, and a whole
GPT decoding step of one sequence that reads the model's weights.

Decoding one token multiplies a single row x (in,) by every weight matrix W (out, in). That reads
every weight once and does two flops per weight, so its speed is the speed at which the weights
stream from memory. PyTorch hands F.linear on a one-row input to the BLAS as a matrix product, which
on a CPU reaches a fraction of the memory bandwidth. `rowdot` (model/kernels/decode.c) computes the
same product as one loop over the rows of W, split across the cores, each row a vectorised dot product
with x: the access pattern that keeps every core's memory stream busy. bf16 weights are widened to
float32 in registers, so they halve the bytes read and still accumulate in float32. A few rows at
once (a decoding step of a batch of texts, a short prompt) go the same way, each weight row read
once for all of them (RowDotLinear, up to ROWDOT_MAX_ROWS rows).

What is left of a batch-1 decoding step in PyTorch is then about twenty small ops per layer (norms,
attention over the cache, GELU, residual adds), each paying PyTorch's per-op dispatch for almost no
arithmetic. `decode_step` in decode.c is a second implementation of the network's forward pass for
one token: plain loops around the row-dot products, which read the weights of a GPT (found by the
attribute names of model/nn/gpt.py: transformer.wte, transformer.h[i].attn.c_attn, ...) and read and
extend the KV caches that the PyTorch prefill of the prompt filled. `FastDecoder` binds it to one
model; model/sampling/generate.py uses it for batch-1 decoding when prepare_for_sampling has
attached one (`model.fast_decoder`); prompts, batches, padding and the sliding window past
block_size stay on the PyTorch path, with RowDotLinear's products.

Being a second implementation, it computes only the architectures it implements, listed in
IMPLEMENTED and TAKES_ANY_VALUE: GPTConfig's learned or rotary positions, LayerNorm or RMSNorm, GELU
(tanh) or ReLU², QK-norm, biases or none, a tied or untied head, for float32 and bfloat16 weights.
Any other option or value (one added to GPTConfig later included) is refused with a one-line
TinyGPTError rather than computed wrongly. The step computes in float32 from weights of either
dtype, so a bfloat16 model's logits differ from its PyTorch path's (which rounds every intermediate
to bfloat16) in the last bits.

The two structs decode_step reads are mirrored here with ctypes (DecodeLayer, DecodeModel);
`mirror_layout() == c_layout(lib)` compares the mirror with the sizes and offsets the compiled C
reports; FastDecoder refuses a mismatch.
"""

from __future__ import annotations

import ctypes
import dataclasses
import mmap

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from model.errors import TinyGPTError
from model.kernels import build


ROWDOT_MAX_ROWS = 16
"""RowDotLinear sends inputs of up to this many rows (tokens) to the C kernel: a decoding step of a
batch of texts, or a short prompt. Longer inputs, whose products reuse each weight many times, go to
PyTorch's matrix product."""


def rowdot(weight: Tensor, x: Tensor, bias: Tensor | None, lib: ctypes.CDLL) -> Tensor:
    """weight (out, in), float32 or bfloat16 and contiguous, times each row of x (rows, in) -> (rows, out) float32."""
    fn = lib.rowdot_bf16 if weight.dtype == torch.bfloat16 else lib.rowdot_f32
    x = x.float().contiguous()
    b = None if bias is None else bias.float().contiguous()
    y = torch.empty(x.size(0), weight.size(0), dtype=torch.float32)
    fn(weight.data_ptr(), x.data_ptr(), 0 if b is None else b.data_ptr(), y.data_ptr(), x.size(0), weight.size(0),
       weight.size(1))
    return y


class RowDotLinear(nn.Module):
    """nn.Linear (same parameters, same names) whose inputs of up to ROWDOT_MAX_ROWS rows go through
    the C row-dot kernel; anything larger (a long prompt) goes through F.linear as before."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same Parameter, so tied weights stay tied
        self.bias = linear.bias

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if (x.numel() > ROWDOT_MAX_ROWS * self.in_features or x.device.type != "cpu" or x.requires_grad
                or not w.is_contiguous() or w.dtype not in (torch.float32, torch.bfloat16) or w.device.type != "cpu"):
            return F.linear(x, w, self.bias)  # also after the model was moved or cast to another dtype
        y = rowdot(w, x.reshape(-1, self.in_features), self.bias, build.library())  # (rows, out)
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)


HUGE_PAGE = 2 * 2**20


def huge_page_buffer(nbytes: int) -> Tensor | None:
    """An uninitialised uint8 tensor of nbytes, starting on a 2 MB boundary, that Linux backs with
    2 MB pages (transparent huge pages on request, madvise); None where the OS has no such request.

    Streaming hundreds of MB per token through 4 KB pages costs a TLB miss every 4 KB; 2 MB pages
    cost one every 2 MB."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return None
    size = (-(-nbytes // HUGE_PAGE) + 1) * HUGE_PAGE  # one page more, to align the start
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # THP skips shared memory
    buffer.madvise(mmap.MADV_HUGEPAGE)  # before the first write, so the pages are huge from the start
    raw = torch.frombuffer(buffer, dtype=torch.uint8)  # views of it keep the mapping alive
    start = -raw.data_ptr() % HUGE_PAGE
    return raw[start : start + nbytes]


def move_to_huge_pages(params: list[nn.Parameter]) -> None:
    """Move the parameters' data, each row-major, into one huge-page buffer (a no-op without one)."""
    sizes = [-(-p.nbytes // 64) * 64 for p in params]  # every tensor starts on a cache line
    raw = huge_page_buffer(sum(sizes)) if params else None
    if raw is None:
        return
    offset = 0
    for p, size in zip(params, sizes):
        view = raw[offset : offset + p.nbytes].view(p.dtype).view(p.shape)
        view.copy_(p.data)
        p.data = view
        offset += size


def use_rowdot(model: nn.Module) -> bool:
    """Swap every float32 / bfloat16 nn.Linear on the CPU in model for a RowDotLinear, in place.
    Returns False (and leaves the model alone) when the kernels are off or can't be built here, or
    were built without OpenMP while PyTorch's products use several threads."""
    if not build.replaces_threaded_ops():
        return False
    weights = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            weight = getattr(child, "weight", None)
            if (isinstance(child, nn.Linear) and weight.device.type == "cpu"
                    and weight.dtype in (torch.float32, torch.bfloat16)):
                weights[id(weight)] = weight  # a tied head and embedding is one tensor
                setattr(parent, name, RowDotLinear(child))
    for weight in weights.values():
        weight.data = weight.data.contiguous()  # row-major (out, in), as the kernel reads it
    move_to_huge_pages(list(weights.values()))
    return True


P = ctypes.c_void_p


# These two mirror the structs of decode.c field by field, in the same order.
class DecodeLayer(ctypes.Structure):
    _fields_ = [(name, P) for name in (
        "ln1_w", "ln1_b", "attn_w", "attn_b", "q_norm_w", "k_norm_w", "proj_w", "proj_b",
        "ln2_w", "ln2_b", "fc_w", "fc_b", "fc2_w", "fc2_b", "k_cache", "v_cache",
    )]


class DecodeModel(ctypes.Structure):
    _fields_ = (
        [(name, ctypes.c_int64) for name in ("n_layer", "n_head", "n_embd", "hidden", "vocab", "max_len",
                                             "bf16", "rmsnorm", "relu2", "rope", "qk_norm")]
        + [("norm_eps", ctypes.c_double), ("qk_norm_eps", ctypes.c_double)]
        + [(name, P) for name in ("wte", "wpe", "rope_freq", "lnf_w", "lnf_b", "head_w")]
        + [("layers", ctypes.POINTER(DecodeLayer)), ("scratch", P)]
    )


def mirror_layout(layer: type[ctypes.Structure] = DecodeLayer, model: type[ctypes.Structure] = DecodeModel) -> list[int]:
    """The size of each ctypes struct followed by the offsets of its fields, layer first."""
    return [n for struct in (layer, model)
            for n in [ctypes.sizeof(struct)] + [getattr(struct, name).offset for name, _ in struct._fields_]]


def c_layout(lib: ctypes.CDLL) -> list[int]:
    """The same numbers for decode.c's structs, as the compiled library reports them."""
    out = (ctypes.c_int64 * 64)()
    return list(out[: lib.decode_struct_layout(out)])


def norm_eps(norm: nn.Module, dtype: torch.dtype) -> float:
    eps = norm.eps
    return torch.finfo(dtype).eps if eps is None else eps  # nn.RMSNorm's default, as F.rms_norm applies it


IMPLEMENTED = {
    "pos_embedding": ("learned", "rope"),
    "norm": ("layernorm", "rmsnorm"),
    "activation": ("gelu", "relu2"),
}
"""The GPTConfig options with a choice of values, and the values decode_step implements."""
TAKES_ANY_VALUE = frozenset({
    "n_layer", "n_head", "n_embd", "block_size", "vocab_size", "mlp_ratio", "bias", "tie_weights", "qk_norm",
    "dropout",  # no dropout at inference
    "given",  # which keys a config file set, not the network's shape
})
"""The GPTConfig fields whose every value decode_step implements; a field in neither table is refused."""


class FastDecoder:
    """decode_step bound to one prepared GPT: its weights' addresses, float32 copies of its small
    vectors, and scratch memory. Build it with `FastDecoder.attach(model, lib)`, which refuses a
    model it does not implement."""

    def __init__(self, model: nn.Module, lib: ctypes.CDLL):
        config, dtype = model.config, model.lm_head.weight.dtype
        self.model, self.lib = model, lib
        self.keep: list[Tensor] = []  # everything whose address the C side holds
        blocks = model.transformer.h
        self.layers = (DecodeLayer * len(blocks))()
        for block, layer in zip(blocks, self.layers):
            attn, mlp = block.attn, block.mlp
            layer.ln1_w, layer.ln1_b = self.small(block.ln_1.weight), self.small(getattr(block.ln_1, "bias", None))
            layer.attn_w, layer.attn_b = self.matrix(attn.c_attn.weight), self.small(attn.c_attn.bias)
            if attn.q_norm is not None:
                layer.q_norm_w, layer.k_norm_w = self.small(attn.q_norm.weight), self.small(attn.k_norm.weight)
            layer.proj_w, layer.proj_b = self.matrix(attn.c_proj.weight), self.small(attn.c_proj.bias)
            layer.ln2_w, layer.ln2_b = self.small(block.ln_2.weight), self.small(getattr(block.ln_2, "bias", None))
            layer.fc_w, layer.fc_b = self.matrix(mlp.c_fc.weight), self.small(mlp.c_fc.bias)
            layer.fc2_w, layer.fc2_b = self.matrix(mlp.c_proj.weight), self.small(mlp.c_proj.bias)
        hidden = config.mlp_ratio * config.n_embd
        scratch = torch.empty(6 * config.n_embd + hidden + config.n_head * config.block_size)
        first_attn = blocks[0].attn
        m = self.description = DecodeModel(
            n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd, hidden=hidden,
            vocab=config.vocab_size, max_len=config.block_size, bf16=int(dtype == torch.bfloat16),
            rmsnorm=int(config.norm == "rmsnorm"), relu2=int(config.activation == "relu2"),
            rope=int(config.pos_embedding == "rope"), qk_norm=int(config.qk_norm),
            norm_eps=norm_eps(model.transformer.ln_f, dtype),
            qk_norm_eps=norm_eps(first_attn.q_norm, dtype) if config.qk_norm else 0.0,
        )
        m.wte = self.matrix(model.transformer.wte.weight)
        m.wpe = self.matrix(model.transformer.wpe.weight) if "wpe" in model.transformer else None
        m.rope_freq = self.small(getattr(first_attn, "rope_frequencies", None))
        ln_f = model.transformer.ln_f
        m.lnf_w, m.lnf_b = self.small(ln_f.weight), self.small(getattr(ln_f, "bias", None))
        m.head_w = self.matrix(model.lm_head.weight)
        m.layers = self.layers
        m.scratch = self.address(scratch)
        self.logits = torch.empty(config.vocab_size)
        self.bound: list | None = None
        self.parameter_addresses = [p.data_ptr() for p in model.parameters()]

    @staticmethod
    def refusal(model: nn.Module) -> str | None:
        """What of model decode_step does not implement, in a few words, or None when it implements all."""
        config = model.config
        for field in dataclasses.fields(config):
            value = getattr(config, field.name)
            if field.name in IMPLEMENTED and value not in IMPLEMENTED[field.name]:
                return f"{field.name}='{value}'"
            if field.name not in IMPLEMENTED and field.name not in TAKES_ANY_VALUE:
                return f"the architecture option {field.name}"
        dtype = model.lm_head.weight.dtype
        if dtype not in (torch.float32, torch.bfloat16):
            return f"{dtype} weights"
        if any(p.device.type != "cpu" for p in model.parameters()):
            return "weights off the CPU"
        return None

    @classmethod
    def attach(cls, model: nn.Module, lib: ctypes.CDLL) -> "FastDecoder":
        """Bind a decoder to model and attach it as model.fast_decoder. Raises TinyGPTError (one line)
        for a model decode_step does not implement, or a compiled library whose structs don't match."""
        reason = cls.refusal(model)
        if reason is not None:
            raise TinyGPTError(f"the C decoder (model/kernels/decode.c) does not implement {reason}")
        if mirror_layout() != c_layout(lib):
            raise TinyGPTError("model/kernels/decode.py's structs don't match the compiled decode.c's")
        lib.decode_step.argtypes = [ctypes.POINTER(DecodeModel), ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, P]
        lib.decode_step.restype = None
        model.fast_decoder = cls(model, lib)
        return model.fast_decoder

    def __reduce__(self):
        # a copied or pickled model has weights at other addresses: its copy of this is None, and
        # prepare_for_sampling builds a new one
        return type(None), ()

    def __deepcopy__(self, memo) -> None:
        return None

    def address(self, t: Tensor) -> int:
        self.keep.append(t)
        return t.data_ptr()

    def matrix(self, weight: Tensor) -> int:
        if not weight.is_contiguous():
            raise ValueError("decode_step reads row-major weights")
        return self.address(weight.data)

    def small(self, t: Tensor | None) -> int | None:
        return None if t is None else self.address(t.detach().float().contiguous())

    def matches(self, model: nn.Module) -> bool:
        """Whether model still holds the tensors this decoder was built on (not moved or recast)."""
        return model is self.model and [p.data_ptr() for p in model.parameters()] == self.parameter_addresses

    def usable(self, caches: list) -> bool:
        """Whether the caches can take one more token through decode_step (batch 1, contiguous
        buffers of the model's dtype, room left)."""
        k = caches[0].k
        if k is None or k.shape[0] != 1 or caches[0].length >= caches[0].max_len:
            return False
        if caches is not self.bound:
            dtype = self.model.lm_head.weight.dtype
            if any(c.k.dtype != dtype or not c.k.is_contiguous() or not c.v.is_contiguous() for c in caches):
                return False
            for layer, cache in zip(self.layers, caches):
                layer.k_cache, layer.v_cache = cache.k.data_ptr(), cache.v.data_ptr()
            self.bound = caches
        return True

    def step(self, token: int, caches: list) -> Tensor:
        """Logits (1, vocab), float32, for one token following the caches' contents, which it extends."""
        past = caches[0].length
        self.lib.decode_step(ctypes.byref(self.description), token, past, past, self.logits.data_ptr())
        for cache in caches:
            cache.length = past + 1
        return self.logits.view(1, -1)
