"""The local servers as a user meets them: a `cxr stack up` interrupted while it starts, a stale stack.json
naming a reused process id, credentials in a URL that a command prints, and what the S3 server exposes.

A full `stack up` / `stack down` is in test_end_to_end.py; here only what can go wrong around it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import suppress
from pathlib import Path

import psutil
import pytest

from cxr.redact import install_log_redaction, redact
from cxr.services.process import ProcessId, free_port
from cxr.services.s3server import S3Server
from cxr.services.stackstate import STARTING, ServiceRecord, StackState, write_state
from tests.terminal import as_at_a_terminal

CXR = str(Path(sys.executable).parent / "cxr")


def _clean_env() -> dict[str, str]:
    """This environment without the S3, MLflow and Prefect settings other tests may have set."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_TRACKING", "PREFECT_API"))}


def _cxr(*args: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CXR, *args], capture_output=True, text=True, env=env, timeout=timeout)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _lives(process: psutil.Process) -> bool:
    """The process (id and start time) runs and is no zombie (one that exited, its parent not told yet)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_ctrl_c_while_the_stack_starts_stops_every_server_it_started_and_the_next_up_works(
    tmp_path, reliability_record
):
    folder, env = tmp_path / "stack", _clean_env()
    state_file = folder / "stack.json"
    up = subprocess.Popen(
        [CXR, "stack", "up", "--dir", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=as_at_a_terminal,  # SIGINT not ignored, even when the suite runs as a background job
    )
    descendants: set[psutil.Process] = set()  # every process `stack up` started, and theirs, seen while it ran

    def s3_spawned() -> bool:
        if up.poll() is not None:
            raise AssertionError(f"stack up ended early: {up.communicate()}")
        with suppress(psutil.NoSuchProcess):
            descendants.update(psutil.Process(up.pid).children(recursive=True))
        try:
            state = json.loads(state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        return "s3" in state["services"]

    try:
        # Once S3 is spawned (Prefect was spawned before it), the servers take seconds to answer: a signal now
        # lands while the stack starts. (Waiting until S3 answered raced with a fast Prefect on a busy machine:
        # the stack could be up before the signal arrived.)
        _wait_for(s3_spawned, 60, "the stack's S3 server to be spawned")
        started = json.loads(state_file.read_text())
        descendants.update(psutil.Process(up.pid).children(recursive=True))
        up.send_signal(signal.SIGINT)
        _, stderr = up.communicate(timeout=60)
        left = [p.pid for p in descendants if _lives(p)]

        assert started["phase"] == STARTING  # interrupted in the middle: Prefect was still starting
        assert up.returncode == 128 + signal.SIGINT, stderr
        assert "interrupted by SIGINT: stopped" in stderr and "Traceback" not in stderr
        assert {"prefect", "s3"} <= set(started["services"])
        assert {s["pid"] for s in started["services"].values()} <= {p.pid for p in descendants}
        assert not left, f"processes of the interrupted `stack up` still running: {left}"
        assert not [name for name, s in started["services"].items() if _group_alive(s["pid"])]
        assert not state_file.exists()
        status = _cxr("stack", "status", "--dir", str(folder), env=env)
        assert status.returncode == 1 and "not running" in status.stdout
        again = _cxr("stack", "up", "--dir", str(folder), "--service", "s3", env=env)
        assert again.returncode == 0, again.stderr
        try:
            assert json.loads(_cxr("stack", "status", "--dir", str(folder), "--json", env=env).stdout)["running"]
        finally:
            down = _cxr("stack", "down", "--dir", str(folder), env=env)
        assert "stopped: s3" in down.stderr
    finally:  # whatever failed above, no server of this test outlives it
        if up.poll() is None:
            up.kill()
        _cxr("stack", "down", "--dir", str(folder), env=env)
    reliability_record.record(
        "services",
        "SIGINT to `cxr stack up` after it spawned Prefect and S3, while they were still starting",
        "every server it had started was stopped and stack.json removed; `stack status` said not running; "
        "the next `stack up` in the same folder started",
    )


def test_stack_down_never_signals_a_process_id_that_now_names_another_process(tmp_path, reliability_record):
    folder, env = tmp_path / "stack", _clean_env()
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)  # its own process group, like a server
    try:
        pid = stranger.pid
        reused = ProcessId(pid, "ticks:1")  # the id as recorded: a process that started long before this one
        stale = StackState(str(folder), "up", ProcessId(1, None), (ServiceRecord("s3", reused, 1, "http://x", ""),))
        write_state(folder / "stack.json", stale)
        status = _cxr("stack", "status", "--dir", str(folder), env=env)
        down = _cxr("stack", "down", "--dir", str(folder), env=env)
        time.sleep(0.2)
        assert stranger.poll() is None  # not signalled
    finally:
        stranger.kill()
        stranger.wait()
    assert status.returncode == 1 and "s3       down" in status.stdout
    assert down.returncode == 0 and f"not signalled: s3 (pid {pid}" in down.stderr
    assert not (folder / "stack.json").exists()
    reliability_record.record(
        "services",
        "a stale stack.json whose process id now belongs to an unrelated process",
        "`stack status` reported the service down; `stack down` did not signal that process (its start time "
        "differs from the recorded one) and removed the stale file",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("MLflow at http://alice:pw@127.0.0.1:5000/api", "MLflow at http://***@127.0.0.1:5000/api"),
        ("http://u:p@ss@host/x", "http://***@host/x"),  # an unescaped @ in the password
        (
            "https://h/o?X-Amz-Signature=abc&X-Amz-Credential=K%2F1&v=2",
            "https://h/o?X-Amz-Signature=***&X-Amz-Credential=***&v=2",
        ),
        ("https://h/api?token=t0k3n", "https://h/api?token=***"),
        ("s3://bucket/key and http://127.0.0.1:4200 (a@b.c)", "s3://bucket/key and http://127.0.0.1:4200 (a@b.c)"),
    ],
)
def test_redact_masks_user_info_and_secret_query_values_only(text, expected):
    assert redact(text) == expected


def test_log_records_of_any_library_are_redacted(caplog):
    previous = logging.getLogRecordFactory()
    install_log_redaction()
    try:
        logging.getLogger("prefect.flow_runs").warning("View at %s/runs/1", "http://bob:hunter2@127.0.0.1:4200")
    finally:
        logging.setLogRecordFactory(previous)
    assert caplog.records[-1].getMessage() == "View at http://***@127.0.0.1:4200/runs/1"


def test_a_tracking_uri_with_credentials_is_printed_redacted_by_a_real_command(tmp_path, reliability_record):
    uri = f"http://alice:pw-5ecret@127.0.0.1:{free_port()}"
    env = {**_clean_env(), "MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    result = _cxr("lineage", "models:/cxr-demo/1", env=env)  # nothing listens there: MLflow's error names the URI
    assert result.returncode == 2
    assert "error: MLflow: API request to http://***@127.0.0.1:" in result.stderr
    assert "pw-5ecret" not in result.stdout + result.stderr and "alice" not in result.stdout + result.stderr
    reliability_record.record(
        "services",
        "a tracking URI with a user and password in it, its server unreachable",
        "one `error:` line naming http://***@host; the credentials appear in no output",
    )


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on, from /proc/net/tcp and tcp6."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.split(":")
                if table == "tcp":  # little-endian hex IPv4
                    address = ".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0))
                found.add((address, int(port, 16)))
    return found


def _status(method: str, url: str, data: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.s3
def test_the_s3_server_listens_on_loopback_only_and_nothing_answers_without_keys(
    tmp_path, monkeypatch, reliability_record
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "cxr-ports-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cxr-ports-secret")
    server = S3Server(tmp_path / "s3").start()
    try:
        listening = _listening(server.process.pid)
        s3_get = _status("GET", server.endpoint + "/")
        s3_put = _status("PUT", server.endpoint + "/anybucket/x.txt", b"x")
        filer = f"http://127.0.0.1:{server.ports['filer']}"
        filer_put = _status("PUT", filer + "/buckets/anybucket/x.txt", b"x")
        filer_get = _status("GET", filer + "/buckets/")
    finally:
        server.stop()
    expected_ports = {p + offset for p in server.ports.values() for offset in (0, 10_000)}
    assert {address for address, _ in listening} == {"127.0.0.1"}
    assert server.ports["s3"] in {port for _, port in listening}
    assert {port for _, port in listening} <= expected_ports  # no WebDAV, Iceberg (8181) or Lance (9101) port
    assert s3_get == 403 and s3_put == 403  # unsigned S3 requests
    assert filer_put == 401 and filer_get == 401  # the filer's HTTP API wants a JWT only the server has
    reliability_record.record(
        "services",
        "unsigned requests to the S3 server: to its S3 endpoint, and to its filer's HTTP API around S3",
        "S3 refused them (403), the filer too (401: no JWT); every port it listens on is on 127.0.0.1",
    )


def test_a_stack_json_from_before_start_times_names_only_processes_that_started_before_it(tmp_path):
    from cxr.services.process import Stopped
    from cxr.services.stack import down

    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        state = tmp_path / "stack.json"  # the format without start times, written an hour ago
        entry = {"pid": stranger.pid, "port": 1, "url": "http://x", "health": "http://x"}
        state.write_text(json.dumps({"root": str(tmp_path), "services": {"s3": entry}}))
        os.utime(state, (time.time() - 3600, time.time() - 3600))
        report = down(tmp_path)
        time.sleep(0.2)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
    assert report.names(Stopped.NOT_OURS) == ["s3"]
