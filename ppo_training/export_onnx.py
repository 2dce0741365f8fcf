"""Export a trained policy to ONNX for controllers/ppo.py.

    python ppo_training/export_onnx.py --model_path runs/<run>/final_model.pt --output models/ppo_policy.onnx

The graph maps obs float32 [N, OBS_DIM] to the deterministic steer float32 [N, 1]
(the Gaussian mean clamped to [-2, 2]); the observation normaliser is inside it.
Metadata: obs_version, obs_dim, obs_names, future_offsets, history (checked by the
controller at load), format_version, and the training config (JSON). After writing,
the ONNX output is checked against torch on random and real-scale inputs (max abs
difference <= 1e-5), and the file is written atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from controllers import ppo as ppo_controller  # noqa: E402
from ppo_training.policy.actor_critic import ActorCritic  # noqa: E402

FORMAT_VERSION = 1
TOLERANCE = 1e-5


class _Deterministic(torch.nn.Module):
    def __init__(self, policy: ActorCritic):
        super().__init__()
        self.policy = policy

    def forward(self, obs):
        return self.policy.act_deterministic(obs)


def export(policy: ActorCritic, output, training_config: dict | None = None, opset: int = 17) -> float:
    """Write `policy` to `output` as ONNX; returns the max |onnx - torch| seen in the check.

    Raises ValueError when the policy's input size is not controllers.ppo.OBS_DIM or the
    check exceeds TOLERANCE (nothing is written then)."""
    import onnx
    import onnxruntime as ort

    obs_dim = policy.config["obs_dim"]
    if obs_dim != ppo_controller.OBS_DIM:
        raise ValueError(f"policy takes {obs_dim} features, controllers/ppo.py builds {ppo_controller.OBS_DIM}")
    policy = policy.eval()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    try:
        dummy = torch.zeros(1, obs_dim)
        torch.onnx.export(_Deterministic(policy), (dummy,), tmp, input_names=["obs"], output_names=["steer"],
                          dynamic_axes={"obs": {0: "batch"}, "steer": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
        m = onnx.load(tmp)
        meta = {"obs_version": str(ppo_controller.OBS_VERSION), "obs_dim": str(ppo_controller.OBS_DIM),
                "obs_names": json.dumps(ppo_controller.OBS_NAMES),
                "future_offsets": json.dumps(list(ppo_controller.FUTURE_OFFSETS)),
                "history": str(ppo_controller.HISTORY), "format_version": str(FORMAT_VERSION),
                "training_config": json.dumps(training_config or {}, default=str)}
        for k, v in meta.items():
            entry = m.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.checker.check_model(m)
        onnx.save(m, tmp)
        sess = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        gen = torch.Generator().manual_seed(0)
        mean = policy.obs_rms.mean if policy.obs_rms is not None else torch.zeros(obs_dim)
        std = policy.obs_rms.var.sqrt() if policy.obs_rms is not None else torch.ones(obs_dim)
        x = (mean + std * torch.randn(512, obs_dim, generator=gen)).float()
        with torch.no_grad():
            ref = policy.act_deterministic(x).numpy()
        got = sess.run(None, {"obs": x.numpy()})[0]
        err = float(np.max(np.abs(got - ref)))
        if not err <= TOLERANCE:
            raise ValueError(f"{output}: ONNX and torch disagree by {err:.2e} > {TOLERANCE}")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the policy is meant to be shared
        os.replace(tmp, output)
        tmp = None
        return err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_path", required=True, help="final_model.pt, best_model.pt or checkpoint_*.pt")
    ap.add_argument("--output", default="models/ppo_policy.onnx")
    args = ap.parse_args(argv)
    from ppo_training.utils.checkpoint import CheckpointError, load_checkpoint
    try:
        ckpt = load_checkpoint(args.model_path)
        policy = ActorCritic(**ckpt["policy_config"])
        policy.load_state_dict(ckpt["policy"])
        err = export(policy, args.output, training_config=ckpt.get("config"))
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {args.output}: cannot write the policy ({e.strerror or e})", file=sys.stderr)
        return 2
    print(f"exported {args.model_path} -> {args.output} (max |onnx - torch| = {err:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
