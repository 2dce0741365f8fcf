"""Export to ONNX and the shipped controller: torch/onnx agreement, metadata checks,
standalone imports, and identical scores through every evaluation path."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

import tinyphysics as tp
from controllers import ppo
from ppo_training.eval import evaluate_policy, torch_policy
from ppo_training.export_onnx import export
from ppo_training.policy.actor_critic import ActorCritic
from ppo_training.train import pid_base_weights, pid_teacher


def make_policy(seed=0):
    torch.manual_seed(seed)
    policy = ActorCritic(ppo.OBS_DIM, 1, hidden_sizes=(32, 32), base_weights=pid_base_weights())
    # a non-trivial residual and normaliser, as after training
    with torch.no_grad():
        for p in policy.actor_mean.parameters():
            p.add_(0.05 * torch.randn_like(p))
    policy.update_obs_normalizer(torch.randn(256, ppo.OBS_DIM) * 3 + 1)
    return policy.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    policy = make_policy()
    path = tmp_path_factory.mktemp("policy") / "ppo_policy.onnx"
    err = export(policy, path, training_config={"seed": 1})
    return policy, path, err


def test_onnx_matches_torch(exported):
    policy, path, err = exported
    assert err <= 1e-5
    runner = ppo.PolicyRunner(path)
    x = torch.randn(300, ppo.OBS_DIM) * 2
    with torch.no_grad():
        ref = policy.act_deterministic(x)[:, 0].double().numpy()
    assert np.max(np.abs(runner(x.numpy()) - ref)) <= 1e-5
    meta = runner.metadata
    assert json.loads(meta["obs_names"]) == ppo.OBS_NAMES and json.loads(meta["training_config"]) == {"seed": 1}


def test_pid_base_is_the_pid(segment_paths, model):
    """With the residual network silenced, the policy is the official PID (to float32 rounding)."""
    policy = ActorCritic(ppo.OBS_DIM, 1, hidden_sizes=(8,), base_weights=pid_base_weights())
    with torch.no_grad():
        for p in policy.actor_mean.parameters():
            p.zero_()
    costs = evaluate_policy(model, segment_paths[:3], torch_policy(policy))
    ref = tp.run_batched(model, segment_paths[:3], "pid")
    for c, r in zip(costs, ref):
        assert c["total_cost"] == pytest.approx(r["total_cost"], rel=1e-4)
    obs = np.random.default_rng(0).normal(size=(64, ppo.OBS_DIM)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(policy.act_deterministic(torch.from_numpy(obs))[:, 0].numpy(),
                                   pid_teacher(obs), atol=1e-5)


def test_every_evaluation_path_gives_the_same_costs(exported, model, segment_paths):
    """ONNX batch controller, official per-segment controller in both simulators, and the
    torch policy: the same per-segment costs."""
    policy, path, _ = exported
    paths = segment_paths[:4]
    onnx_batch = evaluate_policy(model, paths, ppo.PolicyRunner(path))
    per_segment = tp.BatchedSimulator(model, [tp.load_segment(p) for p in paths]).rollout(
        [ppo.Controller(str(path)) for _ in paths])
    single = [tp.TinyPhysicsSimulator(model, p, ppo.Controller(str(path))).rollout() for p in paths[:2]]
    torch_costs = evaluate_policy(model, paths, torch_policy(policy))
    for i in range(len(paths)):
        assert onnx_batch[i]["total_cost"] == per_segment[i]["total_cost"]
        assert torch_costs[i]["total_cost"] == pytest.approx(onnx_batch[i]["total_cost"], rel=1e-3)
    for i in range(2):
        assert single[i]["total_cost"] == onnx_batch[i]["total_cost"]


def test_metadata_mismatch_is_refused(exported, tmp_path):
    _, path, _ = exported
    m = onnx.load(path)
    for prop in m.metadata_props:
        if prop.key == "history":
            prop.value = "7"
    bad = tmp_path / "bad_policy.onnx"
    onnx.save(m, bad)
    with pytest.raises(ValueError, match="bad_policy.onnx.*history"):
        ppo.PolicyRunner(bad)


def test_wrong_or_truncated_onnx_is_refused(exported, tmp_path, model_path):
    _, path, _ = exported
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="trunc.onnx"):
        ppo.PolicyRunner(trunc)
    with pytest.raises(ValueError, match="tinyphysics.onnx.*metadata"):
        ppo.PolicyRunner(model_path)  # the simulator is not a policy
    with pytest.raises(ValueError, match="no such policy"):
        ppo.PolicyRunner(tmp_path / "missing.onnx")


def test_export_refuses_a_policy_of_another_observation_size(tmp_path):
    with pytest.raises(ValueError, match="features"):
        export(ActorCritic(ppo.OBS_DIM + 1, 1), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_controller_is_standalone(exported, tmp_path):
    """controllers/ppo.py needs only numpy and onnxruntime, and finds its policy relative
    to its own file (models/ppo_policy.onnx beside controllers/), as in the challenge repo."""
    _, path, _ = exported
    import shutil
    (tmp_path / "controllers").mkdir()
    (tmp_path / "models").mkdir()
    shutil.copy(ppo.__file__, tmp_path / "controllers" / "ppo.py")
    (tmp_path / "controllers" / "__init__.py").write_text(
        "class BaseController:\n  def update(self, target_lataccel, current_lataccel, state, future_plan):\n"
        "    raise NotImplementedError\n")
    shutil.copy(path, tmp_path / "models" / "ppo_policy.onnx")
    code = ("import sys; from collections import namedtuple\n"
            "from controllers.ppo import Controller\n"
            "S = namedtuple('S', 'roll_lataccel v_ego a_ego'); F = namedtuple('F', 'lataccel roll_lataccel v_ego a_ego')\n"
            "c = Controller()\n"
            "a = [c.update(0.5, 0.1, S(0.0, 20.0, 0.0), F([0.5]*49, [0.0]*49, [20.0]*49, [0.0]*49)) for _ in range(100)]\n"
            "assert all(isinstance(x, float) and -2 <= x <= 2 for x in a)\n"
            "bad = [m for m in ('torch', 'pandas', 'gymnasium', 'tinyphysics', 'ppo_training') if m in sys.modules]\n"
            "assert not bad, bad\nprint('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
