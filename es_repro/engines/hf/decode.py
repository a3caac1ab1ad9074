"""es-repro's own greedy decode for Llama-family models on CPU (generation.fast_decode).

Why: a decode step at a small batch should cost about one read of the weights. Through HF ``generate`` it cost
1.6-3x that on 2 CPU cores (docs/speed.md, "Where a decode step of the main job goes"), a third of it Python and
dispatch around a few dozen small ops per layer (KV-cache cat, RoPE, masks, norms). This loop computes the same
function with fewer ops and no per-step Python:
- each layer's q/k/v and gate/up weights are one stacked tensor, the layers' parameters views of it
  (``stack_in_place``), so one matmul serves them and perturb/restore/update write it with nothing copied;
- the KV cache is one preallocated buffer per layer (K and V side by side), written in place by one op; every step
  attends over all its slots, unwritten ones masked, so all steps of a call have one shape;
- RoPE is one pass over the q/k/v output (the value heads' tables are the identity); logits are computed for the
  last position only;
- the decode step is traced once per shape (``torch.jit.trace``) and replayed by the TorchScript interpreter.

It is deterministic (the same bits for the same weights and input on the same machine and thread count; traced
or eager), but its bits are not HF eager's: reductions run in another order. Runs that must match the released
script's arithmetic (es.seed_stream=released, the benchmark's paper mode) keep HF ``generate``, and so do sampled
completions (the KL estimate) and low-rank members (forward hooks).

The matmul kernel (generation.linear_kernel) is chosen by a fixed rule, never by timing, so a resumed run computes
the bits its first launch did: ``mm_t`` (``mm(W, x^T)``, W read in its stored layout) for bf16, and for fp32 on AMD
CPUs (MKL's ``F.linear`` streamed fp32 weights at 5.5 GB/s on an AVX2-only EPYC, ``mm(W, x^T)`` at 21 GB/s);
``linear`` (``F.linear``) for fp32 elsewhere (22 GB/s on the Intel Xeon measured, where ``mm_t`` fp32 reached 10.6).
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from es_repro.engines.hf.packed import PackedWeight, packing_available
from es_repro.util.machine import cpuinfo_field

FAST_DECODE = ("auto", "on", "off")  # generation.fast_decode
LINEAR_KERNELS = ("auto", "linear", "packed", "mm_t")  # generation.linear_kernel
MODEL_TYPES = ("llama", "qwen2")  # decoder layers of HF's Llama shape: RMSNorm, RoPE attention (GQA), SiLU-gated MLP


def unsupported(model: nn.Module) -> str | None:
    """Why the fast decode cannot run ``model``, or None when it can."""
    c = model.config
    if c.model_type not in MODEL_TYPES:
        return f"model_type {c.model_type!r} is not one of {MODEL_TYPES}"
    if next(model.parameters()).device.type != "cpu":
        return "the model is not on CPU (CUDA keeps HF generate, compiled with a static cache)"
    if getattr(c, "hidden_act", "silu") != "silu":
        return f"hidden_act {c.hidden_act!r} (only silu)"
    if getattr(c, "use_sliding_window", False) and getattr(c, "sliding_window", None):
        return "sliding-window attention"
    return None


def ruled_out_by_settings(cfg) -> str | None:
    """The run setting that keeps HF generate (generation.fast_decode=auto steps aside; =on is refused), or None."""
    g = cfg.generation
    for setting, rules_out in (("es.lowrank > 0 (forward hooks)", cfg.es.lowrank),
                               ("generation.cache=static", g.cache == "static"),
                               ("generation.compile=on", g.compile == "on")):
        if rules_out:
            return setting
    return None


def cpu_vendor() -> str:
    """/proc/cpuinfo's vendor_id (GenuineIntel, AuthenticAMD), or "": a fixed fact of the machine, so the kernel
    rule gives a resumed run the same kernel."""
    return cpuinfo_field("vendor_id")


def resolve_kernel(setting: str, dtype: torch.dtype) -> str:
    """generation.linear_kernel=auto by the fixed rule in the module docstring; other values as given (checked)."""
    if setting not in LINEAR_KERNELS:
        raise ValueError(f"generation.linear_kernel={setting!r} is not one of {LINEAR_KERNELS}")
    if setting == "packed" and not (dtype == torch.bfloat16 and packing_available()):
        raise ValueError(f"generation.linear_kernel=packed needs a bf16 model and oneDNN bf16 kernels; the model is "
                         f"{dtype} (use generation.linear_kernel=auto, linear or mm_t)")
    if setting != "auto":
        return setting
    if dtype == torch.bfloat16 or (dtype == torch.float32 and cpu_vendor() == "AuthenticAMD"):
        return "mm_t"
    return "linear"


def stack_in_place(linears: Sequence[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One [sum(out_i), in] weight (and bias) for nn.Linear layers sharing an input, with each layer's own
    parameters made views of it (``.data`` is swapped; the Parameter objects stay): every in-place write to a layer
    (perturb, restore, update, load) lands in the stacked copy, so one matmul serves them all and nothing is
    copied per member."""
    if len(linears) == 1:
        return linears[0].weight, linears[0].bias
    biases = [m.bias for m in linears]
    if any(b is None for b in biases) and any(b is not None for b in biases):
        raise ValueError("fast decode: layers sharing an input have biases on some of them only")
    stacked = []
    for tensors in ([m.weight for m in linears], biases if biases[0] is not None else []):
        if not tensors:
            stacked.append(None)
            continue
        whole = torch.cat([t.detach() for t in tensors])
        offset = 0
        for t in tensors:
            t.data = whole[offset : offset + t.shape[0]]
            offset += t.shape[0]
        stacked.append(whole)
    return stacked[0], stacked[1]


class Projection:
    """y = x @ W^T + b for W the stacked weight of nn.Linear layers sharing one input (``stack_in_place``).

    Kernels: ``linear`` is ``F.linear``; ``mm_t`` is ``mm(W, x^T)^T``, which reads W in its stored layout;
    ``packed`` multiplies by a oneDNN-packed copy of W (``PackedWeight``: remade whenever W changed; a view shares
    its base's version counter, so every in-place write to any of the layers moves it)."""

    def __init__(self, linears: Sequence[nn.Linear], kernel: str):
        sizes = [m.out_features for m in linears]
        self.kernel, self.spans = kernel, [(sum(sizes[:i]), n) for i, n in enumerate(sizes)]  # (start, size) per layer
        self.weight, self.bias = stack_in_place(linears)
        self.pack = PackedWeight()

    def stacked(self, x: torch.Tensor) -> torch.Tensor:
        """x [rows, in] -> [rows, sum(out_i)], the layers' outputs side by side."""
        w, b = self.weight, self.bias
        if self.kernel == "mm_t":
            return (torch.mm(w, x.t()) if b is None else torch.addmm(b[:, None], w, x.t())).t()
        if self.kernel == "packed":
            return self.pack.linear(x, w, b)
        return F.linear(x, w, b)


def rms_norm(x: torch.Tensor, norm: nn.Module, size: int) -> torch.Tensor:
    """HF's LlamaRMSNorm over the last dim (``size``, a plain int so a trace holds no size ops): normalised in
    float32, rounded to the input dtype, then scaled by the weight. F.rms_norm on bf16 input computes in float32 and
    rounds once, so it is the first two steps in one op (tested against HF's module)."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, (size,), norm.weight, norm.variance_epsilon)
    return F.rms_norm(x, (size,), None, norm.variance_epsilon) * norm.weight


class DecoderLayer:
    """One HF Llama-shaped decoder layer read through Projections (its modules and parameters are the model's)."""

    def __init__(self, layer: nn.Module, kernel: str):
        attn, mlp = layer.self_attn, layer.mlp
        self.input_norm, self.post_norm = layer.input_layernorm, layer.post_attention_layernorm
        self.qkv = Projection([attn.q_proj, attn.k_proj, attn.v_proj], kernel)
        self.o = Projection([attn.o_proj], kernel)
        self.gate_up = Projection([mlp.gate_proj, mlp.up_proj], kernel)
        self.down = Projection([mlp.down_proj], kernel)


# SDPA's CPU flash kernel, named: a trace of F.scaled_dot_product_attention records the kernel chosen at trace time,
# and in bf16 that was the math path (bmm, softmax, copies: ~1 ms a step more)
flash_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
SLOT_BUCKET = 32  # KV slots per call are rounded up to a multiple of this: fewer shapes, so fewer traces
STATES_KEPT = 2  # per-shape decode states (KV buffers + trace) kept for the next call of the same shape


class DecodeState:
    """What decoding batches of one shape needs: per layer one K-and-V buffer [B, 2 kv_heads, slots, d] (keys in
    the first half of dim 1, values in the second), the RoPE tables over all q/k/v heads, the additive key mask
    [B, 1, 1, slots] and the decode step (traced once for the shape when the kernel allows)."""

    def __init__(self, decoder: "FastDecoder", batch: int, slots: int):
        param = next(decoder.model.parameters())
        kv = decoder.kv_heads
        # zeros, then only finite values: a masked slot (unwritten, a pad, or the last call's) adds 0 x finite
        self.cache = [param.new_zeros(batch, 2 * kv, slots, decoder.head_dim) for _ in decoder.layers]
        self.cos, self.sin = decoder.rope_tables(slots, param)
        self.mask = param.new_zeros(batch, 1, 1, slots)
        self.batch = batch
        self.step: Callable | None = None


class FastDecoder:
    """Greedy generation for a Llama-family HF model on CPU (see the module docstring).

    Each decode step attends over all of a call's KV slots, the unwritten and padded ones masked, so every step has
    the same shapes and reads its buffers in place: the step is traced once per shape (``torch.jit.trace``; the
    TorchScript interpreter runs the ~40 small ops of a layer with less per-op cost than Python, ~25% of a bf16 step
    on 2 cores, and its bits are eager's, tested). The weights enter the trace as constants that alias the model's
    tensors, so in-place writes (perturb, restore, update, load) are seen; the packed kernel swaps its packed copy
    and so runs eager."""

    def __init__(self, model: nn.Module, kernel: str = "auto"):
        reason = unsupported(model)
        if reason:
            raise ValueError(f"generation.fast_decode=on cannot run this model: {reason} "
                             f"(use generation.fast_decode=auto)")
        c, inner = model.config, model.model
        # ES never differentiates the model, and a trace refuses constants that require grad
        model.requires_grad_(False)
        self.model, self.kernel = model, resolve_kernel(kernel, next(model.parameters()).dtype)
        self.embed, self.norm, self.rotary = inner.embed_tokens, inner.norm, inner.rotary_emb
        self.layers = [DecoderLayer(layer, self.kernel) for layer in inner.layers]
        self.head = Projection([model.lm_head], self.kernel)
        self.heads, self.kv_heads, self.hidden = c.num_attention_heads, c.num_key_value_heads, c.hidden_size
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        eos = model.generation_config.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        self.trace = self.kernel != "packed"
        self.states: dict[tuple[int, int], DecodeState] = {}

    def rope_tables(self, slots: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE as ``y cos + roll(y) sin'`` over all h + 2 kv heads of the q/k/v output at positions 0..slots-1, from
        the model's own rotary module (its scaling types included), in the model dtype: [slots, h + 2 kv, d] each.
        sin' is [-sin, sin] over the two halves (HF's rotate_half); the value heads get cos 1 and sin 0, which leaves
        them as they are, so one pass serves all heads and K and V leave it side by side."""
        cos, sin = (t[0] for t in self.rotary(like, torch.arange(slots, dtype=torch.long)[None]))
        half, rotated = self.head_dim // 2, self.heads + self.kv_heads
        sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)

        def over_heads(table: torch.Tensor, value_heads: float) -> torch.Tensor:  # the q and k heads, then the values
            kept = table.new_full((slots, self.kv_heads, self.head_dim), value_heads)
            return torch.cat((table[:, None].expand(-1, rotated, -1), kept), dim=1)

        return over_heads(cos, 1.0), over_heads(sin, 0.0)

    def forward(self, state: DecodeState, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                mask: torch.Tensor, length: int) -> torch.Tensor:
        """The last position's logits (float32) of ids [B, L = length] at RoPE positions [B, L], their K and V
        written to ``slots`` [L]; mask: additive [B, 1, L or 1, all slots], each query position's row repeated
        h / kv times when L > 1 (the query rows of a group, see below).

        Written for the fewest ops a layer, as the trace replays them one by one: shapes are plain ints (the batch
        from the state, L passed in), so the trace holds no size arithmetic; ``narrow``, not ``[:, :, a:b]``
        (one op, not one per dimension)."""
        B, L = state.batch, length
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        rows, hidden = B * L, self.hidden
        cos, sin = state.cos[positions], state.sin[positions]  # [B, L, h + 2 kv, d]
        x = self.embed(ids)
        for layer, cache in zip(self.layers, state.cache):
            # contiguous: the flash kernel, called by name, reads rows as if their last stride were 1 (mm_t's output
            # is transposed; passing it as is gave different bits run to run)
            y = layer.qkv.stacked(rms_norm(x, layer.input_norm, hidden).view(rows, -1))
            y = y.reshape(B, L, -1, d).contiguous()
            # RoPE, HF's half-split convention: x cos + [x2, x1] [-sin, sin]; roll gives [x2, x1]
            y = torch.addcmul(y * cos, y.roll(d // 2, dims=-1), sin)
            # keys and values taken from index_copy_'s result: the trace drops an in-place write nothing reads after
            cache = cache.index_copy_(2, slots, y.narrow(2, h, 2 * kv).transpose(1, 2))
            keys, values = cache.narrow(1, 0, kv), cache.narrow(1, kv, kv)
            # grouped-query attention as plain attention over the kv heads: the h / kv query heads of a group (HF's
            # repeat_kv order) become h / kv times the query rows
            q = y.narrow(2, 0, h).transpose(1, 2).reshape(B, kv, h // kv * L, d)
            out = flash_attention(q, keys, values, attn_mask=mask)[0].view(B, h, L, d)
            x = x + layer.o.stacked(out.transpose(1, 2).reshape(rows, h * d)).view(B, L, -1)
            gate_up = layer.gate_up.stacked(rms_norm(x, layer.post_norm, hidden).view(rows, -1))
            gate, up = (gate_up.narrow(1, start, n) for start, n in layer.gate_up.spans)
            x = x + layer.down.stacked(F.silu(gate) * up).view(B, L, -1)
        return self.head.stacked(rms_norm(x.select(1, L - 1), self.norm, hidden)).float()

    def _state(self, batch: int, width: int, max_new_tokens: int) -> DecodeState:
        slots = -(-(width + max_new_tokens) // SLOT_BUCKET) * SLOT_BUCKET
        key = (batch, slots)
        if key not in self.states:
            if len(self.states) >= STATES_KEPT:
                self.states.pop(next(iter(self.states)))
            self.states[key] = DecodeState(self, batch, slots)
        return self.states[key]

    def _decode_step(self, state: DecodeState) -> Callable:
        """The one-token step for this state's shape: traced at its first use when the kernel allows."""
        eager = lambda ids, pos, slot, mask: self.forward(state, ids, pos, slot, mask, 1)  # noqa: E731
        if state.step is None:
            if self.trace:
                B = state.batch
                example = (torch.zeros(B, 1, dtype=torch.long), torch.zeros(B, 1, dtype=torch.long),
                           torch.zeros(1, dtype=torch.long), state.mask)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # TracerWarnings: every value it bakes in is fixed per shape
                    state.step = torch.jit.trace(eager, example, check_trace=False)
            else:
                state.step = eager
        return state.step

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int, pad_token_id: int,
                 min_new_tokens: int = 0, repetition_penalty: float = 1.0,
                 stopped: Callable[[list[int]], bool] | None = None, stop_window: int = 0) -> torch.Tensor:
        """HF ``generate(do_sample=False)``'s contract on left-padded input_ids [B, W]: [B, W + T], T <= max_new_tokens
        generated tokens per row; a row is finished by EOS or by ``stopped(its last stop_window new ids)``, and padded
        with pad_token_id after."""
        B, W = input_ids.shape
        total = W + max_new_tokens
        state = self._state(B, W, max_new_tokens)
        step = self._decode_step(state)
        # positions as HF counts them under left padding: real tokens from 0; pads at 1 (masked anyway)
        prompt_pos = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
        next_pos = prompt_pos[:, -1] + 1
        # key slots open as they are written, prompt pads never; in the prefill causal too, and every query sees
        # itself, so a pad row stays finite (it is never read)
        mask = state.mask
        mask.fill_(float("-inf"))
        mask[..., :W].masked_fill_(attention_mask[:, None, None].bool(), 0.0)
        causal = torch.ones(W, mask.shape[-1], dtype=torch.bool).triu(1)
        prefill = mask.expand(B, 1, W, -1).masked_fill(causal, float("-inf"))
        prefill[..., torch.arange(W), torch.arange(W)] = 0.0
        prefill = prefill.repeat(1, 1, self.heads // self.kv_heads, 1)  # per query row of a group (forward)
        logits = self.forward(state, input_ids, prompt_pos, torch.arange(W), prefill, W)
        seqs = torch.full((B, total), pad_token_id, dtype=torch.long)
        seqs[:, :W] = input_ids
        done = torch.zeros(B, dtype=torch.bool)
        eos = torch.tensor(self.eos_ids, dtype=torch.long)
        steps = 0
        for t in range(max_new_tokens):
            if repetition_penalty != 1.0:
                seen = seqs[:, : W + t]
                score = logits.gather(1, seen)
                logits.scatter_(1, seen, torch.where(score < 0, score * repetition_penalty, score / repetition_penalty))
            if t < min_new_tokens and len(eos):
                logits[:, eos] = -float("inf")
            token = logits.argmax(-1).masked_fill(done, pad_token_id)
            seqs[:, W + t] = token
            steps = t + 1
            if len(eos):
                done |= torch.isin(token, eos)
            if stopped is not None:
                tail = seqs[:, max(W, W + steps - stop_window) : W + steps].tolist()
                for row in range(B):
                    if not done[row] and stopped(tail[row]):
                        done[row] = True
            if bool(done.all()) or steps == max_new_tokens:
                break
            mask[..., W + t] = 0.0
            # the graph as traced: the profiling executor's rewrites may treat its constants as fixed, and the weights
            # and KV buffers among them are written outside it
            with torch.jit.optimized_execution(False):
                logits = step(token[:, None], (next_pos + t)[:, None], torch.tensor([W + t]), mask)
        return seqs[:, : W + steps]
