"""The logged model is servable: ``mlflow models serve -m runs:/ID/model`` answers with ONNX Runtime's
predictions (MLflow's scoring server in a subprocess on 127.0.0.1, ``--env-manager local``: no network)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from tracking_testlib import tracked_run, write_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("mlflow_globals")]

START_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow models serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    pytest.fail(f"mlflow models serve did not answer {url} in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def test_mlflow_models_serve_answers_with_onnxruntimes_predictions(store: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    run_dir = tmp_path / "run"
    write_model(run_dir / "baseline", seed=0)
    onnx_path = write_model(run_dir, seed=1)
    tracker = tracked_run(store, "serve", run_dir)

    port = _free_port()
    bin_dir = str(Path(sys.executable).parent)  # the scoring server starts `uvicorn` from PATH
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }
    log = tmp_path / "serve.log"
    cmd = [str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", f"runs:/{tracker.run_id}/model"]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_up(proc, f"http://127.0.0.1:{port}/ping", log)
        x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": {"x": x.tolist()}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the uvicorn it started, nothing else
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_outputs()[0].name
    expected = session.run([name], {"x": x})[0]
    assert set(answer["predictions"]) == {name}
    np.testing.assert_allclose(np.asarray(answer["predictions"][name], np.float32), expected, rtol=1e-5, atol=1e-6)
