"""The trainer end to end on a tiny config: outputs, resume, config errors, run dirs."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ppo_training import train
from ppo_training.config import ConfigError, load_config

TINY = {
    "env": {"num_envs": 4},
    "train": {"total_timesteps": 800, "n_steps": 50, "eval_interval": 2, "checkpoint_interval": 1},
    "ppo": {"minibatch_size": 50, "n_epochs": 2},
    "policy": {"hidden_sizes": [16, 16]},
    "bc": {"episodes": 4, "epochs": 0, "value_epochs": 1},
    "data": {"val_files": "00080-00081"},
}


@pytest.fixture
def tiny_config(write_config, model_path, segment_paths):
    return write_config(TINY)


def test_tiny_run_trains_exports_and_prints_the_table(tiny_config, tmp_path, capsys):
    assert train.main(["--config", str(tiny_config), "run_name=a"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "a"
    for name in ("config.yaml", "final_model.pt", "best_model.pt", "training_stats.npz", "progress.csv",
                 "checkpoints/checkpoint_000004.pt"):
        assert (run / name).exists(), name
    assert (tmp_path / "ppo_policy.onnx").exists()
    assert "ppo " in out and "pid " in out and "validation segments" in out
    stats = np.load(run / "training_stats.npz")
    assert list(stats["update"]) == [1, 2, 3, 4] and list(stats["global_step"]) == [200, 400, 600, 800]
    assert np.isfinite(stats["val_cost_mean"][-1])
    assert list(run.glob("events.out.tfevents*")), "TensorBoard events are written"


def test_resume_continues_exactly_like_an_uninterrupted_run(tiny_config, tmp_path, capsys):
    assert train.main(["--config", str(tiny_config), "run_name=full", "--no_export"]) == 0
    full = tmp_path / "runs" / "full"
    part = tmp_path / "runs" / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "checkpoints" / "checkpoint_000002.pt", part / "checkpoints")
    assert train.main(["--resume", str(part / "checkpoints" / "checkpoint_000002.pt"), "--no_export"]) == 0
    a = torch.load(full / "final_model.pt", weights_only=False)
    b = torch.load(part / "final_model.pt", weights_only=False)
    for k in a["policy"]:
        assert torch.equal(a["policy"][k], b["policy"][k]), k
    sa, sb = np.load(full / "training_stats.npz"), np.load(part / "training_stats.npz")
    for k in ("ep_cost_mean", "val_cost_mean", "approx_kl", "clip_fraction"):
        np.testing.assert_array_equal(sa[k], sb[k])


def test_same_seed_gives_identical_models_whatever_the_validation_settings(tiny_config, tmp_path):
    """Validation is read-only: how often and with which exact engine it runs leaves training unchanged
    (the README's runs override train.eval_interval and simulator.eval_backend)."""
    runs = {"s1": [], "s2": ["train.eval_interval=1", "simulator.eval_backend=torch_exact"]}
    for name, extra in runs.items():
        assert train.main(["--config", str(tiny_config), f"run_name={name}", "--no_export", *extra]) == 0
    a, b = (torch.load(tmp_path / "runs" / n / "final_model.pt", weights_only=False)["policy"] for n in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_existing_run_is_never_overwritten(tiny_config, tmp_path, capsys):
    run = tmp_path / "runs" / "taken"
    run.mkdir(parents=True)
    (run / "final_model.pt").write_bytes(b"precious")
    assert train.main(["--config", str(tiny_config), "run_name=taken"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "final_model.pt").read_bytes() == b"precious"


@pytest.mark.parametrize("override, message", [
    ("ppo.learning_rate=-1", "learning_rate"),
    ("env.num_envs=0", "env.num_envs"),
    ("env.bogus=1", "unknown config key 'env.bogus'"),
    ("policy.base=lqr", "policy.base"),
    ("env.reward_mode=mean", "env.reward_mode"),
    ("simulator.backend=fastest", "simulator.backend"),
])
def test_bad_overrides_are_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_config_file_names_the_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo:\n  learning_rat: 0.1\n")
    assert train.main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "learning_rat" in err


def test_missing_segments_are_reported(tmp_path, capsys, model_path):
    assert train.main([f"run_dir={tmp_path}", "data.train_files=19990-19999"]) == 2
    assert "missing" in capsys.readouterr().err


def test_approximate_training_backend_still_validates_exactly(tiny_config, tmp_path, capsys, model, segment_paths):
    """simulator.backend=torch_bf16 trains on the fast engine; the table uses the exact one (bf16
    moves PID costs by about 1%, so a table computed on the training engine would fail here)."""
    assert train.main(["--config", str(tiny_config), "run_name=bf16", "--no_export",
                       "simulator.backend=torch_bf16", "simulator.num_threads=2"]) == 0
    out = capsys.readouterr().out
    import tinyphysics as tp
    pid = np.mean([c["total_cost"] for c in tp.run_batched(model, ["data/00080.csv", "data/00081.csv"], "pid")])
    pid_row = [line for line in out.splitlines() if line.startswith("pid ")][0]
    assert f"{pid:.4f}" in pid_row


def test_tensorboard_scalars_use_stable_baselines3_names(tiny_config, tmp_path):
    assert train.main(["--config", str(tiny_config), "run_name=tb", "--no_export", "train.total_timesteps=2400",
                       "train.checkpoint_interval=0", "train.eval_interval=0"]) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "runs" / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("rollout/ep_cost_mean", "rollout/ep_len_mean", "train/approx_kl", "train/clip_fraction",
                "train/policy_gradient_loss", "train/value_loss", "train/entropy_loss",
                "train/explained_variance", "time/fps", "eval/val_cost_mean"):
        assert tag in tags, tag
    assert [e.value for e in acc.Scalars("rollout/ep_len_mean")][-1] > 400
