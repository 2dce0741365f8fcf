"""The training recipe's switches: the linear base controller, the base teacher, the
network input mask, and the shipped headline config."""
import numpy as np
import pytest
import torch

import tinyphysics as tp
from controllers.ppo import OBS_DIM, OBS_NAMES, BatchController
from ppo_training import train
from ppo_training.config import ConfigError, load_config
from ppo_training.policy.actor_critic import ActorCritic

HEADLINE = "ppo_training/configs/ff_residual.yaml"
# the --extra_features of the fourth tuning stage (README: 'The training recipe'), which the recipe's base weighs
RECIPE_EXTRA = ("future_lataccel_4,future_lataccel_6,future_lataccel_10,future_lataccel_16,future_lataccel_20,"
                "future_lataccel_25,future_lataccel_30,future_roll_1,future_roll_5,future_roll_8,future_roll_13,"
                "prev_action_2,prev_action_3,prev_lataccel_2")


def test_linear_base_weights_land_on_their_features():
    w = train.base_weights({"base": "linear", "base_weights": {"error": 0.5, "future_lataccel_3": -0.25}})
    assert len(w) == OBS_DIM
    assert w[OBS_NAMES.index("error")] == 0.5 and w[OBS_NAMES.index("future_lataccel_3")] == -0.25
    assert sum(x != 0 for x in w) == 2
    assert train.base_weights({"base": "none", "base_weights": None}) is None


def test_base_tuning_start_points_load():
    """docs/base_stage1.yaml (the README's second tuning stage starts there) and the recipe both load as
    start points of scripts/tune_linear_base.py; a config without a linear base is refused by name."""
    from scripts import tune_linear_base as tune
    features = tune.feature_list(RECIPE_EXTRA)
    stage1, recipe = tune.config_weights("docs/base_stage1.yaml", features), tune.config_weights(HEADLINE, features)
    assert stage1.shape == recipe.shape == (len(features),) and not np.array_equal(stage1, recipe)
    assert np.count_nonzero(recipe) == len(features)       # the recipe weighs every feature it was tuned on
    with pytest.raises(SystemExit, match="does not tune: .*future_lataccel_20"):
        tune.config_weights(HEADLINE)                        # the first three stages' features only
    with pytest.raises(SystemExit, match="config.yaml: policy.base is 'pid'"):
        tune.config_weights("ppo_training/config.yaml")


def test_base_tuning_extra_features_start_at_zero_and_unknown_names_are_refused():
    """--extra_features appends features after FEATURES; they start at 0 from a config that does not set
    them, a config weighting a feature outside the tuned set is refused, and a misspelt name exits."""
    from scripts import tune_linear_base as tune
    features = tune.feature_list("future_lataccel_20, prev_action_2")
    assert features == tune.FEATURES + ["future_lataccel_20", "prev_action_2"]
    w = tune.config_weights("docs/base_stage1.yaml", features)
    assert w[:len(tune.FEATURES)].tolist() == tune.config_weights("docs/base_stage1.yaml").tolist() and w[-2:].tolist() == [0, 0]
    assert tune.pid_weights(features)[-2:].tolist() == [0, 0]
    with pytest.raises(SystemExit, match="not observation features: \\['future_lataccel_7'\\]"):
        tune.feature_list("future_lataccel_7")
    with pytest.raises(SystemExit, match="repeated"):
        tune.feature_list("prev_action_2,prev_action_2")
    with pytest.raises(SystemExit, match="does not tune: \\['future_lataccel_13'\\]"):
        tune.config_weights("docs/base_stage1.yaml", [f for f in tune.FEATURES if f != "future_lataccel_13"])


def test_base_tuning_batch_segments_draws_a_fresh_subset_each_generation():
    """--batch_segments N: each generation scores N distinct segments, drawn afresh from the search's RNG;
    0, or N at least the number of segments, scores all of them."""
    from scripts import tune_linear_base as tune
    rng = np.random.default_rng(4)
    picks = [tune.generation_segments(rng, 80, 40) for _ in range(3)]
    for p in picks:
        assert len(set(p.tolist())) == 40 and p.tolist() == sorted(p.tolist()) and 0 <= p.min() and p.max() < 80
    assert not np.array_equal(picks[0], picks[1]) and not np.array_equal(picks[1], picks[2])
    for batch in (0, 80, 100):
        assert tune.generation_segments(rng, 80, batch).tolist() == list(range(80))


@pytest.mark.parametrize("override,message", [
    ("policy.base=linear", "policy.base_weights"),                          # linear needs weights
    ("policy.base_weights={error: 1.0}", "only used with policy.base: linear"),
    ("policy.hidden_features=[plan]", "policy.hidden_features"),
    ("bc.teacher=mpc", "bc.teacher"),
    ("data.synthetic_num=-1", "data.synthetic_num"),
])
def test_bad_recipe_settings_are_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_unknown_base_feature_is_refused():
    with pytest.raises(ConfigError, match="unknown features"):
        load_config(None, ["policy.base=linear", "policy.base_weights={errr: 1.0}"])


def test_input_mask_hides_the_future_plan_from_the_networks():
    mask = train.input_mask({"hidden_features": ["future"]})
    hidden = [n for n, m in zip(OBS_NAMES, mask) if m == 0]
    assert hidden and all(n.startswith("future_") for n in hidden)
    assert len(hidden) == sum(n.startswith("future_") for n in OBS_NAMES)
    torch.manual_seed(0)
    policy = ActorCritic(OBS_DIM, 1, hidden_sizes=(8,), input_mask=mask)
    obs = torch.randn(4, OBS_DIM)
    moved = obs.clone()
    moved[:, [OBS_NAMES.index(n) for n in hidden]] += 5.0
    assert torch.equal(policy.action_mean(obs), policy.action_mean(moved))
    assert torch.equal(policy.get_value(obs), policy.get_value(moved))
    moved[:, OBS_NAMES.index("error")] += 5.0
    assert not torch.equal(policy.action_mean(obs), policy.action_mean(moved))
    rebuilt = ActorCritic(**policy.config)          # the mask is part of the saved config
    rebuilt.load_state_dict(policy.state_dict())
    assert torch.equal(rebuilt.action_mean(obs), policy.action_mean(obs))


def test_headline_config_loads_and_its_base_beats_pid_on_training_segments(model, segment_paths):
    cfg = load_config(HEADLINE)
    assert cfg["policy"]["base"] == "linear" and cfg["simulator"]["eval_backend"] in ("onnx", "torch_exact")
    w = np.asarray(train.base_weights(cfg["policy"]))
    paths = segment_paths[:8]                      # training segments only
    segs = [tp.load_segment(p) for p in paths]
    costs = {}
    for name, ctrl in (("linear", BatchController(len(segs), lambda o: np.clip(o.astype(np.float64) @ w, -2, 2))),
                       ("pid", None)):
        sim = tp.BatchedSimulator(model, segs)
        if ctrl is None:
            from controllers.pid import BatchController as PID
            ctrl = PID(len(segs))
        sim.rollout(ctrl)
        costs[name] = np.mean([c["total_cost"] for c in sim.costs()])
    assert costs["linear"] < 0.85 * costs["pid"], costs


def test_base_teacher_runs_the_policys_own_base(write_config, tmp_path, capsys, model_path, segment_paths):
    cfg = write_config({
        "env": {"num_envs": 2}, "train": {"total_timesteps": 100, "n_steps": 50, "eval_interval": 0},
        "ppo": {"minibatch_size": 50, "n_epochs": 1}, "policy": {"hidden_sizes": [8], "base": "pid"},
        "bc": {"episodes": 2, "epochs": 0, "value_epochs": 1, "teacher": "base"},
        "data": {"train_files": "00000-00001", "val_files": "00080-00080"}})
    assert train.main(["--config", str(cfg), "run_name=t", "--no_export"]) == 0
    out = capsys.readouterr().out
    assert "samples from base" in out


def test_synthetic_segments_join_the_training_pool(write_config, tmp_path, capsys, model_path, segment_paths):
    synth = tmp_path / "synthetic"
    cfg = write_config({
        "env": {"num_envs": 2}, "train": {"total_timesteps": 100, "n_steps": 50, "eval_interval": 0},
        "ppo": {"minibatch_size": 50, "n_epochs": 1}, "policy": {"hidden_sizes": [8]},
        "bc": {"episodes": 2, "value_epochs": 1},
        "data": {"train_files": "00000-00009", "val_files": "00080-00080", "synthetic_num": 3,
                 "synthetic_dir": str(synth)}})
    assert train.main(["--config", str(cfg), "run_name=s", "--no_export"]) == 0
    assert sorted(p.name for p in synth.glob("*.csv")) == ["synth_000000.csv", "synth_000001.csv", "synth_000002.csv"]
    report = __import__("json").loads((synth / "generator_report.json").read_text())
    assert report["meta"]["fit_files"] == [f"{i:05d}.csv" for i in range(10)]     # fitted on training files only
    assert "generating 3 synthetic segments" in capsys.readouterr().out
    before = (synth / "synth_000000.csv").stat().st_mtime_ns
    assert train.main(["--config", str(cfg), "run_name=s2", "--no_export"]) == 0   # reused, not regenerated
    assert (synth / "synth_000000.csv").stat().st_mtime_ns == before
    assert "generating" not in capsys.readouterr().out


def test_base_tuning_scores_every_candidate_on_the_official_draws(model, segment_paths, golden):
    """scripts/tune_linear_base.py runs K candidates in one batch; each row gets its own RNG seeded as
    the official harness seeds the segment, so a candidate's cost does not depend on the others,
    its PID start point scores what the official harness scored for the PID, and the recipe's base
    (extra features included) scores what the policy's own base scores in the simulator."""
    from scripts import tune_linear_base as tune
    paths = segment_paths[:1]
    segs = [tp.load_segment(p) for p in paths]
    features = tune.feature_list(RECIPE_EXTRA)
    W = np.stack([tune.config_weights(HEADLINE, features), tune.pid_weights(features)])
    together = tune.evaluate(model, segs, paths, W, features)
    alone = [tune.evaluate(model, segs, paths, W[k:k + 1], features)[0] for k in range(2)]
    assert together.tolist() == alone and alone[0] != alone[1]
    assert alone[1] == golden["costs"]["pid"][paths[0].split("/")[-1]]["total_cost"]
    w = np.asarray(train.base_weights(load_config(HEADLINE)["policy"]))
    sim = tp.BatchedSimulator(model, segs)                      # the official seeds by default
    sim.rollout(BatchController(1, lambda o: np.clip(o.astype(np.float64) @ w, -2, 2)))
    assert sim.costs()[0]["total_cost"] == alone[0]
