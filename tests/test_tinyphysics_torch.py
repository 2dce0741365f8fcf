"""The PyTorch simulator engine (`tinyphysics_torch.TorchPhysicsModel`) against onnxruntime.

Inputs are the model's real inputs: every 10th step of pid rollouts on 16 real segments
(captured by wrapping the onnxruntime model in `BatchedSimulator`).

Tolerances come from measurement on 2,453 rollout rows (logits range -24..36):
  float32: max |logit - ort| 1.6e-4, mean 2.7e-6; onnxruntime itself is 1.0e-4 from a
           float64 evaluation of the same graph and torch 1.8e-4, so both are float32
           rounding. Max |prob - ort| 8e-6. Rows computed alone vs in a batch: 2e-5.
  bfloat16: mean total-variation distance 0.0055 (worst 0.12); with layer 0 in float32
           0.0021 (worst 0.018).
"""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import tinyphysics as tp
from tinyphysics_torch import TorchPhysicsModel, load_onnx_weights

FP32_MAX_LOGIT_ERR = 1e-3   # measured 1.6e-4 (6x margin, same order as ort's own float32 error)
FP32_MEAN_LOGIT_ERR = 2e-5  # measured 2.7e-6
FP32_MAX_PROB_ERR = 1e-4    # measured 8e-6
BF16_MEAN_TV = 0.02         # measured 0.0055


@pytest.fixture(scope="module")
def real_inputs(model, segment_paths):
    """(states, tokens) of every 10th model call of pid rollouts on 16 segments."""
    captured = []

    class Capture:
        calls = 0

        def sample(self, states, tokens, u):
            Capture.calls += 1
            if Capture.calls % 10 == 0:
                captured.append((states.copy(), tokens.copy()))
            return model.sample(states, tokens, u)

    segs = [tp.load_segment(p) for p in segment_paths[:16]]
    sim = tp.BatchedSimulator(Capture(), segs)
    sim.rollout(tp.make_controllers("pid", len(segs)))
    states = np.concatenate([s for s, _ in captured])
    tokens = np.concatenate([t for _, t in captured])
    assert states.shape[0] >= 300
    return states, tokens


@pytest.fixture(scope="module")
def reference(model, real_inputs):
    return model.logits(*real_inputs)


@pytest.fixture(scope="module")
def fp32(model_path):
    return TorchPhysicsModel(model_path, dtype=torch.float32)


@pytest.fixture(scope="module")
def bf16(model_path):
    return TorchPhysicsModel(model_path, dtype=torch.bfloat16)


def tv_distance(p, q):
    return 0.5 * np.abs(p.astype(np.float64) - q.astype(np.float64)).sum(-1)


def test_architecture_read_from_onnx(model_path):
    w = load_onnx_weights(model_path)
    assert (w["n_layer"], w["n_head"]) == (4, 4)
    assert w["w_pos"].shape == (20, 128) and w["w_tok"].shape == (1024, 64) and w["w_state"].shape == (4, 64)
    assert w["w_lm"].shape == (128, 1024)
    assert w["eps"] == pytest.approx(1e-5)
    assert w["attn_scale"] == pytest.approx(32 ** -0.5)


def test_fp32_logits_match_onnxruntime(fp32, real_inputs, reference):
    got = fp32.logits(*real_inputs)
    assert got.dtype == np.float32 and got.shape == reference.shape
    err = np.abs(got - reference)
    assert err.max() < FP32_MAX_LOGIT_ERR, err.max()
    assert err.mean() < FP32_MEAN_LOGIT_ERR, err.mean()
    assert (got.argmax(-1) == reference.argmax(-1)).all()


def test_fp32_probs_match_onnxruntime(fp32, model, real_inputs, reference):
    got = fp32.probs(*real_inputs)
    ref = model.softmax(reference)
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() < FP32_MAX_PROB_ERR
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    # probs is exactly the harness softmax of the engine's logits
    np.testing.assert_array_equal(got, tp.TinyPhysicsModel.softmax(fp32.logits(*real_inputs)))


def test_bf16_close_in_distribution(bf16, model, real_inputs, reference):
    p_ref = model.softmax(reference)
    tv = tv_distance(bf16.probs(*real_inputs), p_ref)
    assert tv.mean() < BF16_MEAN_TV, tv.mean()
    assert tv.max() < 0.5, tv.max()


def test_bf16_fp32_first_layer_is_closer(model_path, bf16, model, real_inputs, reference):
    p_ref = model.softmax(reference)
    mixed = TorchPhysicsModel(model_path, dtype=torch.bfloat16, fp32_layers=(0,))
    tv_mixed = tv_distance(mixed.probs(*real_inputs), p_ref).mean()
    tv_bf16 = tv_distance(bf16.probs(*real_inputs), p_ref).mean()
    assert tv_mixed < tv_bf16 and tv_mixed < 0.01


def test_exact_gelu_in_bf16_changes_little(model_path, bf16, real_inputs):
    exact = TorchPhysicsModel(model_path, dtype=torch.bfloat16, exact_gelu=True)
    s, t = real_inputs[0][:200], real_inputs[1][:200]
    assert tv_distance(exact.probs(s, t), bf16.probs(s, t)).mean() < 0.005


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.bfloat16, 0.1)])
def test_batch_size_invariance(model_path, real_inputs, dtype, atol):
    m = TorchPhysicsModel(model_path, dtype=dtype, chunk_rows=64)
    s, t = real_inputs[0][:150], real_inputs[1][:150]
    full = m.logits(s, t)
    single = np.concatenate([m.logits(s[i:i + 1], t[i:i + 1]) for i in range(0, 150, 7)])
    np.testing.assert_allclose(single, full[::7], rtol=0, atol=atol)
    m.chunk_rows = 11
    np.testing.assert_allclose(m.logits(s, t), full, rtol=0, atol=atol)
    # a row's result does not depend on the others in its chunk
    perm = np.random.default_rng(0).permutation(150)
    m.chunk_rows = 64
    np.testing.assert_allclose(m.logits(s[perm], t[perm]), full[perm], rtol=0, atol=atol)


def test_thread_settings_give_the_same_logits(model_path, real_inputs):
    s, t = real_inputs[0][:300], real_inputs[1][:300]
    base = TorchPhysicsModel(model_path, chunk_rows=50).logits(s, t)
    assert base.shape == (300, 1024)
    before = torch.get_num_threads()
    for k in (1, 2, 3):
        m = TorchPhysicsModel(model_path, num_threads=k, chunk_rows=50)
        np.testing.assert_array_equal(m.logits(s, t), base)
        m.close()
        assert torch.get_num_threads() == before  # the caller's setting is left alone


def test_shapes_and_dtypes(fp32, real_inputs):
    s, t = real_inputs
    for n in (1, 2, 5):
        out = fp32.logits(s[:n], t[:n])
        assert out.shape == (n, 1024) and out.dtype == np.float32
        p = fp32.probs(s[:n], t[:n])
        assert p.shape == (n, 1024) and p.dtype == np.float32
    empty = fp32.logits(s[:0], t[:0])
    assert empty.shape == (0, 1024) and empty.dtype == np.float32
    # other input dtypes are converted as onnxruntime's caller would
    np.testing.assert_array_equal(fp32.logits(s[:3].astype(np.float64), t[:3].astype(np.int32)),
                                  fp32.logits(s[:3], t[:3]))
    # non-contiguous inputs
    np.testing.assert_array_equal(fp32.logits(s[:6:2], t[:6:2]), fp32.logits(s[:6][::2].copy(), t[:6][::2].copy()))


def test_bad_inputs_raise(fp32, real_inputs):
    s, t = real_inputs[0][:2], real_inputs[1][:2]
    with pytest.raises(ValueError, match="expected states"):
        fp32.logits(s[:, :10], t[:, :10])
    with pytest.raises(ValueError, match="expected states"):
        fp32.logits(s, t[:1])
    bad = t.copy()
    bad[0, 0] = 1024
    with pytest.raises(ValueError, match="tokens must be in"):
        fp32.logits(s, bad)
    with pytest.raises(ValueError):
        TorchPhysicsModel("unused", dtype=torch.float16)


def test_wrong_model_files_raise_model_error(tmp_path):
    with pytest.raises(tp.ModelError, match="no such model file"):
        TorchPhysicsModel(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not an onnx protobuf \x00\xff" * 10)
    with pytest.raises(tp.ModelError, match="junk.onnx"):
        TorchPhysicsModel(junk)
    # a valid ONNX model that is not the simulator
    x = helper.make_tensor_value_info("states", TensorProto.FLOAT, ["b", 20, 4])
    t = helper.make_tensor_value_info("tokens", TensorProto.INT64, ["b", 20])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", 20, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["states"], ["output"])], "other", [x, t], [y])
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(other))
    with pytest.raises(tp.ModelError, match="not the tinyphysics simulator"):
        TorchPhysicsModel(other)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["output"])], "other2",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [y])
    onnx.save(helper.make_model(graph), str(other))
    with pytest.raises(tp.ModelError, match="inputs"):
        TorchPhysicsModel(other)


def test_drop_in_for_batched_simulator(model, fp32, segment_paths):
    """The engine runs the batched simulator; with float32 the rollouts match onnxruntime's."""
    paths = segment_paths[:4]
    ref = tp.run_batched(model, paths, "pid")
    got = tp.run_batched(fp32, paths, "pid")
    for a, b in zip(ref, got):
        # a sampled token differs from onnxruntime's in ~4e-6 of draws, so rollouts are
        # almost always identical; allow a diverged one to differ a little.
        assert b["total_cost"] == pytest.approx(a["total_cost"], rel=0.05)


def test_compiled_bf16_matches_eager_bf16_and_pads_chunks(model_path, bf16, model, real_inputs, reference):
    """torch.compile'd bf16 (static chunk shapes, short chunks zero-padded) computes what the
    eager bf16 engine does, up to bf16 rounding, on batches smaller and larger than the
    first one; its distance to onnxruntime stays within the training path's target."""
    compiled = TorchPhysicsModel(model_path, dtype=torch.bfloat16, num_threads=2, compile=True)
    from torch._dynamo.utils import counters
    s, t = real_inputs
    graphs = counters["stats"]["unique_graphs"]
    first = compiled.probs(s[:40], t[:40])           # compiles once, for chunks of 20 rows
    assert compiled._compiled_rows == [20] and counters["stats"]["unique_graphs"] == graphs + 1
    np.testing.assert_allclose(first.sum(-1), 1.0, atol=1e-5)
    assert tv_distance(first, bf16.probs(s[:40], t[:40])).mean() < 0.01
    # 7 rows: one chunk padded to the compiled 20 rows; rows are independent of the padding,
    # and the padded chunk reuses the graph (no dynamo recompilation)
    graphs = counters["stats"]["unique_graphs"]
    np.testing.assert_allclose(compiled.probs(s[:7], t[:7]), first[:7], atol=1e-6)
    assert compiled._compiled_rows == [20] and counters["stats"]["unique_graphs"] == graphs
    # a larger batch compiles a larger chunk size once, and reuses it afterwards
    big = compiled.probs(s[:200], t[:200])
    assert compiled._compiled_rows == [20, 100]
    graphs = counters["stats"]["unique_graphs"]
    compiled.probs(s[:150], t[:150])
    assert compiled._compiled_rows == [20, 100] and counters["stats"]["unique_graphs"] == graphs
    tv = tv_distance(big, model.softmax(reference[:200]))
    assert tv.mean() < 0.02 and tv.max() < 0.5, (tv.mean(), tv.max())
    compiled.close()


def test_compiled_backend_in_the_batched_simulator(model_path, segment_paths):
    """make_model('torch_bf16_compiled') drops into BatchedSimulator: PID costs on real
    segments within 3% of the exact engine's (the bf16 arithmetic is the only difference)."""
    from tinyphysics_torch import make_model
    paths = segment_paths[:4]
    exact = tp.run_batched(tp.TinyPhysicsModel(model_path), paths, "pid")
    engine = make_model("torch_bf16_compiled", model_path, num_threads=1)
    approx = tp.run_batched(engine, paths, "pid")
    e, a = (np.mean([c["total_cost"] for c in x]) for x in (exact, approx))
    assert abs(a / e - 1) < 0.03, (a, e)


def test_auto_backend_follows_the_cpus_bf16_support(monkeypatch, model_path):
    """auto: the compiled bf16 engine where bf16 matmuls are native, onnxruntime elsewhere
    (emulated bf16 is the slowest engine on AVX2-only CPUs)."""
    from tinyphysics_torch import make_model, resolve_backend
    assert resolve_backend("torch_fp32") == "torch_fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert resolve_backend("auto") == "onnx"
    assert isinstance(make_model("auto", model_path), tp.TinyPhysicsModel)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_backend("auto") == "torch_bf16_compiled"
