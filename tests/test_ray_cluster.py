"""`make curate` on an existing Ray cluster (RAY_ADDRESS): a real head node started with `ray start
--head --block` in its own temp dir, the real CLI joining it, two corpus videos from the loopback
server. The cluster runs with token auth and the driver gets only the token (no RAY_AUTH_MODE), as a
user's shell would after `ray start` on a machine with ~/.ray/auth_token.

The cluster is stopped by ending the `ray start --block` process we started (it takes its gcs,
raylet and workers down); never `ray stop`, which would end every Ray on the machine, including
other sessions' embedded ones. Leftovers are found by our private temp dirs in their command lines."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
DAG = REPO / "dags" / "curate.yaml"
RAY = Path(sys.executable).with_name("ray")
VIDEOS = ("talk_360p30", "cuts_360p25")     # one plain, one with scene cuts: several clips

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    drop = {"RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **extra}


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line names `text` (one of our private temp dirs)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if text in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    out.append(int(d.name))
            except OSError:
                pass
    return out


class Head:
    """`ray start --head --block` in a subprocess; stop() ends it (and so its children) by pid."""

    def __init__(self, temp: Path, token: str):
        self.temp, self.port = temp, _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = temp.with_name(temp.name + ".log")     # outside temp: Ray owns that folder
        cmd = [str(RAY), "start", "--head", "--block", f"--port={self.port}", "--num-cpus=2",
               "--node-ip-address=127.0.0.1", "--include-dashboard=false", f"--dashboard-port={_free_port()}",
               f"--ray-client-server-port={_free_port()}", f"--temp-dir={temp}", "--disable-usage-stats",
               "--object-store-memory=150000000"]
        with open(self.log, "w") as f:
            # no drain on SIGTERM: it waits up to 30 s for idle worker leases, meant for Serve replicas
            env = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
            self.proc = subprocess.Popen(cmd, env=env, stdout=f,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 90
        while "Ray runtime started" not in self.log.read_text():
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"ray start failed:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> list[int]:
        """End the head; returns the pids of our Ray processes still alive after it (then kills those)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        left = []
        for _ in range(50):                 # children notice their parent's exit within a few seconds
            left = _pids_mentioning(str(self.temp))
            if not left:
                break
            time.sleep(0.2)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left


@pytest.fixture(scope="module")
def cluster():
    # Short temp paths: Ray's unix sockets live under them and must stay under ~107 characters.
    temp = Path(tempfile.mkdtemp(prefix="rtc", dir="/tmp"))
    token = secrets.token_hex(32)
    head = Head(temp / "head", token)
    try:
        yield {"head": head, "token": token, "temp": temp}
    finally:
        head.stop()
        shutil.rmtree(temp, ignore_errors=True)


def _curate(root: Path, sources: Path, env: dict, timeout=240):
    cmd = [sys.executable, "-m", "pipeline.curate", "--data", str(root), "--sources", str(sources), "--dag", str(DAG)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _outputs(root: Path) -> dict:
    cur = root / "curate"
    return {"stats": json.loads((cur / "stats.json").read_text()), "clips": pd.read_parquet(cur / "clips.parquet"),
            "videos": pd.read_parquet(cur / "videos.parquet")}


def test_curate_on_an_existing_cluster_matches_the_embedded_run(cluster, _server, tmp_path):
    head = cluster["head"]
    rows = [f"{_server.url(v, 'direct')},{v},cc0,loopback" for v in VIDEOS]
    (tmp_path / "sources.csv").write_text("url,video_id,license,note\n" + "\n".join(rows) + "\n")

    # the cluster: RAY_ADDRESS and the token only; the CLI must present it by itself
    r = _curate(tmp_path / "on_cluster", tmp_path / "sources.csv",
                _env(RAY_ADDRESS=head.address, RAY_AUTH_TOKEN=cluster["token"]))
    assert r.returncode == 0, r.stderr[-3000:]
    ext = _outputs(tmp_path / "on_cluster")
    ray_info = ext["stats"]["ray"]
    assert ray_info["embedded"] is False and ray_info["address"] == head.address
    assert ray_info["gcs_address"].endswith(f":{head.port}") and ray_info["cluster_cpus"] == 2.0
    assert f"cluster at {ray_info['gcs_address']}" in r.stderr and "[2/2]" in r.stderr
    # the cluster's own logs hold this job's workers (Ray names them worker-<id>-<job id>-<pid>.out)
    logs = next(head.temp.glob("session_2*")) / "logs"
    assert list(logs.glob(f"worker-*-{ray_info['job_id']}-*.out")), sorted(p.name for p in logs.iterdir())

    # the same inputs on an embedded Ray (in its own temp dir, so its processes can be found after)
    emb_tmp = Path(tempfile.mkdtemp(prefix="rte", dir="/tmp"))
    try:
        r2 = _curate(tmp_path / "embedded", tmp_path / "sources.csv", _env(RAY_TMPDIR=str(emb_tmp)))
        assert r2.returncode == 0, r2.stderr[-3000:]
        assert _pids_mentioning(str(emb_tmp)) == []          # the embedded Ray ended with the CLI
    finally:
        shutil.rmtree(emb_tmp, ignore_errors=True)
    emb = _outputs(tmp_path / "embedded")
    assert emb["stats"]["ray"]["embedded"] is True and emb["stats"]["ray"]["address"] == ""
    assert emb["stats"]["ray"]["gcs_address"] != ray_info["gcs_address"]

    assert set(ext["videos"]["video_id"]) == set(VIDEOS) and (ext["videos"]["status"] == "ok").all()
    assert (ext["clips"]["status"] == "accepted").sum() >= 3
    pd.testing.assert_frame_equal(ext["clips"], emb["clips"])
    cols = ["video_id", "status", "num_frames", "cut_frames", "accepted"]
    pd.testing.assert_frame_equal(ext["videos"][cols], emb["videos"][cols])


@pytest.mark.parametrize("address,words", [
    ("127.0.0.1:{port}", "no Ray cluster at 127.0.0.1:"),
    ("ray://127.0.0.1:{port}", "no Ray cluster at ray://127.0.0.1:"),
    ("just-a-host", "bad Ray address 'just-a-host'"),
])
def test_ray_address_pointing_nowhere_is_one_clear_line(tmp_path, address, words):
    (tmp_path / "sources.csv").write_text("url,video_id,license,note\nhttp://127.0.0.1:9/v.mp4,a,cc0,\n")
    r = _curate(tmp_path / "data", tmp_path / "sources.csv",
                _env(RAY_ADDRESS=address.format(port=_free_port())), timeout=60)   # Ray alone retries for minutes
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert words in r.stderr and "EngineError" in r.stderr
    assert not (tmp_path / "data").exists()


def test_stopping_the_head_leaves_no_ray_process(cluster):
    head = cluster["head"]
    assert _pids_mentioning(str(head.temp))            # gcs, raylet... are running now, found by our temp dir
    assert head.stop() == []                            # and all gone once the head process ends
    assert head.proc.returncode is not None
