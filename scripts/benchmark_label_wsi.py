#!/usr/bin/env python
"""MONAI Label whole-slide inference: the server's time and memory against the bundle command, one run.

Run in the MONAI Label environment (``.venv-label``). For each slide size (default 8192 px square at
0.5 um/px: the same synthetic slide as ``scripts/benchmark_wsi.py``, three tissue sections, written
into ``--out`` unless already there):

1. a MONAI Label server (``monailabel start_server --app pathseqsam/label/app``, 127.0.0.1) serves a
   copy of the bundle with ``--checkpoint`` (default: the demo network trained here for 6 epochs,
   the recipe of ``tests/conftest.py``, about a minute on 2 CPU cores);
2. its resident set size (the server process and its children, sampled every 20 ms with psutil) is
   taken idle, then during ``POST /infer/wsi_v2/pathseqsam?output=asap`` on the slide, while
   ``/info/`` is polled every 0.2 s (its answer times are reported);
3. the bundle command (``python -m monai.bundle run --config_file configs/inference_wsi.json``) runs
   on the same slide with the same weights in a fresh process, sampled the same way;
4. printed: one table row per side (wall time, polygons, idle and peak RSS) and the server's peak
   minus its idle RSS (the issue's bound: 2 GiB), plus ``results.json`` in ``--out``.

Example::

    .venv-label/bin/python scripts/benchmark_label_wsi.py --sizes 8192
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


def _env(threads: int) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
        "MONAILABEL_PYEXE": sys.executable,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }


def _rss(pid: int) -> int:
    import psutil

    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class PeakSampler:
    """The largest RSS of a process tree, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, _rss(self.pid))
            except Exception:  # the process ended
                return
            time.sleep(0.02)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _slide(out: Path, size: int, mpp: float) -> Path:
    from pathseqsam.synthetic.slides import make_slide_scene, write_synthetic_slide

    path = out / "studies" / f"synthetic_{size}.tiff"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        area_mm2 = (size * mpp / 1000.0) ** 2  # the scene of scripts/benchmark_wsi.py
        scene = make_slide_scene(size, size, mpp, n_glomeruli=max(60, int(15 * area_mm2)), seed=size)
        print(f"writing {path} ...", file=sys.stderr, flush=True)
        write_synthetic_slide(path, scene)
    return path


def _demo_checkpoint(out: Path) -> Path:
    """The demo network of tests/conftest.py: 6 epochs on easy synthetic patches at 2 um/px."""
    from monai.bundle import ConfigWorkflow

    from pathseqsam.synthetic import generate_synthetic_dataset

    root = out / "demo_bundle"
    if (root / "models" / "model.pt").is_file():
        return root / "models" / "model.pt"
    data = out / "demo_data"
    generate_synthetic_dataset(
        data, cases=6, seed=0, image_size=128, sections=6, field_um=256.0, difficulty="easy",
        stacks=False, contact_sheet=False,
    )  # fmt: skip
    configs = ROOT / "bundle" / "configs"
    workflow = ConfigWorkflow(
        workflow_type="train",
        config_file=str(configs / "train.json"),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        bundle_root=str(root),
        dataset_dir=str(data),
        window=4,
        batch_size=2,
        **{"train#windows_per_case": 8, "train#trainer#max_epochs": 6},
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return root / "models" / "model.pt"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_run(out: Path, bundle: Path, slide: Path, threads: int) -> dict:
    import requests

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "monailabel.main",
        "start_server",
        "--app",
        str(ROOT / "pathseqsam/label/app"),
    ]
    cmd += ["--studies", str(slide.parent), "--host", "127.0.0.1", "--port", str(port)]
    cmd += [
        "--conf",
        "models",
        "pathseqsam",
        "--conf",
        "bundle",
        str(bundle),
        "--conf",
        "skip_trainers",
        "true",
    ]
    log = open(out / "server.log", "wb")
    proc = subprocess.Popen(
        cmd, cwd=out, env=_env(threads), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited while starting: see {out / 'server.log'}")
            try:
                if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("no /info/ answer within 300 s")
            time.sleep(1.0)
        time.sleep(2.0)
        idle = _rss(proc.pid)
        answer: dict = {}
        done = threading.Event()

        def request() -> None:
            answer["response"] = requests.post(
                f"{url}/infer/wsi_v2/pathseqsam",
                params={"image": slide.name.split(".")[0], "output": "asap"},
                data={"wsi": json.dumps({"location": [0, 0], "size": [0, 0], "params": {"device": "cpu"}})},
                timeout=3600,
            )
            done.set()

        latencies, progress = [], []
        t0 = time.perf_counter()
        with PeakSampler(proc.pid) as sampler:
            worker = threading.Thread(target=request, daemon=True)
            worker.start()
            while not done.is_set():
                s = time.perf_counter()
                job = requests.get(f"{url}/info/", timeout=60).json()["pathseqsam_wsi"]
                latencies.append(time.perf_counter() - s)
                if job.get("running"):
                    progress.append(job)
                time.sleep(0.2)
            worker.join()
        wall = time.perf_counter() - t0
        response = answer["response"]
        if response.status_code != 200:
            raise RuntimeError(f"whole-slide request answered {response.status_code}: {response.text[:2000]}")
        polygons = len(list(ET.fromstring(response.text).iter("Annotation")))
        tiles = max((job.get("tiles_total") or 0 for job in progress), default=None)
        return {
            "wall_s": wall,
            "polygons": polygons,
            "tiles": tiles,  # from /info/'s progress
            "idle_rss_mib": idle / MIB,
            "peak_rss_mib": max(sampler.peak, idle) / MIB,
            "info_answers": len(latencies),
            "info_answers_while_running": len(progress),
            "info_max_s": max(latencies) if latencies else None,
        }
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def _bundle_run(out: Path, bundle: Path, slide: Path, threads: int) -> dict:
    target = out / "bundle_run"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(bundle / "configs/inference_wsi.json"),
    ]
    cmd += [
        "--meta_file",
        str(bundle / "configs/metadata.json"),
        "--logging_file",
        str(bundle / "configs/logging.conf"),
    ]
    cmd += ["--bundle_root", str(bundle), "--slides", str(slide), "--output_dir", str(target)]
    cmd += ["--device", "$torch.device('cpu')", "--slide_settings#overwrite", "true"]
    t0 = time.perf_counter()
    with open(out / "bundle.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=out, env=_env(threads), stdout=log, stderr=subprocess.STDOUT)
        with PeakSampler(proc.pid) as sampler:
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"the bundle command failed: see {out / 'bundle.log'}")
    name = slide.name.split(".")[0]
    features = json.loads((target / name / "glomeruli.geojson").read_text())["features"]
    summary = json.loads((target / name / "summary.json").read_text())
    return {
        "wall_s": time.perf_counter() - t0,
        "polygons": len(features),
        "tiles": summary["tiles"],
        "idle_rss_mib": None,
        "peak_rss_mib": sampler.peak / MIB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192], help="slide sides in pixels")
    parser.add_argument("--mpp", type=float, default=0.5, help="synthetic slides' um per pixel")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "benchmark_label_wsi"))
    parser.add_argument("--checkpoint", help="model.pt to serve (default: train the demo network here)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server and the bundle")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else _demo_checkpoint(out)
    bundle = out / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(ROOT / "bundle" / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    shutil.copy(checkpoint, bundle / "models" / "model.pt")

    results = {}
    for size in args.sizes:
        slide = _slide(out, size, args.mpp)
        print(f"server on {slide.name} ...", file=sys.stderr, flush=True)
        server = _server_run(out, bundle, slide, args.threads)
        print(f"bundle command on {slide.name} ...", file=sys.stderr, flush=True)
        results[size] = {"server": server, "bundle": _bundle_run(out, bundle, slide, args.threads)}

    print(f"\ncheckpoint {checkpoint}, slides at {args.mpp} um/px, {args.threads} torch thread(s), CPU")
    print("| slide px | run | tiles | polygons | wall s | idle RSS MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for size, r in results.items():
        for side in ("server", "bundle"):
            x = r[side]
            idle = f"{x['idle_rss_mib']:.0f}" if x["idle_rss_mib"] is not None else "-"
            print(
                f"| {size} | {side} | {x['tiles']} | {x['polygons']} | {x['wall_s']:.1f} | {idle} | {x['peak_rss_mib']:.0f} |"
            )
        s = r["server"]
        print(
            f"{size}: server peak - idle = {s['peak_rss_mib'] - s['idle_rss_mib']:.0f} MiB (bound 2048); "
            f"/info/ answered {s['info_answers_while_running']} times while the slide ran, slowest {s['info_max_s']:.2f} s"
        )
    (out / "results.json").write_text(json.dumps({str(k): v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
