"""eval.py: the controller comparison CLI, its HTML report, its costs CSV and its errors."""
import csv
import re

import pytest

import eval as ev
import tinyphysics as tp

N = 4


def _args(model_path, data_path, tmp_path, test="zero", baseline="pid"):
    return ["--model_path", str(model_path), "--data_path", str(data_path), "--num_segs", str(N),
            "--test_controller", test, "--baseline_controller", baseline,
            "--report", str(tmp_path / "report.html"), "--costs_csv", str(tmp_path / "c.csv")]


def test_report_and_costs_csv(model_path, model, segment_paths, tmp_path, capsys):
    assert ev.main(_args(model_path, "data", tmp_path)) == 0
    out = capsys.readouterr().out
    assert f"Report saved to: {tmp_path / 'report.html'}" in out
    assert "Average lataccel_cost:" in out

    html = (tmp_path / "report.html").read_text()
    assert not list(tmp_path.glob("*.tmp")), "temporary files must be replaced"
    assert len(re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]{100,}"', html)) >= 3
    assert '<table class="dataframe averages"' in html
    for word in ("zero", "pid", "total_cost", "jerk_cost", "lataccel_cost"):
        assert word in html
    assert f"<b>{N}</b>" in html

    with open(tmp_path / "c.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * N
    assert set(rows[0]) == {"segment", "controller", "lataccel_cost", "jerk_cost", "total_cost"}
    assert sorted({r["controller"] for r in rows}) == ["pid", "zero"]
    expected = tp.run_batched(model, segment_paths[:N], "pid")
    pid_rows = [r for r in rows if r["controller"] == "pid"]
    assert [r["segment"] for r in pid_rows] == [p.split("/")[-1] for p in segment_paths[:N]]
    assert [float(r["total_cost"]) for r in pid_rows] == [c["total_cost"] for c in expected]
    zero_rows = [r for r in rows if r["controller"] == "zero"]
    # zero steering must lose to PID on lataccel tracking on every segment
    assert all(float(z["lataccel_cost"]) > float(p["lataccel_cost"]) for z, p in zip(zero_rows, pid_rows))


def test_averages_ratio_and_wins():
    import pandas as pd
    cols = ["segment", "controller", "role", "lataccel_cost", "jerk_cost", "total_cost"]
    df = pd.DataFrame([("a", "x", "test", 1.0, 2.0, 10.0), ("b", "x", "test", 3.0, 4.0, 30.0),
                       ("a", "y", "baseline", 1.0, 1.0, 20.0), ("b", "y", "baseline", 1.0, 1.0, 20.0)],
                      columns=cols)
    means, ratio, wins = ev.averages(df)
    assert list(means.index) == ["test", "baseline"]
    assert list(means.controller) == ["x", "y"]
    assert means.loc["test", "total_cost"] == 20.0
    assert ratio == 1.0
    assert wins == 1


@pytest.mark.parametrize("kind", ["file", "empty_dir", "missing"])
def test_bad_data_path_exits_2(model_path, tmp_path, capsys, kind):
    if kind == "file":
        bad = tmp_path / "seg.csv"
        bad.write_text("t\n")
    elif kind == "empty_dir":
        bad = tmp_path / "empty"
        bad.mkdir()
    else:
        bad = tmp_path / "nope"
    assert ev.main(_args(model_path, bad, tmp_path)) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "report.html").exists()


def test_unknown_controller_exits_2(model_path, tmp_path, capsys):
    assert ev.main(_args(model_path, "data", tmp_path, test="no_such_controller")) == 2
    err = capsys.readouterr().err
    assert "no_such_controller" in err
    assert not (tmp_path / "report.html").exists()


def test_missing_model_exits_2(tmp_path, capsys):
    assert ev.main(_args(tmp_path / "missing.onnx", "data", tmp_path)) == 2
    assert "missing.onnx" in capsys.readouterr().err
