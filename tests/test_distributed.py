"""Ray backend (ppo_training/distributed.py): sharded exact evaluation, distributed rollouts, faults.

The Ray tests share one local cluster (2 CPUs, module scope). Without ray they are skipped
with the reason (under CI, where `make setup` installs it, that is a failure instead)."""
import csv
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import tinyphysics as tp
from ppo_training import distributed as dist
from ppo_training.config import ConfigError, load_config

TINY = {
    "env": {"num_envs": 4},
    "train": {"total_timesteps": 800, "n_steps": 50, "eval_interval": 2, "checkpoint_interval": 1},
    "ppo": {"minibatch_size": 50, "n_epochs": 2},
    "policy": {"hidden_sizes": [16, 16]},
    "bc": {"episodes": 4, "epochs": 0, "value_epochs": 1},
    "data": {"val_files": "00080-00081"},
}
RAY2 = ["distributed.backend=ray", "distributed.num_workers=2"]


# --------------------------------------------------------------------------------------
# Config and a missing ray (no cluster needed)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["distributed.backend=spark"], "distributed.backend"),
    (["distributed.num_workers=0"], "distributed.num_workers"),
    (["distributed.envs_per_worker=0"], "distributed.envs_per_worker"),
    (["distributed.address=''"], "distributed.address"),
    (["distributed.max_restarts=-1"], "distributed.max_restarts"),
    (["distributed.backend=ray", "distributed.num_workers=3"], "multiple of distributed.num_workers"),
    (["distributed.bogus=1"], "unknown config key 'distributed.bogus'"),
])
def test_bad_distributed_settings_are_refused_by_name(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_envs_per_worker_sets_the_batch():
    cfg = load_config(None, ["distributed.backend=ray", "distributed.num_workers=3", "distributed.envs_per_worker=5"])
    assert dist.envs_per_worker(cfg) == 5 and dist.total_envs(cfg) == 15
    cfg = load_config(None, ["distributed.backend=ray", "distributed.num_workers=4"])
    assert dist.envs_per_worker(cfg) == 8 and dist.total_envs(cfg) == 32
    assert dist.total_envs(load_config(None, [])) == 32


def test_worker_zero_is_seeded_like_the_single_process_trainer():
    assert dist.worker_env_seed(7, 0) == 7 and dist.sample_seed(7, 0) == 8
    assert dist.worker_env_seed(7, 1) != dist.worker_env_seed(7, 2)
    assert len({dist.sample_seed(7, k) for k in range(1, 20)}) == 19


def test_missing_ray_names_the_fix(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install '\.\[ray\]'"):
        load_config(None, ["distributed.backend=ray"])
    monkeypatch.setitem(sys.modules, "ray", None)   # `import ray` raises ImportError
    with pytest.raises(dist.DistributedError, match=r"pip install '\.\[ray\]'"):
        dist.require_ray()
    import eval as challenge_eval
    assert challenge_eval.main(["--model_path", "models/tinyphysics.onnx", "--data_path", "data", "--num_segs", "1",
                                "--backend", "ray"]) == 2


def test_resuming_with_another_backend_is_refused():
    ray_cfg = load_config(None, ["distributed.backend=ray", "distributed.num_workers=2"])
    local_cfg = load_config(None, [])
    ray_ckpt = {"env": {"distributed": {"num_workers": 2, "envs_per_worker": 16}, "workers": []}}
    with pytest.raises(ConfigError, match="distributed.backend=local"):
        dist.check_checkpoint_backend(ray_cfg, {"env": {"sim": {}}})
    with pytest.raises(ConfigError, match="distributed.backend=ray"):
        dist.check_checkpoint_backend(local_cfg, ray_ckpt)
    with pytest.raises(ConfigError, match="distributed.num_workers=2 distributed.envs_per_worker=16"):
        dist.check_checkpoint_backend(load_config(None, ["distributed.backend=ray", "distributed.num_workers=4"]),
                                      ray_ckpt)
    dist.check_checkpoint_backend(ray_cfg, ray_ckpt)


def test_chunks_cover_every_segment_once():
    for n in (1, 2, 7, 100, 2001):
        for workers in (1, 2, 3, 8):
            for max_chunk in (1, 5, 1000):
                chunks = dist._chunks(n, workers, max_chunk)
                covered = [i for c in chunks for i in range(c.start, c.stop)]
                assert covered == list(range(n))
                assert max(c.stop - c.start for c in chunks) <= max_chunk


# --------------------------------------------------------------------------------------
# A local Ray cluster
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    try:
        import ray
    except ImportError as e:
        msg = f"ray is not installed ({e}); install it with: pip install '.[ray]'"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def no_fault(monkeypatch):
    monkeypatch.delenv(dist.FAULT_ENV, raising=False)


def _golden_paths(segment_paths, golden):
    return [p for p in segment_paths if p.split("/")[-1] in golden["costs"]["pid"]]


def test_golden_segments_through_ray_equal_the_official_costs(ray_cluster, model_path, segment_paths, golden,
                                                               no_fault):
    """Sharded over 2 workers in chunks of 4: every cost equals the official one (tests/test_parity.py
    checks all golden segments on the local path; 16 suffice to check the sharding)."""
    paths = _golden_paths(segment_paths, golden)[:16]
    assert len(paths) == 16
    with dist.RayEvaluator(2, model_path) as ev:
        costs = ev.run(paths, "pid", max_chunk=4)
        assert ev.restarts == [0, 0] and len(ev.chunk_runs) == 4
    assert len(costs) == len(paths)
    for path, cost in zip(paths, costs):
        ref = golden["costs"]["pid"][path.split("/")[-1]]
        assert {k: cost[k] for k in ref} == ref, path


def test_ray_policy_evaluation_and_histories_equal_the_single_process_ones(ray_cluster, model, segment_paths,
                                                                            no_fault):
    from ppo_training.eval import evaluate_policy, load_policy
    paths = segment_paths[:4]
    local_costs, local_hist = evaluate_policy(model, paths, load_policy("models/ppo_policy.onnx"),
                                              keep_histories=True)
    with dist.RayEvaluator(2) as ev:
        costs, hist = ev.run(paths, dist.PolicyFile("models/ppo_policy.onnx"), keep_histories=True)
    assert costs == local_costs
    for a, b in zip(local_hist, hist):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def _golden_costs(paths, golden, controller="pid"):
    return [golden["costs"][controller][p.split("/")[-1]] for p in paths]


def test_a_worker_that_dies_mid_chunk_is_replaced_and_its_segments_run_once(ray_cluster, segment_paths, golden,
                                                                             monkeypatch):
    paths = _golden_paths(segment_paths, golden)[:6]
    # The first actor of slot 0 SIGKILLs itself at its 200th model call (mid-rollout of its chunk).
    monkeypatch.setenv(dist.FAULT_ENV, json.dumps({"role": "eval", "worker": 0, "after_calls": 200,
                                                   "action": "kill"}))
    with dist.RayEvaluator(2) as ev:
        first = ev.pids()
        costs = ev.run(paths, "pid", max_chunk=2)
        assert ev.restarts == [1, 0]
        assert first[0] not in ev.pids() and first[1] in ev.pids()
        runs = sorted(ev.chunk_runs)
        assert runs == [1] * (len(runs) - 1) + [2], runs                 # one chunk re-run, the others once
    assert costs == _golden_costs(paths, golden)                     # each segment once, in order


def test_a_worker_killed_from_outside_is_replaced(ray_cluster, segment_paths, golden, monkeypatch, tmp_path):
    paths = _golden_paths(segment_paths, golden)[8:14]
    marker = tmp_path / "paused_pid"
    # The first actor of slot 1 writes its pid and waits at its 100th model call; we SIGKILL it.
    monkeypatch.setenv(dist.FAULT_ENV, json.dumps({"role": "eval", "worker": 1, "after_calls": 100,
                                                   "action": "pause", "marker": str(marker)}))
    killed = []

    def killer():
        for _ in range(6000):   # up to 10 minutes; the run below cannot end before the kill
            if marker.exists():
                pid = int(marker.read_text())
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.1)
    with dist.RayEvaluator(2) as ev:
        pids = ev.pids()
        t = threading.Thread(target=killer, daemon=True)
        t.start()
        costs = ev.run(paths, "pid")
        t.join()
        assert killed == [pids[1]]
        assert ev.restarts == [0, 1]
    assert costs == _golden_costs(paths, golden)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_eval_clis_with_the_ray_backend_write_the_single_process_costs(ray_cluster, model, model_path, tmp_path,
                                                                      no_fault):
    import eval as challenge_eval
    from ppo_training import eval as ppo_eval
    paths = tp.list_segments("data", 2)
    assert challenge_eval.main(["--model_path", str(model_path), "--data_path", "data", "--num_segs", "2",
                                "--test_controller", "zero", "--baseline_controller", "pid", "--costs_csv",
                                str(tmp_path / "ray.csv"), "--report", str(tmp_path / "ray.html"),
                                "--backend", "ray", "--num_workers", "2"]) == 0
    expected = [["segment", "controller", "lataccel_cost", "jerk_cost", "total_cost"]]
    for name in ("zero", "pid"):
        for p, c in zip(paths, tp.run_batched(model, paths, name)):
            expected.append([Path(p).name, name] + [repr(c[k]) for k in ("lataccel_cost", "jerk_cost", "total_cost")])
    assert _read_csv(tmp_path / "ray.csv") == expected

    from ppo_training.eval import evaluate_policy, load_policy
    assert ppo_eval.main(["--model_path", "models/ppo_policy.onnx", "--data_path", "data", "--num_segs", "2",
                          "--costs_csv", str(tmp_path / "ppo_ray.csv"), "--backend", "ray"]) == 0
    local = evaluate_policy(model, paths, load_policy("models/ppo_policy.onnx"))
    tp.write_costs_csv(tmp_path / "ppo_local.csv", [Path(p).name for p in paths], local)
    assert _read_csv(tmp_path / "ppo_local.csv") == _read_csv(tmp_path / "ppo_ray.csv")


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------
@pytest.fixture
def tiny_config(write_config, model_path, segment_paths):
    return write_config(TINY)


def _final(run: Path):
    return torch.load(run / "final_model.pt", weights_only=False)


def _assert_same_training(a: Path, b: Path):
    pa, pb = _final(a)["policy"], _final(b)["policy"]
    assert set(pa) == set(pb)
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    sa, sb = np.load(a / "training_stats.npz"), np.load(b / "training_stats.npz")
    for k in ("global_step", "ep_cost_mean", "val_cost_mean", "approx_kl", "clip_fraction", "explained_variance"):
        np.testing.assert_array_equal(sa[k], sb[k])


def test_one_ray_worker_trains_exactly_like_the_single_process_trainer(ray_cluster, tiny_config, tmp_path,
                                                                       no_fault):
    from ppo_training import train
    assert train.main(["--config", str(tiny_config), "run_name=local", "--no_export"]) == 0
    assert train.main(["--config", str(tiny_config), "run_name=ray1", "--no_export", "distributed.backend=ray",
                       "distributed.num_workers=1"]) == 0
    _assert_same_training(tmp_path / "runs" / "local", tmp_path / "runs" / "ray1")
    ckpt = torch.load(tmp_path / "runs" / "ray1" / "final_model.pt", weights_only=False)
    assert ckpt["env"]["distributed"] == {"num_workers": 1, "envs_per_worker": 4}


@pytest.fixture(scope="module")
def two_worker_run(ray_cluster, tmp_path_factory, model_path, segment_paths):
    """An uninterrupted 2-worker run of the tiny config (2 envs per worker)."""
    import yaml

    from ppo_training import train
    root = tmp_path_factory.mktemp("ray2")
    cfg = dict(TINY, run_dir=str(root / "runs"))
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    os.environ.pop(dist.FAULT_ENV, None)
    assert train.main(["--config", str(root / "tiny.yaml"), "run_name=full", "--no_export"] + RAY2) == 0
    return root


def test_two_workers_resume_exactly(two_worker_run):
    from ppo_training import train
    full = two_worker_run / "runs" / "full"
    part = two_worker_run / "runs" / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "checkpoints" / "checkpoint_000002.pt", part / "checkpoints")
    ckpt = torch.load(part / "checkpoints" / "checkpoint_000002.pt", weights_only=False)
    assert len(ckpt["env"]["workers"]) == 2
    assert train.main(["--resume", str(part / "checkpoints" / "checkpoint_000002.pt"), "--no_export"]) == 0
    _assert_same_training(full, part)


@pytest.mark.parametrize("after_calls, where", [(100, "behaviour cloning"), (580, "the second PPO rollout")])
def test_a_rollout_worker_that_dies_is_replaced_and_the_run_is_unchanged(two_worker_run, monkeypatch, capsys,
                                                                         after_calls, where):
    """Worker 1's first actor SIGKILLs itself during the teacher episodes (stepped one call at a time
    from the learner: the replacement replays them) or during its second PPO rollout (the replacement
    is restored to the state at the end of the first); either way the run goes on exactly."""
    from ppo_training import train
    monkeypatch.setenv(dist.FAULT_ENV, json.dumps({"role": "rollout", "worker": 1, "after_calls": after_calls,
                                                   "action": "kill"}))
    name = f"killed{after_calls}"
    assert train.main(["--config", str(two_worker_run / "tiny.yaml"), f"run_name={name}", "--no_export"]
                      + RAY2) == 0
    assert "rollout worker 1 died" in capsys.readouterr().err, where
    _assert_same_training(two_worker_run / "runs" / "full", two_worker_run / "runs" / name)
