"""Smoke test of the benchmark (`python -m bench`) at tiny sizes: every figure is there and sane."""
import json

import numpy as np

import bench

TINY = ["--num_segs", "2", "--reference_segs", "1", "--train_envs", "2", "--train_updates", "1",
        "--val_files", "00080-00080", "--ppo_val_files", "00080-00080"]


def test_tiny_benchmark_writes_every_figure(model_path, segment_paths, tmp_path, capsys):
    out = tmp_path / "sub" / "results.json"
    assert bench.main(TINY + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert not list(out.parent.glob("*.tmp")), "the atomic write leaves no temp file"

    assert set(result) >= {"machine", "versions", "args", "engines", "identical_costs", "fidelity", "ppo",
                           "ppo_vs_sim_ratio"}
    assert result["machine"]["logical_cores"] >= 1 and result["machine"]["cpu"]
    assert set(result["versions"]) == {"numpy", "onnxruntime", "torch"}
    assert result["args"]["num_segs"] == 2 and result["args"]["reference_segments_used"] == 1

    engines = result["engines"]
    assert set(engines) == set(bench.ENGINES)
    for name, e in engines.items():
        for key in ("wall_s", "rollouts_per_s", "steps_per_s", "speedup_vs_reference", "speedup_vs_exact_onnx"):
            assert np.isfinite(e[key]) and e[key] > 0, (name, key)
        assert 0 < e["model_share"] <= 1, name
        assert name in printed
    assert engines["reference"]["rows"] == 1 and engines["exact_onnx"]["rows"] == 2
    assert engines["exact_onnx"]["steps"] == engines["exact_torch"]["steps"] > 2 * 400
    assert engines["reference"]["speedup_vs_reference"] == 1.0
    assert engines["exact_onnx"]["speedup_vs_exact_onnx"] == 1.0

    # Exact engines agree with each other (and with the single-segment reference).
    assert result["identical_costs"] is True and engines["exact_torch"]["identical_costs"] is True
    assert engines["reference"]["matches_exact_onnx"] is True
    assert 0 <= engines["exact_torch"]["fallback_rate"] < 1

    fid = result["fidelity"]
    assert fid["captured_rows"]["pid"] > 0 and fid["captured_rows"]["noisy_pid"] > 0
    for model in ("torch_bf16", "torch_bf16_compiled", "torch_fp32"):
        for kind in ("pid", "noisy_pid"):
            tv = fid["tv"][model][kind]
            for stat in ("mean", "p99", "max"):
                assert 0 <= tv[stat] <= 1, (model, kind, stat)
            assert tv["mean"] <= tv["max"]
    assert fid["tv"]["torch_fp32"]["pid"]["mean"] < fid["tv"]["torch_bf16"]["pid"]["mean"]
    assert fid["tv"]["torch_bf16_compiled"]["pid"]["mean"] < 0.02   # the training path's fidelity target
    for key in ("exact", "torch_bf16", "torch_bf16_compiled", "torch_fp32"):
        assert fid["pid_cost"][key] > 0

    ppo = result["ppo"]
    assert ppo["updates"] == 1 and ppo["fps_mean"] > 0 and ppo["sim_env_steps_per_s"] > 0
    from tinyphysics_torch import resolve_backend
    assert ppo["backend"] == resolve_backend("auto") and ppo["config"] == "ppo_training/configs/ff_residual.yaml"
    assert result["ppo_vs_sim_ratio"] == ppo["ppo_vs_sim_ratio"] > 0
