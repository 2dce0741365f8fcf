"""ppo_training/train.ipynb runs top to bottom on its tiny config: it trains, plots the
curves and shows the PPO-vs-PID table, with every output under a temporary directory."""
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "ppo_training" / "train.ipynb"


def outputs_of(cell, key):
    return [o for o in cell.get("outputs", []) if key in o.get("data", {})]


def test_training_notebook_runs_and_shows_curves_and_table(tmp_path, monkeypatch, model_path, segment_paths):
    assert (ROOT / "data" / "00082.csv").exists(), "the notebook evaluates on data/00080-00082.csv"
    monkeypatch.setenv("TRAIN_NOTEBOOK_RUN_DIR", str(tmp_path / "nb_runs"))
    default_out = ROOT / "runs" / "notebook"
    before = sorted(default_out.iterdir()) if default_out.is_dir() else []
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 4

    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert errors == []
    text = "\n".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")
    assert "validation segments" in text and "ppo beats pid" in text, "the trainer's closing table is printed"

    plots = [c for c in code if outputs_of(c, "image/png")]
    assert len(plots) == 1 and "training_stats.npz" in plots[0].source
    tables = [c for c in code if outputs_of(c, "text/html")]
    assert tables, "the evaluation table is displayed"
    html = outputs_of(tables[-1], "text/html")[0]["data"]["text/html"]
    for name in ("00080.csv", "00081.csv", "00082.csv", "ppo_total", "pid_total"):
        assert name in html, name

    runs = [p for p in (tmp_path / "nb_runs").iterdir() if p.is_dir()]
    assert len(runs) == 1
    run = runs[0]
    for name in ("final_model.pt", "training_stats.npz", "progress.csv", "curves.png", "config.yaml"):
        assert (run / name).is_file(), name
    after = sorted(default_out.iterdir()) if default_out.is_dir() else []
    assert after == before, "TRAIN_NOTEBOOK_RUN_DIR redirects every output"
