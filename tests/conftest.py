"""Shared fixtures: the repo root as working directory (segment path strings such as
'data/00000.csv' seed the simulator RNG, as in the official harness), the simulator
model and the golden costs of the official harness."""
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "tinyphysics.onnx"
DATA = ROOT / "data"


def _golden_path() -> Path:
    env = os.environ.get("TINYPHYSICS_GOLDEN")
    if env:
        return Path(env)
    mirror = os.environ.get("TINYPHYSICS_MIRROR")
    if mirror:
        return Path(mirror) / "golden" / "official_costs.json"
    return ROOT.parent / "shared" / "golden" / "official_costs.json"


def _require(path: Path, what: str):
    """Skip locally when an asset is absent; under CI a missing asset is a failure."""
    if not path.exists():
        msg = f"{what} not found at {path} (run `make setup`)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(autouse=True)
def _repo_root_cwd(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="session")
def model_path() -> Path:
    _require(MODEL, "simulator model")
    return MODEL


@pytest.fixture(scope="session")
def model(model_path):
    """The exact engine with 2 intra-op threads: the suite runs on 2 cores, and the logits do not
    depend on the thread count (tests/test_parity.py::test_thread_count_does_not_change_a_bit)."""
    import tinyphysics
    return tinyphysics.TinyPhysicsModel(model_path, num_threads=2)


@pytest.fixture(scope="session")
def segment_paths():
    """'data/NNNNN.csv' strings of every real segment present, sorted."""
    _require(DATA, "data directory")
    paths = sorted(p.name for p in DATA.glob("*.csv"))
    if not paths:
        _require(DATA / "00000.csv", "segment CSVs")
    return [f"data/{name}" for name in paths]


@pytest.fixture(scope="session")
def golden():
    path = _golden_path()
    _require(path, "golden costs")
    return json.loads(path.read_text())


@pytest.fixture
def write_config(tmp_path):
    """Write a training config (dict) to tmp_path/tiny.yaml with run_dir and export output
    inside tmp_path; returns the file's path."""
    import yaml

    def write(cfg: dict) -> Path:
        full = dict(cfg, run_dir=str(tmp_path / "runs"), export={"output": str(tmp_path / "ppo_policy.onnx")})
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump(full))
        return path
    return write
