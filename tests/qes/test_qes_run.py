"""QES through the whole loop (train_es.run_es, tiny random model, synthetic task): run.json names the forward
path, the log holds one (seed, pair coefficient) per mirrored pair, and a resumed run and a replay from the log
reproduce the codes bit for bit; config validation names the field and the allowed values."""
from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from es_repro.config import ConfigError
from es_repro.qes import backend as qes_backend
from es_repro.run.checkpoint import latest_checkpoint
from es_repro.run.log import RunLog
from es_repro.run.replay import main as replay_main
from es_repro.train import run_es
from tests.helpers import make_cfg

QES = ["es.update=qes", "es.noise=iid", "es.sigma=0.5", "es.alpha=0.2", "es.generations=5", "checkpoint_every=2", "eval.kl_samples=0"]


def _codes(path):
    state = load_file(path / "model.safetensors")
    return {k: v for k, v in state.items() if k.endswith(".qweight")}


@pytest.mark.parametrize("residual", ["replay", "full"])
def test_qes_run_resumes_and_replays_bit_for_bit(tmp_path, residual, monkeypatch):
    cfg = make_cfg(QES + [f"es.qes.residual={residual}", "es.qes.window=3", "es.qes.init_residual=uniform"])
    run_es(cfg, tmp_path / "full")
    log = RunLog(tmp_path / "full")
    info = log.info()
    assert info["backend"]["name"] == "qes" and info["backend"]["forward_path"].startswith("dequantized")
    assert info["backend"]["quantization"]["source"] == "rtn" and info["backend"]["residual"] == residual
    train = log.records("train")
    assert len(train) == 5 and all(len(r["update"]) == 3 for r in train)  # N=6: three mirrored pairs
    assert all(r["signs"] == [1, -1] * 3 and r["seeds"][0::2] == r["seeds"][1::2] for r in train)
    assert all(r["coeffs"][0::2] == [-c for c in r["coeffs"][1::2]] for r in train)
    assert any(r["codes_changed_frac"] > 0 for r in train)
    final_dir = latest_checkpoint(tmp_path / "full")
    final = _codes(final_dir)
    assert (final_dir / "qes_state.json").is_file()
    assert (final_dir / "qes_residual.safetensors").is_file() == (residual == "full")

    # an interruption in generation 4 (after the generation-2 checkpoint and generation 3's log line), then a relaunch
    calls = {"n": 0}
    real = qes_backend.QESBackend.member_rewards

    def crashing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("simulated kill")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(qes_backend.QESBackend, "member_rewards", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_es(cfg, tmp_path / "resumed")
    assert len(RunLog(tmp_path / "resumed").records("train")) == 3
    monkeypatch.setattr(qes_backend.QESBackend, "member_rewards", real)
    run_es(cfg, tmp_path / "resumed")
    resumed = _codes(latest_checkpoint(tmp_path / "resumed"))
    assert final.keys() == resumed.keys() and all((final[k] == resumed[k]).all() for k in final)

    # replay: base model + the log, through the backend named by the run's config
    replay_main([str(tmp_path / "full"), "--out", str(tmp_path / "replayed")])
    replayed = _codes(tmp_path / "replayed")
    assert all((final[k] == replayed[k]).all() for k in final)
    assert json.loads((tmp_path / "replayed" / "config.json").read_text())["quantization_config"]["quant_method"] == "gptq"


def test_qes_run_from_a_gptq_directory(tmp_path):
    """model=hf with model.path at a GPTQ checkpoint (here: a QES export) loads the codes instead of quantizing."""
    run_es(make_cfg(QES + ["es.generations=2", "es.qes.bits=8", "eval.every=0"]), tmp_path / "a")
    ckpt = latest_checkpoint(tmp_path / "a")
    cfg = make_cfg(QES + ["es.generations=1", "es.qes.bits=8", "model=hf", f"model.path={ckpt}", "model.dtype=float32",
                          "model.device=cpu", "model.name=tiny-int8"])
    run_es(cfg, tmp_path / "b")
    assert RunLog(tmp_path / "b").info()["backend"]["quantization"]["source"] == "gptq"
    with pytest.raises(ValueError, match="es.qes.bits=4 but the GPTQ checkpoint"):
        run_es(make_cfg(QES + ["model=hf", f"model.path={ckpt}", "model.device=cpu"]), tmp_path / "c")


@pytest.mark.parametrize("override, message", [
    ("es.qes.residual=disk", "es.qes.residual='disk' is not allowed; choose one of: replay, full"),
    ("es.qes.norm=mean", "es.qes.norm='mean' is not allowed; choose one of: code, paper"),
    ("es.qes.init_residual=gauss", "es.qes.init_residual='gauss' is not allowed; choose one of: zero, uniform"),
    ("es.qes.bits=3", "es.qes.bits=3 is not allowed; choose one of: 4, 8"),
    ("es.qes.gamma=1.5", "es.qes.gamma=1.5 is not allowed; it must be in"),
    ("es.population=7", "es.population=7 must be even when es.update=qes"),
    ("es.lowrank=2", "cannot be combined with es.update=qes"),
])
def test_qes_config_errors_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        make_cfg(["es.update=qes", override])


def test_qes_backend_needs_es_update_qes():
    with pytest.raises(ConfigError, match="es.update=sgd does not run on generation.backend=qes; that engine runs "
                                          "es.update: qes"):
        make_cfg(["generation.backend=qes"])
