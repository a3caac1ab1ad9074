"""The noise fingerprint (es_repro/es/fingerprint.py): one seed, one noise, on every process and across a resume."""
from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from es_repro.config import compose
from es_repro.es import fingerprint
from es_repro.es.noise import tensor_noise
from es_repro.run.log import RunLog
from es_repro.train import run_es
from es_repro.util import distributed
from es_repro.util.errors import RunStateError
from tests.helpers import make_cfg


def test_the_fingerprint_is_the_hash_of_the_reference_noise_as_a_parameter_draws_it():
    param = torch.zeros(fingerprint.REFERENCE_SHAPE, dtype=torch.bfloat16)
    eps = tensor_noise(param, 0, fingerprint.REFERENCE_SEED, "iid", "param")
    expected = hashlib.sha256(eps.float().numpy().tobytes()).hexdigest()[:16]
    assert fingerprint.noise_fingerprint(torch.device("cpu"), torch.bfloat16, "iid", "param") == expected


def test_the_fingerprint_follows_the_draw_dtype():
    cpu, f = torch.device("cpu"), fingerprint.noise_fingerprint
    # a bf16 model draws bf16 noise (noise_dtype=param) or fp32 noise (float32), as an fp32 model does
    assert f(cpu, torch.bfloat16, "iid", "param") != f(cpu, torch.bfloat16, "iid", "float32")
    assert f(cpu, torch.bfloat16, "iid", "float32") == f(cpu, torch.float32, "iid", "param")


def _rank(name: str, print_: str) -> dict:
    return {"fingerprint": print_, "host": "node1", "name": name, "sm_count": 132, "cuda": "12.8", "torch": "2.11"}


def test_ranks_that_draw_different_noise_are_refused_naming_each_device():
    fingerprint.check_ranks_agree([_rank("NVIDIA H100 80GB HBM3", "aa")] * 3)
    with pytest.raises(RunStateError, match=r"rank 0 on node1: NVIDIA H100 80GB HBM3 .* -> aa; "
                                            r"rank 1 on node1: NVIDIA A100-SXM4-80GB .* -> bb"):
        fingerprint.check_ranks_agree([_rank("NVIDIA H100 80GB HBM3", "aa"), _rank("NVIDIA A100-SXM4-80GB", "bb")])


def _agree_worker(rank: int, port: int, out: Path) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    distributed.init()
    cfg = make_cfg()
    mine = fingerprint.this_process(cfg)
    if rank == 1:  # a second GPU model, injected: its seeds would draw other noise
        mine = {**mine, "fingerprint": "0" * 16, "name": "NVIDIA L40S"}
    try:
        fingerprint.agreed_noise(cfg, None, distributed.all_gather_objects(mine))
        out.joinpath(f"rank{rank}.txt").write_text("accepted")
    except RunStateError as err:
        out.joinpath(f"rank{rank}.txt").write_text(str(err))
    distributed.shutdown()


def test_two_processes_compare_their_noise_and_both_refuse_a_mismatch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_agree_worker, args=(port, tmp_path), nprocs=2, join=True, start_method="spawn")
    for rank in (0, 1):
        message = tmp_path.joinpath(f"rank{rank}.txt").read_text()
        assert "draw different noise" in message and "NVIDIA L40S" in message and "rank 0 on" in message


def test_run_json_records_the_fingerprint_and_a_resume_with_other_noise_is_refused(tmp_path):
    run_es(make_cfg(["es.noise=iid", "es.generations=2", "checkpoint_every=1", "eval.kl_samples=0"]), tmp_path)
    noise = RunLog(tmp_path).info()["noise"]
    assert noise["fingerprint"] == fingerprint.noise_fingerprint(torch.device("cpu"), torch.float32, "iid", "param")
    assert noise["device"] == "cpu" and noise["torch"] == torch.__version__ and noise["name"]
    # as if trained on another GPU model: the relaunch (two more generations) must not continue silently
    info = json.loads((tmp_path / "run.json").read_text())
    info["noise"].update(fingerprint="feedfacefeedface", name="NVIDIA A100-SXM4-80GB", sm_count=108)
    info["status"] = "failed"  # killed before its end: a relaunch resumes it
    (tmp_path / "run.json").write_text(json.dumps(info))
    more = ["es.noise=iid", "es.generations=4", "checkpoint_every=1", "eval.kl_samples=0"]
    with pytest.raises(RunStateError, match="noise fingerprint feedfacefeedface on NVIDIA A100-SXM4-80GB"):
        run_es(make_cfg(more), tmp_path)
    assert [r["generation"] for r in RunLog(tmp_path).records("train")] == [1, 2]  # nothing trained over
    run_es(make_cfg(more + ["es.allow_noise_change=true"]), tmp_path)
    assert [r["generation"] for r in RunLog(tmp_path).records("train")] == [1, 2, 3, 4]
    assert RunLog(tmp_path).info()["noise"]["fingerprint"] == noise["fingerprint"]  # the record is this machine's


def test_the_override_does_not_move_the_run_directory():
    naming = compose(["es.allow_noise_change=true"], return_hydra_config=True).hydra.job.config.override_dirname
    assert "es.allow_noise_change" in naming.exclude_keys


def test_replay_refuses_other_noise_in_one_line_naming_both_devices_unless_allowed(tmp_path, capsys):
    """python -m es_repro.run.replay draws the fingerprint on its device first, as a resume does: a run trained on
    another device model is refused (exit 2, one line), and --allow-noise-change lets it through."""
    from es_repro.run.replay import main as replay_main

    run, here = tmp_path / "run", fingerprint.noise_fingerprint(torch.device("cpu"), torch.float32, "iid", "param")
    run_es(make_cfg(["es.noise=iid", "es.generations=2", "eval.kl_samples=0"]), run)
    assert replay_main([str(run), "--out", str(tmp_path / "same")]) == 0  # same device: replays
    info = json.loads((run / "run.json").read_text())
    info["noise"].update(fingerprint="feedfacefeedface", name="NVIDIA A100-SXM4-80GB", sm_count=108)
    (run / "run.json").write_text(json.dumps(info))
    capsys.readouterr()
    assert replay_main([str(run), "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("run error: this run was trained with noise fingerprint "
                                                         "feedfacefeedface on NVIDIA A100-SXM4-80GB (SMs 108")
    assert f"draw {here} on {fingerprint.device_facts(torch.device('cpu'))['name']}" in err  # this device
    assert err.endswith("Replay on the original GPU model, or accept the change with --allow-noise-change")
    assert not (tmp_path / "refused").exists()  # nothing written
    assert replay_main([str(run), "--out", str(tmp_path / "allowed"), "--allow-noise-change"]) == 0
    assert (tmp_path / "allowed" / "model.safetensors").is_file()
    assert "replaying with different noise (NVIDIA A100-SXM4-80GB ->" in capsys.readouterr().out
