"""The parity gate: our simulators reproduce the official harness's per-segment costs."""
import numpy as np
import pytest

import tinyphysics as tp
from controllers import pid


def _assert_matches(paths, costs, golden_costs):
    for path, cost in zip(paths, costs):
        ref = golden_costs[path.split("/")[-1]]
        for key in ("lataccel_cost", "jerk_cost", "total_cost"):
            assert abs(cost[key] - ref[key]) <= 1e-9, (path, key, cost[key], ref[key])


@pytest.mark.parametrize("controller", ["pid", "zero"])
def test_batched_simulator_matches_golden_on_every_segment(model, segment_paths, golden, controller):
    paths = [p for p in segment_paths if p.split("/")[-1] in golden["costs"][controller]]
    assert len(paths) == golden["n_segments"], "every golden segment must be present in data/"
    costs = tp.run_batched(model, paths, controller)
    _assert_matches(paths, costs, golden["costs"][controller])
    mean_total = np.mean([c["total_cost"] for c in costs])
    assert abs(mean_total - golden["means"][controller]["total_cost"]) <= 1e-9


def test_per_segment_controllers_in_batched_simulator_match_golden(model, segment_paths, golden):
    """Official-interface controllers (one instance per row) through the batched path."""
    paths = segment_paths[:12]
    costs = tp.run_batched(model, paths, "pid", vectorized=False)
    _assert_matches(paths, costs, golden["costs"]["pid"])


@pytest.mark.parametrize("name", ["00000.csv", "00004.csv", "00017.csv"])
def test_single_segment_simulator_matches_golden(model, golden, name):
    sim = tp.TinyPhysicsSimulator(model, f"data/{name}", pid.Controller())
    cost = sim.rollout()
    _assert_matches([name], [cost], golden["costs"]["pid"])


def test_seed_depends_on_the_path_string(model, golden):
    """The same file under another path string gets another seed, hence another cost."""
    a = tp.TinyPhysicsSimulator(model, "data/00000.csv", pid.Controller()).rollout()
    b = tp.TinyPhysicsSimulator(model, "./data/00000.csv", pid.Controller()).rollout()
    assert tp.segment_seed("data/00000.csv") != tp.segment_seed("./data/00000.csv")
    assert a["total_cost"] == golden["costs"]["pid"]["00000.csv"]["total_cost"]
    assert a["total_cost"] != b["total_cost"]


def test_sampling_matches_numpy_choice():
    """sample_tokens draws what legacy np.random.choice(1024, p=probs) draws."""
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3, size=(50, tp.VOCAB_SIZE)).astype(np.float32)
    probs = tp.TinyPhysicsModel.softmax(logits)
    ours, ref = [], []
    for i in range(50):
        np.random.seed(i)
        ref.append(np.random.choice(tp.VOCAB_SIZE, p=probs[i]))
        ours.append(tp.sample_tokens(probs[i:i + 1], np.array([np.random.RandomState(i).random_sample()]))[0])
    assert ours == ref


def test_batched_rows_equal_single_row_model_calls(model):
    rng = np.random.default_rng(0)
    states = rng.normal(size=(37, 20, 4)).astype(np.float32)
    tokens = rng.integers(0, 1024, size=(37, 20)).astype(np.int64)
    batch = model.logits(states, tokens)
    single = np.concatenate([model.logits(states[i:i + 1], tokens[i:i + 1]) for i in range(37)])
    assert np.array_equal(batch, single)


def test_pruned_graph_gives_the_official_graphs_logits(model, model_path):
    """The default engine runs the graph pruned to the last position; it must not change a bit."""
    official = tp.TinyPhysicsModel(model_path, prune=False)
    assert model.pruned and not official.pruned
    rng = np.random.default_rng(2)
    for n in (1, 3, 64):
        states = rng.normal(size=(n, 20, 4)).astype(np.float32)
        tokens = rng.integers(0, 1024, size=(n, 20)).astype(np.int64)
        assert np.array_equal(model.logits(states, tokens), official.logits(states, tokens))


def test_official_graph_single_segment_matches_golden(model_path, golden):
    official = tp.TinyPhysicsModel(model_path, prune=False)
    cost = tp.TinyPhysicsSimulator(official, "data/00003.csv", pid.Controller()).rollout()
    _assert_matches(["00003.csv"], [cost], golden["costs"]["pid"])


def test_fast_exact_engine_matches_golden_on_every_segment(model_path, segment_paths, golden):
    """torch fp32 logits with onnxruntime fallback near bin edges: exact costs, rare fallback."""
    import tinyphysics_torch as tt
    engine = tt.make_model("torch_exact", model_path)
    paths = [p for p in segment_paths if p.split("/")[-1] in golden["costs"]["pid"]]
    costs = tp.run_batched(engine, paths, "pid")
    _assert_matches(paths, costs, golden["costs"]["pid"])
    assert 0 < engine.fallback_rate < 0.05, engine.fallback_rate
