"""generation.repetition_penalty: greedy decoding against a hand-written penalised argmax, the model's own value
as the default (what the release's generate(do_sample=False) used), and the value recorded for run.json."""
from __future__ import annotations

import pytest
import torch

from es_repro.config import ConfigError, validate
from es_repro.engines.hf.backend import HFBackend
from es_repro.engines.hf.generation import HFGenerator
from es_repro.models.tiny import build_tiny_model
from tests.helpers import make_cfg

ROWS = [{"prompt": "aaaa bbbb aaaa", "target": ""}, {"prompt": "xyz xyz xyz xyz", "target": ""}]
NEW = 12


def _penalised_greedy(model, prompt_ids: list[int], penalty: float, steps: int) -> list[int]:
    """The CTRL penalty by its definition: every token already in the sequence has its logit divided by the
    penalty when positive, multiplied when negative; then argmax. No cache, one full forward per token."""
    ids = list(prompt_ids)
    for _ in range(steps):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].clone()
        seen = torch.tensor(sorted(set(ids)))
        logits[seen] = torch.where(logits[seen] > 0, logits[seen] / penalty, logits[seen] * penalty)
        ids.append(int(logits.argmax()))
    return ids[len(prompt_ids):]


def _generator(model, tok, penalty):
    tok.padding_side = "left"
    return HFGenerator(model, tok, prompt_format="raw", max_new_tokens=NEW, batch_size=1, repetition_penalty=penalty)


@pytest.mark.parametrize("penalty", [1.0, 3.0])
def test_greedy_ids_equal_the_penalised_argmax(penalty):
    model, tok = build_tiny_model(seed=3)
    model.generation_config.eos_token_id = None  # run all NEW steps so every step is compared
    gen = _generator(model, tok, penalty)
    for row in ROWS:
        prompt_ids = tok(row["prompt"], add_special_tokens=False)["input_ids"]
        _, completions = gen._generate_ids([row["prompt"]], False, 1.0, None)
        assert completions[0] == _penalised_greedy(model, prompt_ids, penalty, NEW)


def test_the_penalty_changes_outputs_and_none_means_the_models_own_value():
    model, tok = build_tiny_model(seed=3)
    plain, strong = _generator(model, tok, 1.0).generate(ROWS), _generator(model, tok, 3.0).generate(ROWS)
    assert plain != strong  # the setting is not a no-op on this model (else the test above proves nothing)
    model.generation_config.repetition_penalty = 3.0
    default = _generator(model, tok, None)
    assert default.repetition_penalty == 3.0 and default.generate(ROWS) == strong
    model.generation_config.repetition_penalty = None
    assert _generator(model, tok, None).repetition_penalty == 1.0


def test_sampling_for_kl_ignores_the_penalty():
    model, tok = build_tiny_model(seed=3)
    outs = []
    for penalty in (1.0, 3.0):
        torch.manual_seed(0)
        outs.append(_generator(model, tok, penalty).generate_ids(ROWS, temperature=1.0))
    assert outs[0] == outs[1]


def test_the_value_is_described_for_run_json_and_validated():
    model, tok = build_tiny_model(seed=3)
    model.generation_config.repetition_penalty = 1.05
    assert HFBackend(model, tok, _generator(model, tok, None)).describe()["repetition_penalty"] == 1.05
    assert make_cfg(["generation.repetition_penalty=1.1"]).generation.repetition_penalty == 1.1
    with pytest.raises(ConfigError, match="generation.repetition_penalty"):
        validate(make_cfg(["generation.repetition_penalty=0"]))


@pytest.mark.slow
@pytest.mark.parametrize("cache, compile", [("static", "off"), ("static", "on")])
def test_static_cache_and_compiled_decode_give_the_eager_outputs_under_in_place_weight_changes(cache, compile):
    """The compiled path's promise: same greedy ids as eager decoding, also after the weights change in place
    (a perturbation, then the exact restore), which is what the ES loop does between members."""
    from es_repro.engines.weights import ESWeights

    torch._dynamo.reset()
    model, tok = build_tiny_model(seed=3)
    eager = _generator(model, tok, 1.0)
    fast = HFGenerator(model, tok, prompt_format="raw", max_new_tokens=NEW, batch_size=2, repetition_penalty=1.0,
                       cache=cache, compile=compile)
    eager.batch_size = 2
    weights = ESWeights(model, "iid")
    seen = []
    for seed in (None, 7, None):  # base, a member, base again
        if seed is not None:
            weights.perturb(seed, 0.05)
        seen.append(fast.generate(ROWS))
        assert seen[-1] == eager.generate(ROWS)
        weights.restore()
    assert seen[0] == seen[2] and seen[0] != seen[1]  # the perturbation reached the compiled decode
    assert hasattr(model, "_compiled_call") == (compile == "on")  # transformers compiled the decode step (or not)


@pytest.mark.slow
def test_the_compiled_decode_compiles_once_for_every_prompt_width_in_a_bucket():
    """Prompts of 4 different widths (one 64-token bucket) reuse the graph the first call compiled; without the
    buckets the second width sizes another static cache and compiles again (measured: 2 graphs, not 1), and dynamo
    falls back to eager past its recompile limit."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, tok = build_tiny_model(seed=3)
    tok.padding_side = "left"
    fast = HFGenerator(model, tok, prompt_format="raw", max_new_tokens=4, batch_size=2, repetition_penalty=1.0,
                       cache="static", compile="on")
    graphs = []
    for words in (2, 5, 9, 12):
        fast.generate([{"prompt": " ".join(["ab"] * words), "target": ""}, {"prompt": "xy", "target": ""}])
        graphs.append(counters["stats"]["unique_graphs"])
    assert {width for _, width, _ in fast.calls} == {64}  # four prompt widths, one padded width
    assert graphs == [graphs[0]] * 4 and graphs[0] >= 1  # compiled by the first call, never again
