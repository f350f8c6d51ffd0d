"""Run a bundle workflow with ``torchrun`` (2 CPU processes, gloo) and collect each rank's output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"


def torchrun_bundle(
    logs: Path, configs: list[str], *run_args: str, timeout: float = 900, **overrides: object
) -> dict[int, str]:
    """``torchrun --nproc_per_node=2 -m monai.bundle run [run_args] --config_file ... --key value``.

    Args:
        logs: folder for torchrun's per-rank logs.
        configs: config files, merged in order.
        *run_args: words after ``run`` (e.g. the workflow id).
        timeout: seconds before the run is killed.
        **overrides: ``--key value`` config overrides.

    Returns:
        ``{rank: stdout + stderr}`` for ranks 0 and 1.

    Raises:
        AssertionError: torchrun failed; the message holds its stderr and both ranks' output tails.
    """
    cmd = [
        str(Path(sys.executable).with_name("torchrun")),
        "--standalone", "--nnodes=1", "--nproc_per_node=2", "--log-dir", str(logs), "--redirects", "3",
        "-m", "monai.bundle", "run", *run_args, "--config_file", str(configs),
        "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"),
    ]  # fmt: skip
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    outputs = {
        rank: "\n".join(
            f.read_text(errors="replace") for f in sorted(logs.glob(f"**/attempt_0/{rank}/std*.log"))
        )
        for rank in (0, 1)
    }
    assert proc.returncode == 0, (
        f"torchrun failed ({proc.returncode}):\n{proc.stderr[-3000:]}\nrank 0:\n{outputs[0][-4000:]}"
        f"\nrank 1:\n{outputs[1][-4000:]}"
    )
    return outputs
