"""The scale stack (compose.scale.yml), up once: 3 replicas, the HAProxy edge, Prometheus.

One `compose up` for the whole module (image builds are the expensive part; the serving image is
the one docker-compose.yml builds, same tag). Order matters: the destructive test (a replica
SIGKILLed) runs last.
"""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO_ROOT
from tests.deploy.conftest import (
    BUILD_SECONDS,
    START_SECONDS,
    free_port,
    mnist_test_digits,
    run_tool,
)

COMPOSE_FILE = "compose.scale.yml"
REPLICAS = 3
#: requests per client in 10 s before the edge answers 429. Through Docker's port proxy every
#: client on the host is one address, so the host-side loads below are paced, not just paused:
#: at most HOST_RATE requests/s in all, however fast the machine answers, so no 10 s window
#: of them (one test after another) comes near the limit.
RATE_LIMIT = 600
HOST_RATE = RATE_LIMIT / 10 * 2 / 3


@dataclass(frozen=True)
class ScaleStack:
    """A running scale stack: the compose command, the edge URL and Prometheus' URL."""

    compose: list[str]
    url: str
    prometheus: str

    def run(self, *args: str, timeout: float = 60) -> str:
        result = run_tool([*self.compose, *args], timeout=timeout)
        assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}"
        return result.stdout

    def containers(self, service: str) -> list[str]:
        return self.run("ps", "--quiet", service).split()

    def query(self, promql: str) -> list[dict[str, object]]:
        """An instant PromQL query; the result vector."""
        response = requests.get(
            f"{self.prometheus}/api/v1/query", params={"query": promql}, timeout=10
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["status"] == "success", answer
        result: list[dict[str, object]] = answer["data"]["result"]
        return result


@pytest.fixture(scope="module")
def stack(docker_engine: list[str]) -> Iterator[ScaleStack]:
    """Build and start compose.scale.yml under a unique project name; always `down` after."""
    project = f"mnist-scale-test-{uuid.uuid4().hex[:8]}"
    port, prometheus_port = free_port(), free_port()
    compose = [*docker_engine, "--file", COMPOSE_FILE, "--project-name", project]
    env = {
        "MNIST_PORT": str(port),
        "PROMETHEUS_PORT": str(prometheus_port),
        "MNIST_REPLICAS": str(REPLICAS),
        "MNIST_WORKERS": "1",  # 3 replicas x 1 worker: the 2 cores are shared with the load
        "EDGE_RATE_LIMIT": str(RATE_LIMIT),
    }
    try:
        build = run_tool([*compose, "build"], timeout=BUILD_SECONDS, extra_env=env)
        assert build.returncode == 0, f"compose build failed:\n{build.stdout[-4000:]}{build.stderr}"
        up = run_tool(
            [*compose, "up", "--detach", "--wait", "--wait-timeout", str(START_SECONDS)],
            timeout=START_SECONDS + 60,
            extra_env=env,
        )
        if up.returncode != 0:
            logs = run_tool([*compose, "logs", "--no-color", "--tail", "60"], timeout=60)
            pytest.fail(f"compose up failed:\n{up.stderr}\ncontainer logs:\n{logs.stdout}")
        yield ScaleStack(
            compose=compose,
            url=f"http://127.0.0.1:{port}",
            prometheus=f"http://127.0.0.1:{prometheus_port}",
        )
    finally:
        down = run_tool([*compose, "down", "--volumes", "--timeout", "10"], timeout=180)
        assert down.returncode == 0, f"compose down failed: {down.stderr}"


@pytest.fixture(scope="module")
def digit_body(mnist_data_dir: Path) -> bytes:
    pixels, labels = mnist_test_digits(mnist_data_dir, 1)
    assert labels[0] == 7
    return json.dumps({"images": [pixels[0].tolist()]}).encode()


@dataclass
class Outcome:
    """One request of a load: when it started (monotonic), how long it took, what came back."""

    started: float
    seconds: float
    status: int | None
    replica: str | None = None
    error: str | None = None


@dataclass
class SteadyLoad:
    """``clients`` threads posting /predict until stopped, each starting one every ``interval`` s.

    Paced from start to start, so the load's rate is ``clients / interval`` at most on any
    machine: a fast one does not push the host's address over the edge's rate limit.
    """

    url: str
    body: bytes
    clients: int = 2
    interval: float = 0.05
    timeout: float = 10.0
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        assert self.clients / self.interval <= HOST_RATE, "the load would reach the rate limit"

    def __enter__(self) -> SteadyLoad:
        for _ in range(self.clients):
            thread = threading.Thread(target=self._client, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def _client(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = session.post(
                        self.url + "/predict",
                        data=self.body,
                        headers={"Content-Type": "application/json"},
                        timeout=self.timeout,
                    )
                    ok = response.status_code == 200 and (
                        response.json()["predictions"][0]["digit"] == 7
                    )
                    outcome = Outcome(
                        started,
                        time.monotonic() - started,
                        response.status_code,
                        response.headers.get("X-Served-By"),
                        None if ok else response.text[:200],
                    )
                except requests.RequestException as exc:
                    outcome = Outcome(started, time.monotonic() - started, None, None, repr(exc))
                self.outcomes.append(outcome)
                self._stop.wait(max(0.0, started + self.interval - time.monotonic()))

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is not None]


@pytest.mark.docker
@pytest.mark.timeout(BUILD_SECONDS + START_SECONDS + 120)
def test_every_replica_serves_through_the_edge(stack: ScaleStack, digit_body: bytes) -> None:
    assert len(stack.containers("mnist")) == REPLICAS
    with SteadyLoad(stack.url, digit_body, clients=2) as load:
        time.sleep(3)
    assert load.outcomes and not load.failures(), load.failures()[:5]
    served_by = {o.replica for o in load.outcomes}
    assert len(served_by) == REPLICAS, served_by


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_slow_clients_at_the_edge_leave_good_requests_fast(
    stack: ScaleStack, digit_body: bytes
) -> None:
    url = urllib.parse.urlsplit(stack.url)
    address = (url.hostname or "127.0.0.1", url.port or 80)
    stop = threading.Event()
    slow = [socket.create_connection(address, timeout=5) for _ in range(64)]
    for sock in slow:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")

    def trickle() -> None:  # one header byte per second on each connection
        while not stop.wait(1.0):
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.send(b"X")

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        time.sleep(1)
        with SteadyLoad(stack.url, digit_body, clients=2, interval=0.05, timeout=5) as load:
            time.sleep(8)
    finally:
        stop.set()
        trickler.join()
        for sock in slow:
            sock.close()
    outcomes = load.outcomes
    fast = [o for o in outcomes if o.error is None and o.seconds <= 1.0]
    assert len(outcomes) >= 100, f"only {len(outcomes)} good requests were made"
    share = len(fast) / len(outcomes)
    slowest = max(o.seconds for o in outcomes)
    assert share >= 0.99, f"{share:.2%} answered within 1 s (slowest {slowest:.2f} s)"


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_prometheus_scrapes_every_replica_and_answers_p99(
    stack: ScaleStack, digit_body: bytes
) -> None:
    with SteadyLoad(stack.url, digit_body, clients=1, interval=0.05):
        deadline = time.monotonic() + 60
        up: list[dict[str, object]] = []
        p99: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            up = stack.query('up{job="mnist"} == 1')
            p99 = stack.query(
                "histogram_quantile(0.99, sum by (le) "
                '(rate(mnist_http_request_duration_seconds_bucket{job="mnist",route="/predict"}[30s])))'
            )
            if len(up) == REPLICAS and p99:
                break
            time.sleep(2)
    assert len(up) == REPLICAS, up
    [quantile] = p99
    seconds = float(quantile["value"][1])  # type: ignore[index]
    assert 0 < seconds < 10, quantile
    rules = requests.get(f"{stack.prometheus}/api/v1/rules", timeout=10).json()
    names = {rule["name"] for group in rules["data"]["groups"] for rule in group["rules"]}
    assert {"MnistHighErrorRate", "MnistHighP99Latency", "MnistReplicaDown"} <= names


RATE_BURST = """
import http.client, json, sys
connection = http.client.HTTPConnection("edge", 8080, timeout=10)
for count in range(1, {limit} + 400):
    connection.request("GET", "/v2/health/live")
    response = connection.getresponse()
    body = response.read()
    if response.status == 429:
        print(json.dumps({{"count": count, "retry_after": response.getheader("Retry-After"),
                          "body": json.loads(body)}}))
        sys.exit(0)
print(json.dumps({{"count": count, "status": response.status}}))
"""


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_a_client_over_the_rate_limit_gets_429_with_retry_after(stack: ScaleStack) -> None:
    # from another container: through Docker's port proxy every host client has one address
    answer = json.loads(
        stack.run(
            "exec", "-T", "prometheus", "python3", "-c", RATE_BURST.format(limit=RATE_LIMIT),
            timeout=100,
        )
    )  # fmt: skip
    assert answer.get("retry_after") == "10", answer
    assert answer["body"]["error"]["code"] == "too_many_requests"
    # the rate is a sliding 10 s window: the burst may take a little longer than 10 s
    assert RATE_LIMIT < answer["count"] < RATE_LIMIT + 400, answer
    # the host's own clients are a different address: still served
    assert requests.get(stack.url + "/v2/health/live", timeout=5).status_code == 200


@pytest.mark.docker
def test_containers_run_with_limits_and_without_privileges(stack: ScaleStack) -> None:
    for service in ("mnist", "edge", "prometheus"):
        for container in stack.containers(service):
            inspect = run_tool(
                [stack.compose[0], "inspect", "--format", "{{json .HostConfig}}", container],
                timeout=30,
            )
            host = json.loads(inspect.stdout)
            assert host["CapDrop"] == ["ALL"] and not host["CapAdd"], (service, host["CapDrop"])
            assert "no-new-privileges:true" in host["SecurityOpt"], service
            assert host["ReadonlyRootfs"] is True, service
            assert host["Memory"] > 0 and host["PidsLimit"] > 0, service
            assert all(p["HostIp"] == "127.0.0.1" for b in (host["PortBindings"] or {}).values()
                       for p in b), service  # fmt: skip


EDGE_STATE = """
import csv, io, json, sys, time, urllib.request
address, seconds = sys.argv[1], float(sys.argv[2])
def states():
    with urllib.request.urlopen("http://edge:8404/stats;csv", timeout=2) as answer:
        rows = list(csv.DictReader(io.StringIO(answer.read().decode().lstrip("# "))))
    return [r["status"] for r in rows if r.get("addr") == address]
assert any(s.startswith("UP") for s in states()), states()
print("watching", flush=True)
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    now = states()
    if not any(s.startswith("UP") for s in now):
        break
    time.sleep(0.05)
print(json.dumps({"states": now, "at": time.time()}), flush=True)
"""


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_a_replica_killed_under_load_costs_no_request(stack: ScaleStack, digit_body: bytes) -> None:
    victim = stack.containers("mnist")[0]
    docker = stack.compose[0]
    inspect = run_tool(
        [docker, "inspect", "--format", "{{json .NetworkSettings.Networks}}", victim], timeout=30
    )
    [network] = json.loads(inspect.stdout).values()
    address = f"{network['IPAddress']}:8000"
    # the edge's own view, polled from inside the network until the slot is no longer UP
    watch = [*stack.compose, "exec", "-T", "prometheus", "python3", "-c", EDGE_STATE, address, "10"]
    with SteadyLoad(stack.url, digit_body, clients=3, interval=0.1) as load:
        time.sleep(2)
        with subprocess.Popen(watch, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT) as watcher:
            assert watcher.stdout is not None
            assert watcher.stdout.readline().strip() == "watching"
            killed_at = time.time()  # before the command: the time measured is an upper bound
            kill = run_tool([docker, "kill", "--signal", "KILL", victim], timeout=30)
            assert kill.returncode == 0, kill.stderr
            state = json.loads(watcher.stdout.readline())
        time.sleep(3)
    assert not load.failures(), load.failures()[:5]
    out_after = state["at"] - killed_at
    assert all(not s.startswith("UP") for s in state["states"]), state
    assert out_after <= 2.0, f"the dead replica left the pool {out_after:.2f} s after the kill"
    outcomes = load.outcomes
    served_by = {o.replica for o in outcomes}
    assert len(served_by) >= REPLICAS - 1 and len(outcomes) > 100, (served_by, len(outcomes))
    slowest = max(o.seconds for o in outcomes)
    typical = statistics.median(o.seconds for o in outcomes)
    print(
        f"\nkill: {len(outcomes)} requests, none failed; median {typical * 1000:.0f} ms, slowest "
        f"{slowest * 1000:.0f} ms; the replica left the pool {out_after:.2f} s after SIGKILL"
    )
