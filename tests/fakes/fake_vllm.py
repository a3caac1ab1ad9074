"""A stand-in for the ``vllm`` package (logic tests of es_repro/engines/vllm/backend.py in an environment without vLLM).

``install()`` puts this module in sys.modules as ``vllm``. Its LLM mirrors the parts of vLLM's API the backend uses:
- the worker: the real ESWorkerExtension mixed into a FakeWorker (as vLLM mixes it into its Worker) over a plain HF
  model; ``model_runner.reload_weights`` / ``get_model().load_weights`` copy HF-named tensors into that model, so
  what the engine holds can be compared with the HF backend's parameters directly (``get_model()`` also lists the
  model's parameters and modules, as vLLM's model does);
- ``collective_rpc`` calls the worker method by name and refuses any argument that is not an int, float, string
  (or lists and string-keyed dicts of them): the boundary the real engine serializes;
- ``generate``: HF generate one prompt at a time (greedy or seeded sampling, stop strings, repetition penalty,
  EOS kept), so HFGenerator with generation.batch_size=1 computes the same thing; ``prompt_logprobs=0`` adds each
  prompt token's log-probability from one HF forward of the prompt, as HF's token_logprobs computes it;
- every call is appended to ``events`` (rpc name, "reset", "generate") and every SamplingParams is kept, so tests
  can check the order of weight writes and prefix-cache resets and what was asked of the engine.
"""
from __future__ import annotations

import dataclasses
import importlib
import sys
from types import ModuleType, SimpleNamespace

import torch

__version__ = "0.0-fake"


class SamplingParams:
    DEFAULTS = dict(n=1, temperature=1.0, top_p=1.0, top_k=0, seed=None, stop=None, max_tokens=16,
                    repetition_penalty=1.0, include_stop_str_in_output=False, skip_special_tokens=True, min_tokens=0,
                    ignore_eos=False, prompt_logprobs=None, detokenize=True)

    def __init__(self, **kwargs):
        unknown = set(kwargs) - set(self.DEFAULTS)
        if unknown:
            raise TypeError(f"SamplingParams got unexpected keywords {sorted(unknown)}")
        for k, v in {**self.DEFAULTS, **kwargs}.items():
            setattr(self, k, v)


class FakeModelRunner:
    def __init__(self, model):
        self.model = model
        self.loads: list[list[str]] = []  # names written by each reload/load
        self.paths: list[str] = []  # "reload" or "direct", per write

    def _copy(self, weights, path: str) -> None:
        params = dict(self.model.named_parameters(remove_duplicate=True))
        names = []
        with torch.no_grad():
            for name, tensor in weights:
                params[name].copy_(tensor)
                names.append(name)
        self.loads.append(names)
        self.paths.append(path)

    def reload_weights(self, weights_iterator=None, weights_path=None, is_checkpoint_format=True) -> None:
        assert weights_iterator is not None and is_checkpoint_format
        self._copy(weights_iterator, "reload")

    def get_model(self):
        return FakeEngineModel(self)


class FakeEngineModel:
    """What get_model() returns: load_weights writes into the HF model; its parameters and modules are listed."""

    def __init__(self, runner: FakeModelRunner):
        self.runner = runner

    def load_weights(self, weights) -> None:
        self.runner._copy(weights, "direct")

    def named_parameters(self, *args, **kwargs):
        return self.runner.model.named_parameters(*args, **kwargs)

    def modules(self):
        return self.runner.model.modules()


class FakeWorker:
    def __init__(self, model):
        self.model_runner, self.device, self.rank = FakeModelRunner(model), torch.device("cpu"), 0


def _primitive(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_primitive(v) for v in value)
    if isinstance(value, dict):  # msgpack maps: string keys, primitive values
        return all(isinstance(k, str) and _primitive(v) for k, v in value.items())
    return isinstance(value, (int, float, str))


class LLM:
    last: "LLM | None" = None
    reset_result = True  # tests set False to simulate a refused reset

    def __init__(self, model: str, **kwargs):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.kwargs = {"model": model, **kwargs}
        module, _, cls = kwargs["worker_extension_cls"].rpartition(".")
        extension = getattr(importlib.import_module(module), cls)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[kwargs["dtype"]]
        hf = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, local_files_only=True).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(kwargs.get("tokenizer") or model, local_files_only=True)
        self.worker = type("Worker", (FakeWorker, extension), {})(hf)
        self.events: list[str] = []
        self.params: list[SamplingParams] = []
        LLM.last = self

    @property
    def model(self):
        return self.worker.model_runner.model

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        assert isinstance(method, str), "the backend calls worker methods by name"
        assert _primitive(list(args)) and not kwargs, f"{method}: only ints, floats and strings may cross: {args}"
        self.events.append(method)
        return [getattr(self.worker, method)(*args)]

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        self.events.append("reset")
        return self.reset_result

    @torch.no_grad()
    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, **kwargs):
        self.events.append("generate")
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        self.params.extend(params)
        return [self._one(p["prompt_token_ids"], sp) for p, sp in zip(prompts, params)]

    def _one(self, ids: list[int], sp: SamplingParams):
        kwargs = dict(max_new_tokens=sp.max_tokens, pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                      repetition_penalty=sp.repetition_penalty, min_new_tokens=sp.min_tokens or None)
        if sp.stop:
            kwargs.update(stop_strings=list(sp.stop), tokenizer=self.tokenizer)
        if sp.temperature == 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k)
        with torch.random.fork_rng(devices=[]):
            if sp.seed is not None:
                torch.manual_seed(sp.seed)
            ids_t = torch.tensor([ids])  # with a mask, as HFGenerator passes it (the attention path depends on it)
            out = self.model.generate(input_ids=ids_t, attention_mask=torch.ones_like(ids_t), **kwargs)[0, len(ids):].tolist()
        eos = self.tokenizer.eos_token_id
        if eos in out and not sp.ignore_eos:
            out = out[: out.index(eos) + 1]
        completion = SimpleNamespace(token_ids=out, text=self.tokenizer.decode(out, skip_special_tokens=True))
        return SimpleNamespace(prompt_token_ids=ids, outputs=[completion],
                               prompt_logprobs=self._prompt_logprobs(ids, sp))

    def _prompt_logprobs(self, ids: list[int], sp: SamplingParams):
        if sp.prompt_logprobs is None:
            return None
        assert sp.prompt_logprobs == 0, "the backend asks for the actual tokens' log-probabilities only"
        from es_repro.engines.hf.generation import token_logprobs

        logprobs = token_logprobs(self.model, ids[:1], ids[1:]).tolist()
        return [None] + [{t: SimpleNamespace(logprob=lp)} for t, lp in zip(ids[1:], logprobs)]


@dataclasses.dataclass
class EngineArgs:
    """The EngineArgs fields the backend's placement check reads (vllm.engine.arg_utils.EngineArgs)."""
    model: str = ""
    device_ids: list | None = None


def install(monkeypatch) -> None:
    """Make ``import vllm`` (and importlib.util.find_spec("vllm")) see this module for the test's duration;
    ``vllm.engine.arg_utils`` holds the EngineArgs above."""
    monkeypatch.setitem(sys.modules, "vllm", sys.modules[__name__])
    arg_utils = ModuleType("vllm.engine.arg_utils")
    arg_utils.EngineArgs = EngineArgs
    monkeypatch.setitem(sys.modules, "vllm.engine", ModuleType("vllm.engine"))
    monkeypatch.setitem(sys.modules, "vllm.engine.arg_utils", arg_utils)
    LLM.last, LLM.reset_result = None, True
