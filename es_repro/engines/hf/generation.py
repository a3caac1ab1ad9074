"""Generation with HF transformers (used by the HF backend, es_repro/engines/hf/backend.py, and the RL baselines).

An HFGenerator turns task rows into completion strings: greedy for training and accuracy, sampled for KL.
Completions are cut right after the first stop string (e.g. "</answer>") and never include the prompt.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import CompileConfig, PreTrainedModel, PreTrainedTokenizerBase

from es_repro.tasks.base import Row

CACHES = ("dynamic", "static")  # generation.cache
COMPILE_MODES = ("auto", "on", "off")  # generation.compile
# generation.cache=static pads prompt widths to a multiple of this (left padding, masked): transformers sizes the
# static cache, and with it every compiled decode shape, by the width, so each new width would recompile
STATIC_WIDTH_BUCKET = 64


def render_prompt(row: Row, tokenizer: PreTrainedTokenizerBase, prompt_format: str) -> str:
    """raw: the row's prompt text (the paper's choice); chat: the tokenizer's chat template + assistant prefix."""
    if prompt_format == "raw":
        return row["prompt"]
    if tokenizer.chat_template is None:
        raise ValueError("task.prompt_format=chat but the tokenizer has no chat template; use task.prompt_format=raw")
    text = tokenizer.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
    return text + row.get("assistant_prefix", "")


def model_repetition_penalty(model: PreTrainedModel) -> float:
    """The penalty HF generate applies by default: the model's generation_config value, else 1.0 (none)."""
    value = getattr(getattr(model, "generation_config", None), "repetition_penalty", None)
    return float(value) if value is not None else 1.0


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """Keep text up to and including the earliest stop string."""
    ends = [text.find(s) + len(s) for s in stop_strings if s in text]
    return text[: min(ends)] if ends else text


class HFGenerator:
    """Batched generation with HF transformers: left padding, stop strings, length-sorted batches."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, prompt_format: str,
                 max_new_tokens: int, stop_strings: Sequence[str] = (), batch_size: int = 32, sort_by_length: bool = True,
                 repetition_penalty: float | None = None, cache: str = "dynamic", compile: str = "auto"):
        if cache not in CACHES or compile not in COMPILE_MODES:
            raise ValueError(f"cache={cache!r} / compile={compile!r}: allowed {CACHES} / {COMPILE_MODES}")
        self.model, self.tokenizer = model, tokenizer
        self.cache, self.compile = cache, compile
        self.min_new_tokens = 0  # the benchmark forces full-length generations with it
        self.decoder = None  # a FastDecoder (es_repro/engines/hf/decode.py): greedy calls go through it, not generate
        self.calls: list[tuple[int, int, int]] = []  # (batch, padded prompt width, decode steps) per generate call
        self.repetition_penalty = model_repetition_penalty(model) if repetition_penalty is None else repetition_penalty
        self.prompt_format = prompt_format
        self.max_new_tokens = max_new_tokens
        self.stop_strings = tuple(stop_strings)
        self.batch_size = batch_size
        self.sort_by_length = sort_by_length
        self.generated_tokens = 0  # running count, for throughput reports

    def prompts(self, rows: Sequence[Row]) -> list[str]:
        return [render_prompt(r, self.tokenizer, self.prompt_format) for r in rows]

    @torch.no_grad()
    def generate(self, rows: Sequence[Row], *, sample: bool = False, temperature: float = 1.0,
                 max_new_tokens: int | None = None, one_batch: bool = False) -> list[str]:
        """Completions in row order. one_batch: all rows in a single generate call, in the given order
        (population-batched ES needs each member's rows together)."""
        texts = self.prompts(rows)
        keep_order = one_batch or not self.sort_by_length
        order = list(range(len(texts))) if keep_order else sorted(range(len(texts)), key=lambda i: len(texts[i]))
        step = len(texts) if one_batch else self.batch_size
        out: list[str] = [""] * len(texts)
        for start in range(0, len(order), step):
            idx = order[start : start + step]
            for i, completion in zip(idx, self._generate_batch([texts[i] for i in idx], sample, temperature, max_new_tokens)):
                out[i] = completion
        return out

    def _generate_batch(self, texts: list[str], sample: bool, temperature: float, max_new_tokens: int | None) -> list[str]:
        _, completions = self._generate_ids(texts, sample, temperature, max_new_tokens)
        decoded = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        return [cut_at_stop(t, self.stop_strings) for t in decoded]

    def _generate_ids(self, texts: list[str], sample: bool, temperature: float, max_new_tokens: int | None
                      ) -> tuple[list[list[int]], list[list[int]]]:
        """Prompt ids (unpadded) and completion ids (up to and including EOS, no padding) of one batch."""
        # a static cache is sized by the padded width: widths in buckets keep the compiled decode to a few shapes
        bucket = STATIC_WIDTH_BUCKET if self.cache == "static" else None
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, pad_to_multiple_of=bucket,
                             add_special_tokens=False).to(self.model.device)
        kwargs = dict(max_new_tokens=max_new_tokens or self.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        if sample:  # the model's own distribution (KL's k3 estimate needs it): no penalty
            kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0, repetition_penalty=1.0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None,
                          repetition_penalty=self.repetition_penalty)
        if self.stop_strings:
            kwargs.update(stop_strings=list(self.stop_strings), tokenizer=self.tokenizer)
        if self.min_new_tokens:
            kwargs.update(min_new_tokens=min(self.min_new_tokens, kwargs["max_new_tokens"]))
        kwargs.update(self._cache_kwargs())
        width = enc["input_ids"].shape[1]
        if self.decoder is not None and not sample:
            out = self._fast_generate(enc, kwargs)
        else:
            out = self.model.generate(**enc, **kwargs)
        self.calls.append((len(texts), width, out.shape[1] - width))
        prompts = [row[mask.bool()].tolist() for row, mask in zip(enc["input_ids"], enc["attention_mask"])]
        completions = [_trim(row[width:].tolist(), self.tokenizer.eos_token_id, self.tokenizer.pad_token_id) for row in out]
        self.generated_tokens += sum(map(len, completions))
        return prompts, completions

    def _fast_generate(self, enc, kwargs: dict) -> torch.Tensor:
        """The greedy call through self.decoder, with generate's settings; a row stops once its completion holds a
        stop string (what generate's stop criterion ends on; the completion is cut there either way)."""
        stopped, window = None, 0
        if self.stop_strings:
            stops = self.stop_strings
            window = max(map(len, stops)) + 4  # tokens: every token adds at least one character
            stopped = lambda ids: any(s in self.tokenizer.decode(ids, skip_special_tokens=True) for s in stops)  # noqa: E731
        return self.decoder.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=kwargs["max_new_tokens"],
                                     pad_token_id=kwargs["pad_token_id"], min_new_tokens=kwargs.get("min_new_tokens", 0),
                                     repetition_penalty=self.repetition_penalty, stopped=stopped, stop_window=window)

    def _cache_kwargs(self) -> dict:
        """generation.cache=static: a preallocated KV cache, so every decode step has the same shapes; transformers
        then compiles the decode step (CUDA graphs on GPU: mode reduce-overhead). Weights are only ever changed in
        place (perturb/restore/update), so the captured graphs keep reading the current weights.
        generation.compile: auto = transformers' rule (compile with a static cache on CUDA only), on = on CPU too,
        off = never."""
        kwargs: dict = {}
        if self.cache == "static":
            kwargs["cache_implementation"] = "static"
        if self.compile == "off":
            kwargs["disable_compile"] = True
        elif self.compile == "on":
            config = CompileConfig()
            config._compile_all_devices = True  # transformers' own switch for compiling off-GPU
            kwargs["compile_config"] = config
        return kwargs

    def generate_ids(self, rows: Sequence[Row], *, temperature: float, max_new_tokens: int | None = None
                     ) -> list[tuple[list[int], list[int]]]:
        """Sampled (prompt_ids, completion_ids) pairs, for scoring log-probabilities (KL)."""
        texts = self.prompts(rows)
        pairs: list[tuple[list[int], list[int]]] = []
        for start in range(0, len(texts), self.batch_size):
            prompts, completions = self._generate_ids(texts[start : start + self.batch_size], True, temperature, max_new_tokens)
            pairs.extend(zip(prompts, completions))
        return pairs


@torch.no_grad()
def token_logprobs(model: PreTrainedModel, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    """log p(completion token | prefix) for each completion token, in float32."""
    ids = torch.tensor([prompt_ids + completion_ids], device=model.device)
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    return F.log_softmax(logits, dim=-1).gather(-1, ids[0, len(prompt_ids) :, None].to(logits.device))[:, 0]


LOGIT_BYTES_PER_BATCH = 2**30  # batch_token_logprobs: the most logits one forward may hold


@torch.no_grad()
def batch_token_logprobs(model: PreTrainedModel, pairs: Sequence[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
    """token_logprobs of every (prompt, completion) pair, several pairs per forward: right-padded (a real token
    never attends to a later pad, and positions count from 0 as unpadded), similar lengths together, as many rows
    as keep the forward's logits under LOGIT_BYTES_PER_BATCH. Equal to one forward per pair up to float rounding."""
    out: list[torch.Tensor | None] = [None] * len(pairs)
    lengths = [len(prompt) + len(completion) for prompt, completion in pairs]
    order = sorted(range(len(pairs)), key=lengths.__getitem__)
    row_bytes = model.get_output_embeddings().weight.shape[0] * next(model.parameters()).element_size()  # per token
    start = 0
    while start < len(order):
        end = start + 1  # grow the batch while the widest row's logits for all rows stay under the budget
        while end < len(order) and (end - start + 1) * lengths[order[end]] * row_bytes <= LOGIT_BYTES_PER_BATCH:
            end += 1
        width = lengths[order[end - 1]]  # sorted: the last row is the widest
        batch = [pairs[k][0] + pairs[k][1] for k in order[start:end]]
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)], mask[row, : len(seq)] = torch.tensor(seq), 1
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        for row, k in enumerate(order[start:end]):
            prompt, completion = pairs[k]
            rows = logits[row, len(prompt) - 1 : len(prompt) + len(completion) - 1].float()
            target = torch.tensor(completion, device=rows.device)[:, None]
            out[k] = F.log_softmax(rows, dim=-1).gather(-1, target)[:, 0]
        start = end
    return out


def _trim(ids: list[int], eos_id: int | None, pad_id: int | None) -> list[int]:
    """Cut a generated row after its first EOS (kept) or at its first padding token."""
    if eos_id is not None and eos_id in ids:
        ids = ids[: ids.index(eos_id) + 1]
    elif pad_id is not None and pad_id in ids:
        ids = ids[: ids.index(pad_id)]
    return ids
