"""Values the chart's tests render it with: every optional part on, an open agent, the cluster's own account
(each a dotted key -> its JSON text, as `helm --set-json` takes it)."""

from __future__ import annotations

import json

DIGEST = "sha256:" + "0123456789abcdef" * 4
POD_MONITOR = {
    "podMonitor.enabled": "true",
    "podMonitor.additionalLabels": '{"release": "kube-prometheus-stack"}',
    "podMonitor.scrapeTimeout": '"10s"',
    "podMonitor.metricRelabelings": '[{"action": "labeldrop", "regex": "pod_ip"}]',
}
SERVICE_MONITOR = {
    "serviceMonitor.enabled": "true",
    "serviceMonitor.additionalLabels": '{"release": "kube-prometheus-stack"}',
    "serviceMonitor.tlsConfig": '{"ca": {"secret": {"name": "khan-tls", "key": "ca.crt"}}, "serverName": "khan"}',
}
# Every optional part on, as a user would set them, with the PodMonitor (EVERYTHING) or the ServiceMonitor
# (EVERYTHING_BY_SERVICE): the chart refuses both at once. The variants of tests/apiserver/test_helm_install.py too.
EVERYTHING_BUT_MONITORS = {
    "prometheusRule.enabled": "true",
    "prometheusRule.additionalLabels": '{"release": "kube-prometheus-stack"}',
    "dashboards.labels": '{"grafana_dashboard": "1", "team": "sre"}',
    "web.tls.mode": '"secret"',
    "web.tls.secretName": '"khan-tls"',
    "web.tls.serverConfig": '{"min_version": "TLS13"}',
    "image.repository": '"registry.example/khan"',
    "image.digest": f'"{DIGEST}"',
    "image.pullPolicy": '"Always"',
    "imagePullSecrets": '[{"name": "registry"}]',
    "agent": json.dumps(
        {
            "interval": 15,
            "maxSeries": 20000,
            "aggregate": "workload",
            "externalCidrs": "corp=10.0.0.0/8",
            "externalIps": "drop",
            "events": "on",
            "eventBuffer": 67108864,
            "idleAfter": 1200,
            "counterTtl": 600,
            "deletedPodGrace": 60,
            "watchTimeout": 240,
            "enableAccounting": True,
            "webMaxRequests": 20,
            "webMaxConnections": 128,
            "webHeaderTimeout": 2.5,
            "logLevel": "debug",
        }
    ),
    "extraArgs": '["--log-format=json"]',
    "extraEnv": '[{"name": "KHAN_LOG_LEVEL", "value": "debug"}]',
    "port": "9987",
    "tolerations": '[{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]',
    "nodeSelector": '{"kubernetes.io/os": "linux"}',
    "affinity": json.dumps(
        {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "khan", "operator": "NotIn", "values": ["off"]}]}
                    ]
                }
            }
        }
    ),
    "priorityClassName": '"system-cluster-critical"',
    "updateStrategy": '{"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}',
    "podAnnotations": '{"example.com/owner": "sre"}',
    "podLabels": '{"team": "sre"}',
    "serviceAccount.annotations": '{"example.com/owner": "sre"}',
    "rbac.metricsReaderSubjects": '[{"kind": "ServiceAccount", "name": "prometheus", "namespace": "observability"}]',
}
EVERYTHING = {**POD_MONITOR, **EVERYTHING_BUT_MONITORS}
EVERYTHING_BY_SERVICE = {**SERVICE_MONITOR, **EVERYTHING_BUT_MONITORS}
# Plain HTTP, no token asked: what a lab or a cluster behind its own proxy might run.
OPEN = {"web.auth": '"none"', "web.tls.mode": '"none"', "podMonitor.enabled": "true"}
# Objects of the cluster's own: an existing ServiceAccount, RBAC made elsewhere.
BYO = {"rbac.create": "false", "serviceAccount.create": "false", "serviceAccount.name": '"node-agents"'}
VARIANTS = {
    "default": {},
    "everything": EVERYTHING,
    "everything-by-service": EVERYTHING_BY_SERVICE,
    "open": OPEN,
    "existing-account": BYO,
    "existing-account-monitored": {**BYO, "podMonitor.enabled": "true"},
}
