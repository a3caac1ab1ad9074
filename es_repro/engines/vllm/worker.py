"""The ES side of a vLLM worker (generation.backend=vllm; the driver is es_repro/engines/vllm/backend.py).

vLLM mixes ESWorkerExtension into its Worker class (``worker_extension_cls``); the driver calls its methods by
name through ``llm.collective_rpc``, and only ints, floats and strings cross that boundary: weights and noise never
leave the worker. The worker keeps an fp32 master in the HF model's parameter layout (the names, shapes and order of
``named_parameters(remove_duplicate=True)``), so tensor index i, and with it the noise of every member, is the HF
backend's. A weight change writes HF-named tensors through the model's own ``load_weights`` (which fuses q/k/v and
gate/up, skips a tied head and slices for tensor parallelism):
- ``reload`` (default): ``model_runner.reload_weights(..., is_checkpoint_format=True)``. vLLM re-runs its
  post-load processing (on CPU it repacks every linear weight for its GEMM kernels and leaves ``layer.weight``
  empty) and copies the result into the engine's existing tensors, so CUDA-graph pointers stay valid.
- ``direct``: ``model.load_weights`` into the engine's tensors as they are: only where the engine keeps plain
  weights (CUDA, unquantized); on CPU it would write into the emptied tensors.
The perturbation uses ESWeights' arithmetic on cast(master), so the written weights equal the HF backend's bit for
bit (es_repro/engines/weights.py).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import torch
from safetensors.torch import save_file

from es_repro.engines.master import MODEL_FILE, Master
from es_repro.engines.weights import master_copy
from es_repro.es.update_rules import build_update_rule
from es_repro.models.loading import DTYPES

Tensors = Iterator[tuple[str, torch.Tensor]]


def hf_master(model_dir: str, dtype: torch.dtype, device: torch.device,
              master_device: str = "auto") -> tuple[list[str], list[torch.Tensor]]:
    """The fp32 master as the HF backend builds it: the checkpoint loaded by transformers in the model dtype, each
    unique parameter then copied to fp32 (so a bf16 run's master is fp32(bf16(checkpoint)), as in ESWeights),
    beside the engine or, with es.master_device=cpu, in pinned CPU memory (7B/8B beside an engine on 80 GB)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
    named = list(model.named_parameters(remove_duplicate=True))
    return [n for n, _ in named], [master_copy(p.detach().to(device), master_device) for _, p in named]


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
        for i, (name, m) in enumerate(zip(self.names, self.master)):
            w = m.to(device=self.device, dtype=self.dtype, copy=True)  # copy: an fp32 master on the device would alias
            if seed is not None:
                w.add_(scale * self.noise(i, seed))
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
        save_file({n: w.contiguous() for n, w in self.working()}, path / MODEL_FILE, metadata={"format": "pt"})

    def load(self, path: Path) -> None:
        super().load(path)
        self.restore()


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


class ESWorkerExtension:
    """Mixed into vLLM's Worker: ``self.model_runner``, ``self.device`` and ``self.rank`` are the worker's. Names
    start with es_ (vLLM refuses an extension attribute the Worker already has)."""

    def es_init(self, model_dir: str, dtype: str, noise_mode: str, noise_dtype: str, update: str, decay: float,
                momentum: float, weight_write: str, master_device: str = "auto") -> int:
        """Build the master for this worker (after the engine has taken its memory); returns the tensor count."""
        torch_dtype, device = DTYPES[dtype], torch.device(self.device)
        names, master = hf_master(model_dir, torch_dtype, device, master_device)
        rule = build_update_rule(SimpleNamespace(update=update, decay=decay, momentum=momentum))
        self._es_master = EngineMaster(names, master, torch_dtype, noise_mode, noise_dtype, rule,
                                       self._es_writer(weight_write), device)
        self._es_master.restore()  # the engine holds cast(master) from the start, whatever its own loader rounded
        return len(names)

    def _es_writer(self, weight_write: str) -> Callable[[Tensors], None]:
        if weight_write == "reload":
            def reload(tensors: Tensors) -> None:
                self.model_runner.reload_weights(weights_iterator=tensors, is_checkpoint_format=True)
                refresh_tied_head(self.model_runner.get_model())
            return reload
        if weight_write == "direct":
            return lambda tensors: self.model_runner.get_model().load_weights(weights=tensors)
        raise ValueError(f"generation.vllm.weight_write={weight_write!r} is not one of ('reload', 'direct')")

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
        """model.safetensors: cast(master) in HF names (the export, and the evaluation's HF copy)."""
        if self.rank == 0:
            self._es_master.save_model(Path(path))

    def es_load_state(self, path: str) -> None:
        self._es_master.load(Path(path))
