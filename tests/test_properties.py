"""Property-based tests (hypothesis) of the pure pieces every cost and every observation
rests on: the lataccel tokenizer, the challenge cost, the environment's per-step reward
shares, and the policy observation builder."""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinyphysics as tp
from controllers import ppo
from ppo_training.environment.lateral_env import step_cost

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BINS = np.linspace(-5.0, 5.0, 1024)
WIDTH = 10.0 / 1023  # spacing of the 1024 bin centres on [-5, 5]
TOK = tp.TOKENIZER

reals = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)
with_edges = st.one_of(reals, st.sampled_from([-5.0, 5.0, -5.000001, 5.000001, np.nextafter(5.0, 0),
                                               np.nextafter(-5.0, 0), 0.0, -0.0, 1e300, -1e300]),
                       st.sampled_from(list(BINS)), st.floats(allow_nan=False))  # +-inf too


# -- tokenizer -----------------------------------------------------------------------------
@SETTINGS
@given(x=with_edges, y=with_edges)
def test_encode_is_monotone_and_in_range(x, y):
    tx, ty = TOK.encode(x), TOK.encode(y)
    assert 0 <= tx <= 1023 and 0 <= ty <= 1023
    if x <= y:
        assert tx <= ty


@SETTINGS
@given(x=with_edges)
@example(x=-5.0)
@example(x=5.0)
@example(x=float("inf"))
@example(x=float("-inf"))
def test_decode_encode_is_the_first_bin_centre_at_or_above_the_clipped_value(x):
    """digitize(right=True): bins[i-1] < clip(x) <= bins[i], so the round trip rounds UP,
    by less than one bin width (10/1023), not to the nearest centre."""
    c = float(np.clip(x, -5.0, 5.0))
    t = int(TOK.encode(x))
    d = float(TOK.decode(t))
    assert d >= c and d - c < WIDTH * (1 + 1e-9)
    assert t == 0 or BINS[t - 1] < c
    if x >= 5.0:
        assert t == 1023 and d == 5.0
    if x <= -5.0:
        assert t == 0 and d == -5.0


@SETTINGS
@given(t=st.integers(0, 1023))
def test_bin_centres_are_fixed_points(t):
    assert TOK.encode(TOK.decode(t)) == t


@SETTINGS
@given(xs=hnp.arrays(np.float64, st.integers(1, 64), elements=reals))
def test_vectorised_encode_equals_elementwise(xs):
    tokens = TOK.encode(xs)
    assert tokens.shape == xs.shape and np.issubdtype(tokens.dtype, np.integer)
    assert [int(t) for t in tokens] == [int(TOK.encode(float(x))) for x in xs]


# -- cost -------------------------------------------------------------------------------------
lataccel = st.floats(min_value=-5.0, max_value=5.0, allow_nan=False)


def _noisy(n, seed, step):
    """A random walk of lataccels (like a rollout, with jumps up to `step`), clipped to +-5."""
    rng = np.random.default_rng(seed)
    return np.clip(np.cumsum(rng.uniform(-step, step, n)) + rng.uniform(-5, 5), -5.0, 5.0)


def histories(min_len=tp.COST_END_IDX, max_len=tp.COST_END_IDX + 100):
    """(target, lataccel) float64 histories: hypothesis arrays (mostly a fill value with a
    few chosen entries: edge cases) or dense random walks from a drawn seed."""
    sparse = st.integers(min_len, max_len).flatmap(lambda n: st.tuples(
        hnp.arrays(np.float64, n, elements=lataccel), hnp.arrays(np.float64, n, elements=lataccel)))
    dense = st.builds(lambda n, s1, s2, step: (_noisy(n, s1, step), _noisy(n, s2, step)),
                      st.integers(min_len, max_len), st.integers(0, 2**32), st.integers(0, 2**32),
                      st.sampled_from([0.01, 0.1, 1.0, 10.0]))
    return st.one_of(sparse, dense)


@SETTINGS
@given(h=histories())
def test_cost_is_non_negative_and_total_is_50_lat_plus_jerk(h):
    target, pred = h
    c = tp.compute_cost(target, pred)
    assert c["lataccel_cost"] >= 0 and c["jerk_cost"] >= 0 and c["total_cost"] >= 0
    assert c["total_cost"] == 50 * c["lataccel_cost"] + c["jerk_cost"]
    # only the cost window 100..499 counts
    t2, p2 = target.copy(), pred.copy()
    t2[:tp.CONTROL_START_IDX] += 1.0
    p2[tp.COST_END_IDX:] -= 1.0
    assert tp.compute_cost(t2, p2) == c


@SETTINGS
@given(value=lataccel, n=st.integers(tp.COST_END_IDX, tp.COST_END_IDX + 100))
def test_cost_is_zero_when_tracking_a_constant_target_exactly(value, n):
    target = np.full(n, value)
    assert tp.compute_cost(target, target.copy()) == {"lataccel_cost": 0.0, "jerk_cost": 0.0, "total_cost": 0.0}


@SETTINGS
@given(h=histories(), offset=st.floats(0.01, 1.0))
def test_cost_of_a_constant_offset_is_pure_lataccel(h, offset):
    target, _ = h
    value = float(target[tp.CONTROL_START_IDX])
    target = np.full(len(target), value)
    c = tp.compute_cost(target, target + offset)
    assert c["jerk_cost"] == 0.0
    assert c["lataccel_cost"] == pytest.approx(100 * offset ** 2, rel=1e-12)


@SETTINGS
@given(h=histories())
def test_env_step_shares_sum_to_the_episode_total_cost(h):
    """The environment's reward is -step_cost at each simulated step 100..T-1; over an
    episode these shares add up to compute_cost's total (the return is -total_cost)."""
    target, lat = h
    steps = np.arange(tp.CONTROL_START_IDX, len(target))
    shares = step_cost(target[steps], lat[steps], lat[steps - 1], steps)
    assert shares.shape == steps.shape and (shares >= 0).all()
    assert (shares[steps >= tp.COST_END_IDX] == 0).all()
    total = tp.compute_cost(target, lat)["total_cost"]
    assert float(shares.sum()) == pytest.approx(total, rel=1e-9, abs=1e-9)


# -- observation builder --------------------------------------------------------------------
def observation_inputs(n_max=8):
    def build(n):
        lat = lambda shape: hnp.arrays(np.float64, shape, elements=lataccel)  # noqa: E731
        return st.fixed_dictionaries({
            "target": lat(n), "current": lat(n),
            "error_integral": hnp.arrays(np.float64, n, elements=st.floats(-1e4, 1e4)),
            "roll_lataccel": hnp.arrays(np.float64, n, elements=st.floats(-2.0, 2.0)),
            "v_ego": hnp.arrays(np.float64, n, elements=st.one_of(st.just(0.0), st.floats(0.0, 60.0))),
            "a_ego": hnp.arrays(np.float64, n, elements=st.floats(-10.0, 10.0)),
            "future_lataccel": lat((n, ppo.PLAN_LEN)),
            "future_roll_lataccel": hnp.arrays(np.float64, (n, ppo.PLAN_LEN), elements=st.floats(-2.0, 2.0)),
            "prev_target": lat((n, ppo.HISTORY)), "prev_lataccel": lat((n, ppo.HISTORY)),
            "prev_action": hnp.arrays(np.float64, (n, ppo.HISTORY), elements=st.floats(-2.0, 2.0)),
            "step": hnp.arrays(np.int64, n, elements=st.integers(-10, 2000)),
        })
    return st.integers(1, n_max).flatmap(build)


def _col(name):
    return ppo.OBS_NAMES.index(name)


@SETTINGS
@given(inp=observation_inputs())
def test_observation_shape_dtype_finite_and_layout(inp):
    obs = ppo.build_observation(**inp)
    n = len(inp["target"])
    assert obs.shape == (n, ppo.OBS_DIM) and obs.dtype == np.float32
    assert np.isfinite(obs).all()
    f32 = lambda a: np.asarray(a, dtype=np.float64).astype(np.float32)  # noqa: E731
    # error is computed in float64 and rounded once, not the difference of rounded features
    np.testing.assert_array_equal(obs[:, _col("error")], f32(inp["target"] - inp["current"]))
    for name in ("target", "current", "error_integral", "roll_lataccel", "v_ego", "a_ego"):
        np.testing.assert_array_equal(obs[:, _col(name)], f32(inp[name]), err_msg=name)
    for j, k in enumerate(ppo.FUTURE_OFFSETS):
        np.testing.assert_array_equal(obs[:, _col(f"future_lataccel_{k}")], f32(inp["future_lataccel"][:, k - 1]))
        np.testing.assert_array_equal(obs[:, _col(f"future_roll_{k}")], f32(inp["future_roll_lataccel"][:, k - 1]))
    for k in range(1, ppo.HISTORY + 1):
        np.testing.assert_array_equal(obs[:, _col(f"prev_target_{k}")], f32(inp["prev_target"][:, k - 1]))
        np.testing.assert_array_equal(obs[:, _col(f"prev_lataccel_{k}")], f32(inp["prev_lataccel"][:, k - 1]))
        np.testing.assert_array_equal(obs[:, _col(f"prev_action_{k}")], f32(inp["prev_action"][:, k - 1]))
    w = obs[:, _col("cost_window_left")]
    assert ((w >= 0) & (w <= 1)).all()
    np.testing.assert_array_equal(w, f32(np.clip((500 - inp["step"]) / 400, 0, 1)))


@SETTINGS
@given(inp=observation_inputs(n_max=3), sign=st.sampled_from([-1.0, 1.0]))
def test_observation_at_the_extremes_is_finite(inp, sign):
    """Saturated inputs: lataccel +-5, steer +-2, standing still, first and last steps."""
    n = len(inp["target"])
    ext = dict(inp)
    for k in ("target", "future_lataccel", "prev_target"):
        ext[k] = np.full_like(inp[k], 5.0 * sign)
    for k in ("current", "prev_lataccel"):
        ext[k] = np.full_like(inp[k], -5.0 * sign)
    ext["prev_action"] = np.full_like(inp["prev_action"], 2.0 * sign)
    ext["v_ego"] = np.zeros(n)
    ext["a_ego"] = np.zeros(n)
    obs = ppo.build_observation(**ext)
    assert np.isfinite(obs).all()
    assert (obs[:, _col("error")] == np.float32(10.0 * sign)).all()


@SETTINGS
@given(step=st.integers(-1000, 10_000))
def test_cost_window_left_is_a_share_in_0_1(step):
    inp = {"target": [0.0], "current": [0.0], "error_integral": [0.0], "roll_lataccel": [0.0], "v_ego": [0.0],
           "a_ego": [0.0], "future_lataccel": np.zeros((1, ppo.PLAN_LEN)),
           "future_roll_lataccel": np.zeros((1, ppo.PLAN_LEN)), "prev_target": np.zeros((1, ppo.HISTORY)),
           "prev_lataccel": np.zeros((1, ppo.HISTORY)), "prev_action": np.zeros((1, ppo.HISTORY)), "step": [step]}
    w = float(ppo.build_observation(**inp)[0, _col("cost_window_left")])
    assert 0.0 <= w <= 1.0
    if step <= tp.CONTROL_START_IDX:
        assert w == 1.0
    if step >= tp.COST_END_IDX:
        assert w == 0.0
