"""MLflow tracking against a real `mlflow server` on loopback: params, step and system metrics, eval
metrics and artifacts of a training run; an unreachable server does not stop training."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = _port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/server.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, "mlflow server did not start"
            time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def _train(synth: Path, out: Path, uri: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "launch/train.py",
        "--ds",
        "ds_configs/cpu.json",
        f"data.root={synth}",
        "data.batch_size=8",
        "data.num_workers=0",
        "optim.batch_size=8",
        "optim.epochs=2",
        "optim.warmup_epochs=0.5",
        "train.progress=false",
        f"train.out_dir={out}",
        f"tracking.uri={uri}",
        "tracking.experiment=s4v-test",
        "tracking.run_name=mlflow-test",
        "tracking.system_metrics_interval=1",
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)


def test_run_contents_on_real_server(synth: Path, server: str, tmp_path: Path) -> None:
    r = _train(synth, tmp_path / "run", server)
    assert r.returncode == 0, r.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server)
    exp = client.get_experiment_by_name("s4v-test")
    (run,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'mlflow-test'")
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["optim.lr"] == "0.001" and p["optim.weight_decay"] == "0.15" and p["optim.label_smoothing"] == "0.1"
    assert p["model.preset"] == "tiny" and p["data.root"] == str(synth) and p["world_size"] == "1"
    assert p["ds.zero_optimization.stage"] == "0" and p["ds.train_batch_size"] == "8"
    assert int(p["trainable_params"]) > 0 and int(p["frozen_params"]) > 0

    loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in loss] == list(range(1, 11))
    for name in ("train/lr", "train/clips_per_s", "train/peak_mem_mb", "val/top1", "val/top5"):
        assert client.get_metric_history(run.info.run_id, name), name
    steps = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/step_s")}
    waits = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/data_wait_s")}
    assert sorted(steps) == list(range(1, 11)) and all(0 <= waits[k] <= steps[k] for k in steps)
    tflops = client.get_metric_history(run.info.run_id, "train/tflops")
    assert len(tflops) == 10 and all(m.value > 0 for m in tflops)
    assert not client.get_metric_history(run.info.run_id, "train/mfu")  # no known peak on a CPU
    assert len(client.get_metric_history(run.info.run_id, "val/top1")) == 2  # after each epoch
    system = [k for k in run.data.metrics if k.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system

    arts = {a.path for a in client.list_artifacts(run.info.run_id, "final")}
    assert {
        "final/trainable.pt",
        "final/config.yaml",
        "final/meta.json",
        "final/eval.json",
        "final/eval_confusion.png",
    } <= arts
    local = client.download_artifacts(run.info.run_id, "final/eval.json", str(tmp_path))
    assert '"top1"' in Path(local).read_text()

    # launch/eval.py adds its multi-view report to the same run.
    e = subprocess.run(
        [
            sys.executable,
            "launch/eval.py",
            "--checkpoint",
            str(tmp_path / "run" / "final"),
            "--views",
            "1x2",
            f"tracking.uri={server}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert e.returncode == 0, e.stderr[-3000:]
    run = client.get_run(run.info.run_id)
    assert 0 <= run.data.metrics["eval_1x2/top1"] <= run.data.metrics["eval_1x2/top5"] <= 1
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "eval_1x2")}
    assert {"eval_1x2/eval.json", "eval_1x2/eval_confusion.png"} <= arts
    assert len(client.search_runs([exp.experiment_id])) == 1


def test_unreachable_server_does_not_stop_training(synth: Path, tmp_path: Path) -> None:
    r = _train(synth, tmp_path / "run", f"http://127.0.0.1:{_port()}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("training continues without tracking") == 1
    assert (tmp_path / "run" / "final" / "trainable.pt").is_file()
