"""eval.py: two controllers on the same segments, costs CSV, report.html."""
import csv
import re

import tinyphysics as tp
import eval as challenge_eval


def test_eval_writes_report_and_costs(tmp_path, model, model_path, segment_paths, capsys):
    report, costs_csv = tmp_path / "report.html", tmp_path / "costs.csv"
    rc = challenge_eval.main(["--model_path", str(model_path), "--data_path", "data", "--num_segs", "4",
                              "--test_controller", "zero", "--baseline_controller", "pid",
                              "--report", str(report), "--costs_csv", str(costs_csv)])
    assert rc == 0
    html = report.read_text()
    assert len(re.findall(r"data:image/png;base64,", html)) >= 3
    assert "<table" in html and "zero" in html and "pid" in html
    rows = list(csv.DictReader(costs_csv.open()))
    assert len(rows) == 8
    pid = [float(r["total_cost"]) for r in rows if r["controller"] == "pid"]
    assert pid == [c["total_cost"] for c in tp.run_batched(model, segment_paths[:4], "pid")]
    assert "Report saved to" in capsys.readouterr().out


def test_eval_errors_exit_2_naming_the_path(tmp_path, model_path, capsys):
    assert challenge_eval.main(["--model_path", str(model_path), "--data_path", "data/00000.csv"]) == 2
    assert "data/00000.csv" in capsys.readouterr().err
    assert challenge_eval.main(["--model_path", str(model_path), "--data_path", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err
