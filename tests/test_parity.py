"""The parity gate: our simulators reproduce the official harness's per-segment costs."""
import numpy as np
import pytest

import tinyphysics as tp
from controllers import pid


KEYS = ("lataccel_cost", "jerk_cost", "total_cost")
# A draw this close to a cdf bin edge (in cdf units) may land in the neighbouring bin on another
# CPU: onnxruntime picks its float32 kernels by instruction set (AVX-512 or AVX2), and their
# rounding moves the edges by ~1e-7. Honest draws fall this close with probability ~2e-5 per step.
NEAR_TIE = 1e-5


def _same(cost, ref):
    return all(abs(cost[k] - ref[k]) <= 1e-9 for k in KEYS)


def _assert_matches(paths, costs, golden_costs):
    for path, cost in zip(paths, costs):
        ref = golden_costs[path.split("/")[-1]]
        for key in KEYS:
            assert abs(cost[key] - ref[key]) <= 1e-9, (path, key, cost[key], ref[key])


class _DrawRecorder:
    """Wraps the simulator model for one row: records each draw's distance to the nearest cdf
    edge, and optionally moves draw number `flip` into the neighbouring bin across that edge."""

    def __init__(self, model, flip=None):
        self.model, self.flip, self.gaps = model, flip, []

    def sample(self, states, tokens, u):
        cdf = np.cumsum(self.model.probs(states, tokens).astype(np.float64), axis=-1)
        cdf /= cdf[:, -1:]
        tok = int((cdf[0] <= u[0]).sum())
        below = u[0] - (cdf[0, tok - 1] if tok > 0 else 0.0)   # distance to the bin's lower edge
        above = cdf[0, tok] - u[0]                              # and to its upper edge
        self.gaps.append((below, above))
        if len(self.gaps) - 1 == self.flip:
            tok += -1 if below < above else 1
        return np.array([tok], dtype=np.int64)


def near_tie_explanation(model, path, controller, ref):
    """For a segment whose cost differs from the golden one: the (draw index, distance to the
    edge) of a draw within NEAR_TIE of a cdf edge such that moving it across that edge
    reproduces all three golden costs to 1e-9; None when no such draw exists."""
    seg = tp.load_segment(path)
    rec = _DrawRecorder(model)
    tp.BatchedSimulator(rec, [seg]).rollout(tp.make_controllers(controller, 1))
    for k in np.argsort([min(g) for g in rec.gaps]):
        gap = min(rec.gaps[k])
        if gap > NEAR_TIE:
            break
        cost = tp.BatchedSimulator(_DrawRecorder(model, flip=int(k)), [seg]).rollout(
            tp.make_controllers(controller, 1))[0]
        if _same(cost, ref):
            return int(k), gap
    return None


@pytest.mark.parametrize("controller", ["pid", "zero"])
def test_batched_simulator_matches_golden_on_every_segment(model, segment_paths, golden, controller):
    """Every segment's costs equal the official harness's to 1e-9. The only exception allowed is
    a segment where one draw fell within NEAR_TIE of a cdf edge and moving that draw across the
    edge reproduces the golden costs exactly: on a CPU with other float32 kernels than the golden
    file's machine (e.g. AVX2 against AVX-512), the official harness itself would differ there."""
    paths = [p for p in segment_paths if p.split("/")[-1] in golden["costs"][controller]]
    assert len(paths) == golden["n_segments"], "every golden segment must be present in data/"
    costs = tp.run_batched(model, paths, controller)
    ref = golden["costs"][controller]
    differ = [(p, c) for p, c in zip(paths, costs) if not _same(c, ref[p.split("/")[-1]])]
    assert len(differ) <= 2, f"{len(differ)} segments differ from the golden costs: {[p for p, _ in differ]}"
    for p, c in differ:
        why = near_tie_explanation(model, p, controller, ref[p.split("/")[-1]])
        assert why is not None, (p, c, ref[p.split("/")[-1]], "no near-tie draw explains the difference")
    if not differ:
        mean_total = np.mean([c["total_cost"] for c in costs])
        assert abs(mean_total - golden["means"][controller]["total_cost"]) <= 1e-9


def test_a_near_tie_flip_is_found_only_where_it_explains_the_cost(model, golden):
    """The exception above cannot excuse a real error: a wrong reference cost is not explained;
    the costs of a rollout with its nearest-tie draw moved across the edge are (segment 00024
    has a draw 1.6e-8 below an edge, the one AVX2 and AVX-512 CPUs put in different bins)."""
    path, ref = "data/00024.csv", golden["costs"]["zero"]["00024.csv"]
    bogus = {k: v + 1e-3 for k, v in ref.items()}
    assert near_tie_explanation(model, path, "zero", bogus) is None
    rec = _DrawRecorder(model)
    seg = tp.load_segment(path)
    here = tp.BatchedSimulator(rec, [seg]).rollout(tp.make_controllers("zero", 1))[0]
    k = int(np.argmin([min(g) for g in rec.gaps]))
    assert min(rec.gaps[k]) < 1e-7
    flipped = tp.BatchedSimulator(_DrawRecorder(model, flip=k), [seg]).rollout(tp.make_controllers("zero", 1))[0]
    assert not _same(flipped, here)
    assert near_tie_explanation(model, path, "zero", flipped) == (k, min(rec.gaps[k]))
    assert _same(here, ref) or _same(flipped, ref)     # one of the two is the golden machine's


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


def test_thread_count_does_not_change_a_bit(model_path):
    """onnxruntime with 1, 2 or 3 intra-op threads gives the same logits, for a few rows and for many
    (the suite's `model` fixture uses 2 threads; the official harness runs with 1)."""
    engines = [tp.TinyPhysicsModel(model_path, num_threads=k) for k in (1, 2, 3)]
    rng = np.random.default_rng(3)
    for n in (1, 7, 256):
        states = rng.normal(size=(n, 20, 4)).astype(np.float32)
        tokens = rng.integers(0, 1024, size=(n, 20)).astype(np.int64)
        one = engines[0].logits(states, tokens)
        for e in engines[1:]:
            assert np.array_equal(e.logits(states, tokens), one)


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
