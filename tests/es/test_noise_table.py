"""es.noise=table (es_repro/es/noise_table.py): the table's bits and the offsets are fixed constants (the same on every
machine), every noise user reads the table's bits, and a table run records, resumes and replays by its identity."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from es_repro.config import ConfigError
from es_repro.engines.hf.backend import build
from es_repro.es import fingerprint
from es_repro.es import noise_table as nt
from es_repro.es.noise import TableNoise, keep_noise_for_update, noise_mode, tensor_noise
from es_repro.run.checkpoint import latest_checkpoint
from es_repro.run.log import RunLog
from es_repro.run.replay import main as replay_main
from es_repro.tasks import task_from_config
from es_repro.train import run_es
from tests.helpers import make_cfg

SMALL = ["es.noise=table", "es.noise_table_values=65536", "es.noise_table_chunk=256"]


def test_splitmix64_is_the_reference_generator():
    # splitmix64's published first outputs from state 0 and 1 (Vigna's C code: z += 0x9e3779b97f4a7c15, ...)
    assert nt.splitmix64(np.array([0, 1], dtype=np.uint64)).tolist() == [0xE220A8397B1DCDAF, 0x910A2DEC89025CC1]


def test_the_table_is_the_same_bits_on_every_machine():
    small = nt.build_table(1 << 16)
    assert nt.table_hash(small) == "084724511a3bac41"
    assert small[:4].tolist() == [0.9870427846908569, 0.1713990867137909, 0.22035729885101318, -0.9340858459472656]
    table, digest = nt.host_table(1 << 26)  # the default table, built or read back from the cache
    assert digest == nt.table_hash(table) == "d74ba971289ac33c"


def test_the_tables_values_are_standard_normals():
    t = nt.build_table(1 << 18).astype(np.float64)
    assert abs(t.mean()) < 5 / math.sqrt(len(t)) and abs(t.std() - 1) < 0.01
    x = np.sort(t)
    cdf = 0.5 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x]))
    assert np.abs(cdf - np.arange(1, len(x) + 1) / len(x)).max() < 1.63 / math.sqrt(len(x))  # KS at the 1% level


def test_the_logarithm_uses_basic_operations_and_matches_libm():
    s = np.random.default_rng(0).random(10**5) + 1e-300
    assert np.max(np.abs(nt._log(s) - np.log(s)) / np.abs(np.log(s))) < 4e-15


def test_offsets_of_known_triples_are_fixed_constants():
    assert nt.chunk_offsets(0, 0, 3, 1 << 26, 4096).tolist() == [54091448, 44351745, 7166103]
    assert nt.chunk_offsets(12345, 7, 3, 1 << 26, 4096).tolist() == [24728630, 8309260, 43344616]
    assert nt.chunk_offsets(2**31 - 2, 290, 2, 1 << 16, 256).tolist() == [35538, 56981]


def test_a_tensors_noise_is_the_concatenation_of_its_chunks():
    values, chunk = 1 << 16, 256
    table = nt.host_table(values)[0]
    like = torch.zeros(3, 300)  # 900 values: four chunks, the last one cut
    eps = tensor_noise(like, 5, 77, TableNoise(values, chunk), "float32")
    offsets = nt.chunk_offsets(77, 5, 4, values, chunk)
    expected = np.concatenate([table[o:o + chunk] for o in offsets])[:900].reshape(3, 300)
    assert torch.equal(eps, torch.from_numpy(expected))
    bf16 = tensor_noise(like.bfloat16(), 5, 77, TableNoise(values, chunk))  # noise_dtype=param: the table rounded
    assert torch.equal(bf16, eps.bfloat16())
    assert not torch.equal(tensor_noise(like, 6, 77, TableNoise(values, chunk), "float32"), eps)  # another tensor


def test_the_settings_come_from_the_config_and_bad_ones_are_refused():
    mode = noise_mode(make_cfg(SMALL).es)
    assert (mode.values, mode.chunk, mode.device_independent) == (65536, 256, True)
    with pytest.raises(ConfigError, match="es.noise_table_values=300 is not allowed; it must be at least twice"):
        make_cfg(["es.noise=table", "es.noise_table_values=300", "es.noise_table_chunk=256"])
    with pytest.raises(ConfigError, match="es.noise='gauss' is not allowed; choose one of: iid, correlated, table"):
        make_cfg(["es.noise=gauss"])
    with pytest.raises(ConfigError, match="es.noise=table cannot be combined with es.update=qes"):
        make_cfg(["es.update=qes", *SMALL])


def test_the_noise_cache_keeps_nothing_for_the_table():
    params = [torch.zeros(4)]
    assert keep_noise_for_update("auto", params, "param", 2, "iid")
    assert not keep_noise_for_update("auto", params, "param", 2, TableNoise(1 << 16, 256))


def test_the_hf_engine_perturbs_and_updates_with_the_tables_bits():
    cfg = make_cfg(SMALL + ["model.dtype=float32"])
    backend = build(cfg, task_from_config(cfg.task))
    w = backend.weights
    before = [p.clone() for p in w.params]
    w.perturb(99, 0.5)
    table = TableNoise(65536, 256)
    for i, (p, b) in enumerate(zip(w.params, before)):
        assert torch.equal(p, b + (0.5 * tensor_noise(b, i, 99, table, "float32"))), i
    w.restore()
    backend.apply_update([(99, 0.25), (3, -0.5)])
    for i, (p, b) in enumerate(zip(w.params, before)):
        delta = 0.25 * tensor_noise(b, i, 99, table, "float32") + -0.5 * tensor_noise(b, i, 3, table, "float32")
        assert torch.allclose(p, b + delta, atol=1e-6), i
        assert not torch.equal(p, b)


def test_the_fingerprint_of_the_table_is_device_independent_and_recorded(tmp_path):
    cfg = make_cfg(SMALL)
    mine = fingerprint.this_process(cfg)
    assert mine["table"] == {"mode": "table", "values": 65536, "chunk": 256,
                             "table_sha256": nt.table_hash(nt.build_table(65536))}
    # the reference noise is read from the table: the same hash whichever device reads it (CUDA: test_gpu.py)
    assert mine["fingerprint"] == fingerprint.noise_fingerprint(torch.device("cpu"), torch.float32,
                                                                noise_mode(cfg.es), "param")


def test_a_table_run_records_its_table_resumes_anywhere_and_replay_checks_the_identity(tmp_path, capsys):
    run, cfg = tmp_path / "run", make_cfg(SMALL + ["es.generations=2", "checkpoint_every=1", "eval.kl_samples=0"])
    run_es(cfg, run)
    info = json.loads((run / "run.json").read_text())
    assert info["noise"]["table"]["table_sha256"] == nt.table_hash(nt.build_table(65536))

    # trained "on another GPU model": the table's noise is the same there, so a resume needs no flag and lands on
    # the uninterrupted run's weights
    info["noise"].update(name="NVIDIA A100-SXM4-80GB", sm_count=108, device="cuda:0")
    info["status"] = "failed"
    (run / "run.json").write_text(json.dumps(info))
    more = SMALL + ["es.generations=4", "checkpoint_every=1", "eval.kl_samples=0"]
    run_es(make_cfg(more), run)
    run_es(make_cfg(more), tmp_path / "straight")
    theta = load_file(latest_checkpoint(run) / "model.safetensors")
    straight = load_file(latest_checkpoint(tmp_path / "straight") / "model.safetensors")
    assert theta.keys() == straight.keys() and all(torch.equal(theta[k], straight[k]) for k in theta)

    assert replay_main([str(run), "--out", str(tmp_path / "replayed")]) == 0
    replayed = load_file(tmp_path / "replayed" / "model.safetensors")
    assert all(torch.equal(replayed[k], theta[k]) for k in theta)

    info = json.loads((run / "run.json").read_text())
    info["noise"]["table"]["table_sha256"] = "0123456789abcdef"  # tampered
    (run / "run.json").write_text(json.dumps(info))
    capsys.readouterr()
    assert replay_main([str(run), "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained with the noise table" in err[0] and "0123456789abcdef" in err[0]
    assert err[0].endswith("accept the change with --allow-noise-change")
    assert replay_main([str(run), "--out", str(tmp_path / "allowed"), "--allow-noise-change"]) == 0
    assert RunLog(run).info()["noise"]["table"]["table_sha256"] == "0123456789abcdef"  # replay writes no run.json


def test_low_rank_factors_are_read_from_the_table():
    """es.lowrank with es.noise=table: A then B are one (out + in) x r noise of the tensor, read from the table."""
    from es_repro.engines.lowrank import LowRankESWeights, lowrank_factors

    mode, w = TableNoise(1 << 16, 256), torch.zeros(7, 5)
    a, b = lowrank_factors(w, 3, 11, 2, mode)
    flat = tensor_noise(torch.zeros(24), 3, 11, mode, "float32")
    assert torch.equal(a, flat[:14].view(7, 2)) and torch.equal(b, flat[14:].view(5, 2))
    assert not torch.equal(a, lowrank_factors(w, 3, 11, 2, "iid")[0])
    cfg = make_cfg(SMALL + ["es.lowrank=1"])
    backend = build(cfg, task_from_config(cfg.task))
    assert isinstance(backend.weights, LowRankESWeights) and backend.weights.noise_mode.name == "table"
    with pytest.raises(ConfigError, match="es.noise=correlated cannot be combined with es.lowrank=1"):
        make_cfg(["es.noise=correlated", "es.lowrank=1"])


def test_a_stacked_read_equals_each_members_own_read():
    """table_noise_stack (the population engine builds every member's factors of a tensor at once) gives each seed
    the bits of its own read, for a tensor shorter than a chunk and one that ends inside its last chunk."""
    from es_repro.es.noise_table import table_noise, table_noise_stack

    for shape in ((300, 2), (4097,)):
        stack = table_noise_stack(shape, 3, [11, 12, 11], 1 << 20, 1024, torch.float32, torch.device("cpu"))
        assert stack.shape == (3, *shape)
        for row, seed in zip(stack, (11, 12, 11)):
            assert torch.equal(row, table_noise(shape, 3, seed, 1 << 20, 1024, torch.float32, torch.device("cpu")))
        assert not torch.equal(stack[0], stack[1])
