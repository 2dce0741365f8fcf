"""A real training process killed or interrupted mid-run, then resumed.

* SIGKILL (power loss, OOM killer): every checkpoint on disk is complete, and resuming
  from the latest one finishes with exactly the model and the progress.csv of a run
  that was never interrupted.
* SIGINT (Ctrl-C): the trainer writes `checkpoint_<update>_interrupted.pt`, prints its
  path, exits with 130, and that checkpoint resumes to a complete run.
"""
import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ppo_training import train

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "ppo_training" / "train.py"
NUM_UPDATES = 8
BATCH = 4 * 40  # env.num_envs * train.n_steps
TINY = {
    "env": {"num_envs": 4},
    "train": {"total_timesteps": NUM_UPDATES * BATCH, "n_steps": 40, "eval_interval": 3, "checkpoint_interval": 1},
    "ppo": {"minibatch_size": 40, "n_epochs": 2},
    "policy": {"hidden_sizes": [16, 16]},
    "bc": {"episodes": 4, "epochs": 0, "value_epochs": 1},
    "data": {"train_files": "00000-00007", "val_files": ["00080"]},
}


@pytest.fixture
def tiny_config(write_config, model_path, segment_paths):
    return write_config(TINY)


_STARTED: list = []


@pytest.fixture(autouse=True)
def _no_stray_trainers():
    """A failing test never leaves a training process of its own running."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_training(args, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "w")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # A shell that starts jobs in the background (nohup ... &, some CI runners) leaves SIGINT
    # ignored, and Python then installs no Ctrl-C handler: give the trainer a terminal's default.
    proc = subprocess.Popen([sys.executable, str(TRAIN), *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log.close()
    _STARTED.append(proc)
    return proc


def wait_for(path: Path, proc: subprocess.Popen, log_path: Path, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before {path.name} appeared:\n{log_path.read_text()}")
        if time.time() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"{path.name} did not appear within {timeout} s:\n{log_path.read_text()}")
        time.sleep(0.01)


def run_to_end(args, log_path: Path, timeout: float = 180.0) -> str:
    proc = start_training(args, log_path)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"training did not finish within {timeout} s:\n{log_path.read_text()}")
    out = log_path.read_text()
    assert rc == 0, out
    return out


def temp_files(run: Path) -> list:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.name.endswith(".tmp"))


def progress_rows(path: Path) -> list:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in csv.DictReader(f)]


def update_of(ckpt: Path) -> int:
    return int(re.match(r"checkpoint_(\d+)", ckpt.name).group(1))


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_config, tmp_path, capsys):
    run = tmp_path / "runs" / "killed"
    log = tmp_path / "killed.log"
    # The killed run is long (so the kill lands mid-training however loaded the machine is)
    # and is resumed with the reference's length; without lr annealing the length of a run
    # does not change its updates.
    proc = start_training(["--config", str(tiny_config), "run_name=killed", "--no_export", "ppo.anneal_lr=false",
                           f"train.total_timesteps={200 * BATCH}"], log)
    wait_for(run / "checkpoints" / "checkpoint_000003.pt", proc, log)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not (run / "final_model.pt").exists(), "the run finished before it could be killed"

    # Every checkpoint on disk is complete: atomic writes leave only whole files.
    ckpts = sorted((run / "checkpoints").glob("checkpoint_*.pt"), key=update_of)
    assert [update_of(c) for c in ckpts] == list(range(1, len(ckpts) + 1)) and len(ckpts) >= 3
    for c in ckpts:
        assert train.load_checkpoint(c)["update"] == update_of(c)
    latest = ckpts[-1]
    resume_step = train.load_checkpoint(latest)["global_step"]
    assert resume_step == update_of(latest) * BATCH

    # What a kill in the middle of a save or of a progress.csv write can leave behind.
    (run / "checkpoints" / f".checkpoint_{update_of(latest) + 1:06d}.pt.k1ll3d.tmp").write_bytes(b"torn")
    with open(run / "progress.csv", "a") as f:
        f.write(f"{resume_step + BATCH},0.12")

    out = run_to_end(["--resume", str(latest), "--no_export", f"train.total_timesteps={NUM_UPDATES * BATCH}"],
                     tmp_path / "resumed.log")
    assert f"resumed {latest}" in out
    assert temp_files(run) == []

    # The uninterrupted reference: same config, same seed, in this process.
    assert train.main(["--config", str(tiny_config), "run_name=reference", "--no_export", "ppo.anneal_lr=false"]) == 0
    capsys.readouterr()
    ref = tmp_path / "runs" / "reference"

    a = torch.load(ref / "final_model.pt", weights_only=False)
    b = torch.load(run / "final_model.pt", weights_only=False)
    assert a["update"] == b["update"] == NUM_UPDATES
    assert a["policy"].keys() == b["policy"].keys()
    for k in a["policy"]:
        assert torch.equal(a["policy"][k], b["policy"][k]), k
    opt_a, opt_b = a["agent"]["optimizer"]["state"], b["agent"]["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys() and opt_a
    for k in opt_a:
        for name, t in opt_a[k].items():
            assert torch.equal(t, opt_b[k][name]), ("optimizer", k, name)

    ref_rows, got_rows = progress_rows(ref / "progress.csv"), progress_rows(run / "progress.csv")
    assert [int(r["step"]) for r in ref_rows] == [BATCH * u for u in range(1, NUM_UPDATES + 1)]
    after = lambda rows: [r for r in rows if int(r["step"]) > resume_step]  # noqa: E731
    assert after(got_rows) == after(ref_rows)
    assert got_rows == ref_rows, "rows before the resume point are the killed run's own, and equal too"
    assert any(r.get("eval/val_cost_mean") for r in after(got_rows)), "an evaluation row after the resume point"

    sa, sb = np.load(ref / "training_stats.npz"), np.load(run / "training_stats.npz")
    assert list(sb["update"]) == list(range(1, NUM_UPDATES + 1))
    for k in ("global_step", "ep_cost_mean", "val_cost_mean", "approx_kl", "clip_fraction", "explained_variance"):
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def test_ctrl_c_writes_a_checkpoint_that_resumes_to_completion(tiny_config, tmp_path):
    run = tmp_path / "runs" / "ctrlc"
    log = tmp_path / "ctrlc.log"
    # A long run, so that Ctrl-C always lands mid-training however loaded the machine is.
    proc = start_training(["--config", str(tiny_config), "run_name=ctrlc", "--no_export",
                           f"train.total_timesteps={200 * BATCH}"], log)
    wait_for(run / "checkpoints" / "checkpoint_000002.pt", proc, log)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=60)
    out = log.read_text()
    assert rc == 130, out
    assert "Traceback" not in out, out
    m = re.search(r"checkpoint saved to (\S+_interrupted\.pt)", out)
    assert m, out
    saved = Path(m.group(1))
    assert saved.is_file() and saved.parent == run / "checkpoints"
    assert f"--resume {saved}" in out, "the message gives the command that resumes"
    assert temp_files(run) == []

    ckpt = train.load_checkpoint(saved)
    done = ckpt["update"]
    # The checkpoint is labelled with the last update that finished, and agrees with itself.
    assert done >= 2 and ckpt["global_step"] == done * BATCH
    assert ckpt["stats"]["update"] == list(range(1, done + 1))
    assert not (run / "final_model.pt").exists()

    end = done + 3  # resume, shortened to three more updates
    out = run_to_end(["--resume", str(saved), "--no_export", f"train.total_timesteps={end * BATCH}"],
                     tmp_path / "ctrlc_resumed.log")
    assert f"resumed {saved} at update {done}" in out
    final = torch.load(run / "final_model.pt", weights_only=False)
    assert final["update"] == end and final["global_step"] == end * BATCH
    stats = np.load(run / "training_stats.npz")
    assert list(stats["update"]) == list(range(1, end + 1)), "no update is skipped or repeated"
    assert np.isfinite(stats["val_cost_mean"][-1])
    steps = [int(r["step"]) for r in progress_rows(run / "progress.csv")]
    assert steps == sorted(set(steps)), "progress.csv has no repeated steps"
    assert temp_files(run) == []
