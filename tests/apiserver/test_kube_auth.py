"""--auth kubernetes on a real kube-apiserver with RBAC on, with deploy/'s roles and bindings: a token of a
service account bound to khan-metrics-reader reads /metrics and nothing else, any other token is refused (403),
a missing or unknown token is 401, the probes' endpoints stay open, and an API server that cannot answer means
503, never access. The agent reads a file inventory and still uses its kubeconfig for the reviews, over TLS with
a certificate made at start, as in deploy/."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from khan.conntrack.namespace import entered
from khan.demo.namespaces import private_prefix
from tests.support.auth_flood import flooding, scrape_and_probe
from tests.support.kube_cluster import DEPLOY, KHAN_USER, Cluster, running_cluster, stop_process
from tests.support.protected_agent import Agent, private_netns, running_agent

PROMETHEUS_USER = "system:serviceaccount:monitoring:prometheus-k8s"  # in the example binding
SCRAPER_USER = "system:serviceaccount:khan:khan-scraper"  # the PodMonitor's identity
NOBODY = "system:serviceaccount:khan:nobody"
OPERATOR = DEPLOY.parent / "prometheus-operator"
RBAC = [
    DEPLOY / f"{name}.yaml"
    for name in (
        "namespace",
        "serviceaccount",
        "clusterrole",
        "clusterrolebinding",
        "metrics-reader-clusterrole",
        "metrics-reader-clusterrolebinding",
    )
] + [OPERATOR / "scraper-serviceaccount.yaml", OPERATOR / "scraper-clusterrolebinding.yaml"]


PROMETHEUS_PORT = 9090


class World(NamedTuple):
    cluster: Cluster
    agent: Agent
    netns: str
    workdir: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("kubeauth")
    with (
        private_netns(private_prefix("khanauth") + "-ns", address="10.250.0.1") as netns,
        running_cluster(netns, "10.250.0.1", users=(KHAN_USER, PROMETHEUS_USER, SCRAPER_USER, NOBODY)) as cluster,
    ):
        cluster.ensure_namespace("monitoring")
        cluster.apply_files(RBAC)
        kubeconfig = cluster.kubeconfig(KHAN_USER, workdir / "kubeconfig")
        extra = ["--auth", "kubernetes", "--tls-self-signed", "--kubeconfig", str(kubeconfig)]
        with running_agent(netns, workdir, extra) as agent:
            agent.wait_ready()
            yield World(cluster, agent, netns, workdir)


def bearer(cluster: Cluster, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {cluster.tokens[user]}"}


@pytest.mark.parametrize("user", [PROMETHEUS_USER, SCRAPER_USER])
def test_a_bound_service_account_reads_metrics(world: World, user: str) -> None:
    status, _, body = world.agent.request("/metrics", headers=bearer(world.cluster, user))
    assert status == 200
    assert b"khan_polls_total" in body


@pytest.mark.parametrize("path", ["/flows", "/transactions", "/"])
def test_the_metrics_role_grants_only_metrics(world: World, path: str) -> None:
    assert world.agent.status(path, headers=bearer(world.cluster, PROMETHEUS_USER)) == 403


@pytest.mark.parametrize("user", [NOBODY, KHAN_USER])
def test_a_valid_token_without_the_role_is_forbidden(world: World, user: str) -> None:
    status, headers, body = world.agent.request("/metrics", headers=bearer(world.cluster, user))
    assert (status, body) == (403, b"forbidden\n")
    assert "www-authenticate" not in headers


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Bearer "}, {"Authorization": "Basic eDp5"}],
    ids=["none", "garbage", "empty", "basic"],
)
def test_no_or_an_unknown_token_is_unauthorized(world: World, headers: dict[str, str]) -> None:
    status, answer_headers, _ = world.agent.request("/metrics", headers=headers)
    assert status == 401
    assert answer_headers["www-authenticate"] == ['Bearer realm="khan"']


def test_the_probes_need_no_token_and_reveal_nothing(world: World) -> None:
    assert world.agent.request("/healthz")[::2] == (200, b"ok\n")
    assert world.agent.request("/readyz")[::2] == (200, b"ready\n")


def test_an_api_server_that_cannot_answer_is_503_never_access(world: World) -> None:
    cluster, agent, _, _ = world
    assert agent.status("/metrics", headers=bearer(cluster, SCRAPER_USER)) == 200
    cluster.pause_apiserver()
    try:
        started = time.monotonic()
        # Never asked before, so not cached: the review times out.
        status, _, body = agent.request("/metrics", headers={"Authorization": "Bearer never-seen"}, timeout=20)
        waited = time.monotonic() - started
        assert (status, body) == (503, b"cannot check credentials now\n")
        assert waited < 10
        # A scraper allowed a moment ago is still allowed from the cache; an outage is not remembered.
        assert agent.status("/metrics", headers=bearer(cluster, SCRAPER_USER)) == 200
    finally:
        cluster.resume_apiserver()
    deadline = time.monotonic() + 15
    while agent.status("/metrics", headers={"Authorization": "Bearer never-seen"}) != 401:
        assert time.monotonic() < deadline, "the API server's answer is not used again after the outage"
        time.sleep(0.2)
    failures = [line for line in agent.log() if line["event"] == "auth_review_failed"]
    assert len(failures) == 1  # one warning, rate-limited


def test_prometheus_scrapes_over_https_with_a_bound_token_only(world: World) -> None:
    """A real Prometheus, configured as deploy/README.md tells plain Prometheus (HTTPS without verification, a
    token file): the bound scraper's job is up, the unbound one's is down with a 403."""
    cluster, _, netns, workdir = world
    jobs = []
    for job, user in (("scraper", SCRAPER_USER), ("nobody", NOBODY)):
        token = workdir / f"{job}.token"
        token.write_text(cluster.tokens[user])
        jobs.append(
            {
                "job_name": job,
                "scheme": "https",
                "tls_config": {"insecure_skip_verify": True},
                "authorization": {"credentials_file": str(token)},
                "static_configs": [{"targets": ["127.0.0.1:9986"]}],
            }
        )
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": jobs}))
    argv = ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}"]
    argv += [f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"]
    with (workdir / "prometheus.log").open("wb") as log:
        prometheus = subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while (health := scrape_health(netns)) != {"scraper": ("up", ""), "nobody": ("down", "403")}:
            assert time.monotonic() < deadline, health
            time.sleep(0.5)
    finally:
        stop_process(prometheus)


def scrape_health(netns: str) -> dict[str, tuple[str, str]]:
    """Each job's target health and the status code in its last error, if any."""
    try:
        with (
            entered(netns),
            urllib.request.urlopen(f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/targets", timeout=5) as got,
        ):
            targets = json.loads(got.read())["data"]["activeTargets"]
    except OSError:
        return {}
    found = {}
    for target in targets:
        error = target.get("lastError", "")
        code = "403" if "403" in error else ("" if not error else "other")
        found[target["labels"]["job"]] = (target["health"], code)
    return found


def fresh_scraper_token(cluster: Cluster) -> dict[str, str]:
    """A new token of the bound scraper account (TokenRequest): never reviewed, so no earlier test cached it."""
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}
    answer = cluster.request("POST", "/api/v1/namespaces/khan/serviceaccounts/khan-scraper/token", body)
    return {"Authorization": f"Bearer {answer['status']['token']}"}


def token_reviews(cluster: Cluster) -> float:
    """TokenReviews the API server has answered, from its own metrics."""
    lines = str(cluster.request("GET", "/metrics")).splitlines()
    counted = [line for line in lines if line.startswith("apiserver_request_total{") and "tokenreviews" in line]
    return sum(float(line.rsplit(" ", 1)[1]) for line in counted)


def test_a_flood_of_junk_tokens_does_not_starve_a_known_scraper(world: World) -> None:
    """60 clients with junk bearer tokens. With the API server up, each junk token is reviewed once and then
    refused from the cache for 10 s. With the API server hung, every request carrying a new junk token would
    wait 5 s for a review: 8 wait, the rest are refused at once (503), outside the cap on scrapes in flight. The
    scraper whose token is cached gets every scrape either way, and the probes stay fast. (Before, against a slow
    API server, the waiting reviews held every one of the 40 slots and the scrapes got 503.)"""
    cluster, agent, _, _ = world
    good = fresh_scraper_token(cluster)
    assert agent.status("/metrics", headers=good) == 200  # now cached for 60 s: this test takes about 20
    before = token_reviews(cluster)
    with flooding(agent, lambda client, _: {"Authorization": f"Bearer junk-{client}"}) as flood:
        scrapes = scrape_and_probe(agent, good)
    reviews = token_reviews(cluster) - before
    print(
        f"junk-token flood, API up: {dict(flood.answers)}, {reviews:.0f} TokenReviews; scraper "
        f"{scrapes.statuses.count(200)}/{len(scrapes.statuses)} got 200, slowest /healthz {scrapes.slowest_probe:.3f} s"
    )
    assert scrapes.statuses == [200] * len(scrapes.statuses)
    assert scrapes.slowest_probe < 1.0
    # 0: a flood client's TLS handshake cut at its 2 s deadline while 60 clients saturate both cores; hostile
    # clients may lose connections, the scraper above may not.
    assert set(flood.answers) <= {0, 401, 503}
    assert flood.answers[401] > 10 * flood.answers[0]
    # Each junk token is reviewed once per 10 s that its refusal is remembered (the flood lasts about that long,
    # so some twice): a few dozen reviews for thousands of requests, never one per request.
    assert reviews <= 2 * 60 + 5
    assert reviews * 20 < sum(flood.answers.values())
    cluster.pause_apiserver()
    try:
        with flooding(agent, lambda client, sent: {"Authorization": f"Bearer junk-{client}-{sent}"}) as flood:
            scrapes = scrape_and_probe(agent, good)
    finally:
        cluster.resume_apiserver()
    print(
        f"junk-token flood, API hung: {dict(flood.answers)}; scraper {scrapes.statuses.count(200)}/"
        f"{len(scrapes.statuses)} got 200, slowest /healthz {scrapes.slowest_probe:.3f} s"
    )
    assert scrapes.statuses == [200] * len(scrapes.statuses)
    assert scrapes.slowest_probe < 1.0
    assert set(flood.answers) <= {0, 503}  # nothing let through, nothing queued for long (0: as above)
    assert flood.answers[503] > 10 * flood.answers[0]
    assert flood.busy_headers["retry-after"] == ["1"]
    assert agent.process.poll() is None
