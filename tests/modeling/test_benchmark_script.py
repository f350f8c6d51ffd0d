"""``scripts/benchmark.py`` end to end on the tiny model: it prints the cost split and the ratios, and
its JSON keeps the per-slice keys, adds the compressed variant and the split per variant."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = {"image_encoder", "memory_self_mlp", "memory_cross", "memory_encoder", "decoder"}


def test_benchmark_prints_the_split_and_writes_its_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--model", "tiny", "--image-size", "64",
         "--lengths", "8", "--repeats", "1", "--device", "cpu", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "where a slice's time goes" in proc.stdout
    assert "memory cross-attention per memory frame, pathseqsam / compressed" in proc.stdout
    result = json.loads(out.read_text())
    timing = result["timing_s_per_slice"]["8"]
    for key in ("encoder", "sam2", "pathseqsam", "pathseqsam_compressed"):
        assert timing[key] > 0
    assert timing["cmp/enc"] == timing["pathseqsam_compressed"] / timing["encoder"]
    split = result["split_ms_per_slice"]["8"]
    assert set(split) == {"encoder", "sam2", "pathseqsam", "pathseqsam_compressed"}
    assert set(split["encoder"]["mean"]) == COMPONENTS
    assert split["encoder"]["mean"]["memory_cross"] == 0.0 and split["encoder"]["mean"]["image_encoder"] > 0
    for variant in ("sam2", "pathseqsam", "pathseqsam_compressed"):
        assert set(split[variant]["steady"]) == COMPONENTS  # slices 6 and 7: memory full
        assert all(split[variant]["mean"][c] > 0 for c in COMPONENTS)
    # the default budget: the nearest slice native, the others 4 x 4 (native token = 16 px x 0.5 um)
    assert result["memory_token_um"] == [8.0, 32.0, 32.0]
    assert {(m["variant"], m["n"]) for m in result["memory"]} == {
        (v, 8) for v in ("encoder", "sam2", "pathseqsam", "pathseqsam_compressed")
    }
