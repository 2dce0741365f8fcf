"""tinyphysics.py command line and input validation."""
import csv
import shutil

import numpy as np
import pandas as pd
import pytest

import tinyphysics as tp


def test_directory_run_writes_full_precision_costs_and_the_official_summary(tmp_path, golden, capsys, model_path):
    out = tmp_path / "costs.csv"
    rc = tp.main(["--model_path", str(model_path), "--data_path", "data", "--num_segs", "3",
                  "--controller", "pid", "--costs_csv", str(out)])
    assert rc == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["file"] for r in rows] == ["00000.csv", "00001.csv", "00002.csv"]
    for r in rows:
        assert float(r["total_cost"]) == golden["costs"]["pid"][r["file"]]["total_cost"]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    mean = np.mean([float(r["total_cost"]) for r in rows])
    assert last.startswith("Average lataccel_cost:") and f"average total_cost: {mean:>6.4}" in last


def test_single_file_run_with_debug_plot(tmp_path, golden, capsys, model_path, monkeypatch):
    shutil.copytree("data", tmp_path / "data", ignore=lambda d, names: [n for n in names if n != "00007.csv"])
    shutil.copytree("controllers", tmp_path / "controllers")
    monkeypatch.chdir(tmp_path)
    rc = tp.main(["--model_path", str(model_path), "--data_path", "data/00007.csv", "--controller", "pid",
                  "--debug"])
    assert rc == 0
    out = capsys.readouterr().out
    ref = golden["costs"]["pid"]["00007.csv"]["total_cost"]
    assert f"average total_cost: {ref:>6.4}" in out
    assert (tmp_path / "rollout_00007.png").stat().st_size > 10_000


def test_cli_seeds_with_the_normalised_path_like_the_official_harness(golden, capsys, model_path):
    """The official CLI seeds with str(Path(data_path)): './data/00004.csv' -> 'data/00004.csv'."""
    assert tp.main(["--model_path", str(model_path), "--data_path", "./data/00004.csv", "--controller", "pid"]) == 0
    ref = golden["costs"]["pid"]["00004.csv"]["total_cost"]
    assert f"average total_cost: {ref:>6.4}" in capsys.readouterr().out
    assert tp.list_segments("./data", 2) == ["data/00000.csv", "data/00001.csv"]


def _write(tmp_path, df, name="seg.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


@pytest.fixture
def good_df():
    return pd.read_csv("data/00000.csv")


@pytest.mark.parametrize("mutate, message", [
    (lambda df: df.drop(columns=["roll"]), "missing column"),
    (lambda df: df.assign(vEgo=df["vEgo"].astype(object).where(df.index != 7, "fast")), "'vEgo' is not numeric"),
    (lambda df: df.assign(aEgo=df["aEgo"].where(df.index != 42, np.nan)), "'aEgo' has a non-finite value"),
    (lambda df: df.assign(roll=df["roll"].where(df.index != 3, np.inf)), "'roll' has a non-finite value"),
    (lambda df: df.assign(steerCommand=df["steerCommand"].where(df.index != 50, np.nan)), "steerCommand"),
    (lambda df: df.iloc[:450], "shorter than the cost window"),
    (lambda df: df.assign(t=df["t"].where(df.index != 200, 0.0)), "does not increase"),
])
def test_bad_segments_are_refused_with_file_and_problem(tmp_path, good_df, mutate, message):
    path = _write(tmp_path, mutate(good_df.copy()))
    with pytest.raises(tp.DataError, match=message) as e:
        tp.load_segment(path)
    assert str(path) in str(e.value)


def test_steer_may_be_missing_after_the_warmup(tmp_path, good_df):
    """The public data has no steerCommand from step 100 on; that is valid."""
    seg = tp.load_segment(_write(tmp_path, good_df))
    assert np.isnan(seg.steer_command[-1]) and np.isfinite(seg.steer_command[:100]).all()


def test_empty_and_garbage_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(tp.DataError, match="empty.csv: file is empty"):
        tp.load_segment(empty)
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(b"\x00\xff\xfe binary \x00\n" * 10)
    with pytest.raises(tp.DataError, match="garbage.csv"):
        tp.load_segment(garbage)
    with pytest.raises(tp.DataError, match="no such segment"):
        tp.load_segment(tmp_path / "absent.csv")


def test_directory_without_csvs(tmp_path, capsys, model_path):
    assert tp.main(["--model_path", str(model_path), "--data_path", str(tmp_path)]) == 2
    assert "no .csv" in capsys.readouterr().err


def test_wrong_onnx_files_are_refused(tmp_path, model_path):
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(model_path.read_bytes()[:1000])
    with pytest.raises(tp.ModelError, match="trunc.onnx: not a loadable ONNX"):
        tp.TinyPhysicsModel(trunc)
    import onnx
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["b", 55])
    y = helper.make_tensor_value_info("steer", TensorProto.FLOAT, ["b", 55])
    other = tmp_path / "policy_like.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["obs"], ["steer"])], "g", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 17)], ir_version=9), other)
    with pytest.raises(tp.ModelError, match="policy_like.onnx: not the tinyphysics simulator"):
        tp.TinyPhysicsModel(other)
    with pytest.raises(tp.ModelError, match="no such model"):
        tp.TinyPhysicsModel(tmp_path / "absent.onnx")
