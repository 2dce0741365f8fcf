"""Outputs that cannot be written: a full disk, an output path under a regular file
(unwritable even for root), an empty data directory. Every failure names the path, says
what is wrong, leaves earlier files untouched and leaves no temp files behind."""
import errno
import os
from pathlib import Path

import pytest
import torch
import yaml

import tinyphysics as tp
from controllers.ppo import OBS_DIM
from ppo_training import export_onnx, train
from ppo_training.policy.actor_critic import ActorCritic
from ppo_training.utils import checkpoint as ckpt_mod
from ppo_training.utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
TINY = {
    "env": {"num_envs": 2},
    "train": {"total_timesteps": 120, "n_steps": 20, "eval_interval": 0, "checkpoint_interval": 1},
    "ppo": {"minibatch_size": 20, "n_epochs": 1},
    "policy": {"hidden_sizes": [8]},
    "bc": {"enabled": False},
    "data": {"train_files": "00000-00003", "val_files": ["00080"]},
}


@pytest.fixture
def blocker(tmp_path) -> Path:
    """A regular file: nothing can be created under it, not even by root."""
    f = tmp_path / "somefile"
    f.write_text("not a directory\n")
    return f


def small_checkpoint(seed=0) -> dict:
    torch.manual_seed(seed)
    policy = ActorCritic(OBS_DIM, 1, hidden_sizes=(8,))
    return {"policy": policy.state_dict(), "policy_config": policy.config, "update": seed}


def leftovers(d: Path) -> list:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


def write_config(tmp_path, **extra) -> Path:
    cfg = dict(TINY, run_dir=str(tmp_path / "runs"), export={"output": str(tmp_path / "policy.onnx")}, **extra)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- full disk ---------------------------------------------------------------------------
def _fail_in_torch_save(monkeypatch):
    real = torch.save

    def save(obj, f, *a, **k):
        f.write(b"half a checkpoint")   # some bytes reach the temp file, then the disk is full
        raise ENOSPC
    monkeypatch.setattr(torch, "save", save)
    return real


def _fail_in_fsync(monkeypatch):
    def fsync(fd):
        raise ENOSPC
    monkeypatch.setattr(ckpt_mod.os, "fsync", fsync)


@pytest.mark.parametrize("where", ["torch.save", "fsync"])
def test_full_disk_keeps_the_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch, where):
    path = tmp_path / "checkpoints" / "checkpoint_000001.pt"
    save_checkpoint(small_checkpoint(1), path)
    before = path.read_bytes()
    (_fail_in_torch_save if where == "torch.save" else _fail_in_fsync)(monkeypatch)
    with pytest.raises(CheckpointError) as ei:
        save_checkpoint(small_checkpoint(2), path)
    msg = str(ei.value)
    assert str(path) in msg and "No space left on device" in msg
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["update"] == 1
    assert leftovers(path.parent) == [] and sorted(os.listdir(path.parent)) == [path.name]


def test_full_disk_on_a_new_checkpoint_leaves_nothing(tmp_path, monkeypatch):
    _fail_in_torch_save(monkeypatch)
    path = tmp_path / "new.pt"
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_checkpoint(small_checkpoint(), path)
    assert os.listdir(tmp_path) == []


def test_full_disk_during_training_stops_cleanly(tmp_path, monkeypatch, capsys, model_path, segment_paths):
    """The trainer reports the failed checkpoint and exits 2; the earlier ones are intact."""
    real = torch.save

    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("update") == 2 and "env" in obj:   # checkpoint_000002.pt
            f.write(b"half")
            raise ENOSPC
        return real(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", save)
    assert train.main(["--config", str(write_config(tmp_path)), "run_name=full", "--no_export"]) == 2
    err = capsys.readouterr().err
    ckpts = tmp_path / "runs" / "full" / "checkpoints"
    assert str(ckpts / "checkpoint_000002.pt") in err and "No space left on device" in err
    assert "Traceback" not in err
    assert sorted(os.listdir(ckpts)) == ["checkpoint_000001.pt"]
    assert load_checkpoint(ckpts / "checkpoint_000001.pt")["update"] == 1
    assert not (tmp_path / "runs" / "full" / "final_model.pt").exists()


# -- an output path under a regular file ---------------------------------------------------
@pytest.mark.parametrize("rel", ["ckpt.pt", "sub/dir/ckpt.pt"])
def test_checkpoint_under_a_file_names_the_path_and_the_problem(blocker, rel):
    path = blocker / rel
    with pytest.raises(CheckpointError) as ei:
        save_checkpoint(small_checkpoint(), path)
    msg = str(ei.value)
    assert str(path) in msg and f"{blocker} is not a directory" in msg
    assert blocker.read_text() == "not a directory\n"
    assert leftovers(blocker.parent) == []


def test_train_run_dir_under_a_file_exits_2(tmp_path, blocker, capsys, model_path, segment_paths):
    cfg = write_config(tmp_path)
    assert train.main(["--config", str(cfg), f"run_dir={blocker}", "run_name=r", "--no_export"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert str(blocker / "r") in err and "not a directory" in err.lower()


def test_train_export_output_under_a_file_fails_before_training(tmp_path, blocker, capsys, model_path,
                                                                 segment_paths):
    cfg = write_config(tmp_path)
    out = blocker / "policy.onnx"
    assert train.main(["--config", str(cfg), "run_name=e", f"export.output={out}"]) == 2
    err = capsys.readouterr().err
    assert "export.output" in err and str(out) in err and f"{blocker} is not a directory" in err
    assert not (tmp_path / "runs" / "e").exists(), "nothing is trained or written for a run that cannot finish"


def test_export_output_under_a_file_exits_2(tmp_path, blocker, capsys):
    model = tmp_path / "final_model.pt"
    save_checkpoint(small_checkpoint(), model)
    out = blocker / "ppo_policy.onnx"
    assert export_onnx.main(["--model_path", str(model), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err or str(blocker) in err
    assert leftovers(tmp_path) == []


def test_write_costs_csv_under_a_file_raises_naming_the_path(blocker):
    costs = [{"lataccel_cost": 1.0, "jerk_cost": 2.0, "total_cost": 52.0}]
    with pytest.raises(OSError) as ei:
        tp.write_costs_csv(blocker / "costs.csv", ["00000.csv"], costs)
    assert isinstance(ei.value, NotADirectoryError)
    assert str(blocker / "costs.csv") in str(ei.value.filename)
    assert blocker.read_text() == "not a directory\n"


def test_write_costs_csv_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "costs.csv"
    tp.write_costs_csv(path, ["a.csv"], [{"lataccel_cost": 1.0, "jerk_cost": 2.0, "total_cost": 52.0}])
    before = path.read_text()

    def fsync(fd):
        raise ENOSPC
    monkeypatch.setattr(tp.os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left on device"):
        tp.write_costs_csv(path, ["b.csv"], [{"lataccel_cost": 3.0, "jerk_cost": 4.0, "total_cost": 154.0}])
    assert path.read_text() == before


def test_write_costs_csv_full_disk_leaves_no_temp_file(tmp_path, monkeypatch):
    def fsync(fd):
        raise ENOSPC
    monkeypatch.setattr(tp.os, "fsync", fsync)
    with pytest.raises(OSError):
        tp.write_costs_csv(tmp_path / "costs.csv", ["b.csv"], [{"lataccel_cost": 3.0, "jerk_cost": 4.0,
                                                                "total_cost": 154.0}])
    assert os.listdir(tmp_path) == []


def test_tinyphysics_cli_costs_csv_under_a_file_exits_2(blocker, capsys, model_path, segment_paths):
    out = blocker / "costs.csv"
    rc = tp.main(["--model_path", str(model_path), "--data_path", segment_paths[0], "--controller", "zero",
                  "--costs_csv", str(out)])
    assert rc == 2 and str(out) in capsys.readouterr().err


# -- input directory without data ---------------------------------------------------------
def test_empty_data_dir_exits_2_naming_it_and_leaves_no_run_dir(tmp_path, capsys, model_path):
    empty = tmp_path / "empty_data"
    empty.mkdir()
    cfg = write_config(tmp_path)
    argv = ["--config", str(cfg), f"data.data_dir={empty}", "run_name=nodata", "--no_export"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and "no .csv" in err and "Traceback" not in err
    # A start that failed leaves nothing, so the same run_name is free for the retry.
    assert not (tmp_path / "runs" / "nodata").exists()
    (empty / "notes.txt").write_text("no segments here")
    assert train.main(argv) == 2
    assert "already holds a run" not in capsys.readouterr().err


def test_missing_data_dir_exits_2_naming_it(tmp_path, capsys, model_path):
    gone = tmp_path / "no_such_dir"
    assert train.main(["--config", str(write_config(tmp_path)), f"data.data_dir={gone}", "--no_export"]) == 2
    err = capsys.readouterr().err
    assert str(gone) in err and "no such directory" in err
    assert not (tmp_path / "runs").exists()
