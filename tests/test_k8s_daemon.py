"""The scheduler daemon as a Deployment and a Service, checked against the official client's models
and against the CronJobs whose pod it shares."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from etl.config import load_config
from etl.errors import ConfigError
from etl.ops.k8s import K8sOptions, cronjob_manifests, render_yaml, scheduled_names, secret_variables
from etl.ops.k8s_daemon import PORT, daemon_manifests
from test_k8s import OTHER_TABLES, PVC, SECRET_VALUES, TRIAL, WITH_SECRETS, check_pod, container_of, validated

#: a third local outbox, its activation's first destination: in its CronJob its volume is "outbox" too
DUTCH_ONLY = """
[destinations.actito_nl]
environment = "sandbox"
entity = "demo_nl"
technical_email = "data-team@example.com"
files = { type = "local", path = "var/outbox_nl" }

[activations.dutch_only]
sql = "sql/vip_customers.sql"
destination = "actito_nl"
identifier = "profileId"
params = { min_value = 500 }
schedule = { every = "6h" }
"""
OUTBOX = "/etc/audience-sync/var/outbox"
SHARED_LEDGER = '[settings]\nstate_url = "postgresql+psycopg://etl:${STATE_PASSWORD}@ledger.internal:5432/etl"\n'


def check_daemon(manifests: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Deployment and the Service, validated, with what makes them work together."""
    deployment, service = manifests
    validated(deployment, "V1Deployment")
    validated(service, "V1Service")
    assert (deployment["apiVersion"], deployment["kind"]) == ("apps/v1", "Deployment")
    assert (service["apiVersion"], service["kind"]) == ("v1", "Service")
    template = deployment["spec"]["template"]
    labels = template["metadata"]["labels"]
    check_pod(template["spec"], labels)
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert service["spec"]["selector"] == labels
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]
    assert template["spec"]["restartPolicy"] == "Always"  # the only one a Deployment accepts
    container = template["spec"]["containers"][0]
    assert container["ports"] == [{"name": "http", "containerPort": 9108, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60  # a busy minute is not a hang
    return deployment, service


def pod_of(deployment: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def test_the_shipped_configuration_is_a_deployment_sharing_the_cronjobs_pod(demo_project: Path) -> None:
    config = load_config(demo_project)
    deployment, service = check_daemon(daemon_manifests(config, TRIAL))
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two pods on one SQLite ledger
    pod = pod_of(deployment)
    (container,) = pod["containers"]
    assert container["command"] == ["audience-sync", "--log-format", "json", "--config",
                                    "/etc/audience-sync/schedules.toml", "schedule", "--listen", "0.0.0.0:9108"]
    assert pod["terminationGracePeriodSeconds"] >= config.settings.shutdown_grace_seconds + 10
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    cronjobs = cronjob_manifests(config, scheduled_names(config), TRIAL)
    for cronjob in cronjobs:  # the same pod, but for the command, the probes and the restart policy
        job_pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert pod["securityContext"] == job_pod["securityContext"]
        assert container["securityContext"] == container_of(cronjob)["securityContext"]
        assert container["resources"] == container_of(cronjob)["resources"]
        assert pod["automountServiceAccountToken"] is job_pod["automountServiceAccountToken"] is False
        assert {v["name"]: v for v in job_pod["volumes"]}["config"] in pod["volumes"]
    mounts = {(m["mountPath"], m.get("subPath")) for m in container["volumeMounts"]}
    assert mounts == {(m["mountPath"], m.get("subPath")) for c in cronjobs for m in container_of(c)["volumeMounts"]}
    cronjob_pods = [c["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"] for c in cronjobs]
    assert all(not service["spec"]["selector"].items() <= labels.items() for labels in cronjob_pods)


def test_directories_several_activations_write_to_are_mounted_once_each_under_its_own_volume(
        demo_project: Path) -> None:
    demo_project.write_text(demo_project.read_text() + DUTCH_ONLY)
    config = load_config(demo_project)
    (dutch,) = cronjob_manifests(config, ["dutch_only"], TRIAL)
    assert {m["mountPath"]: m["name"] for m in container_of(dutch)["volumeMounts"]}[OUTBOX + "_nl"] == "outbox"
    deployment, _ = check_daemon(daemon_manifests(config, TRIAL))
    volumes = [v["name"] for v in pod_of(deployment)["volumes"]]
    assert len(volumes) == len(set(volumes))
    mounts = {m["mountPath"]: m["name"] for m in pod_of(deployment)["containers"][0]["volumeMounts"]}
    assert {path: mounts[path] for path in (OUTBOX, OUTBOX + "_fr", OUTBOX + "_nl")} == {
        OUTBOX: "outbox", OUTBOX + "_fr": "outbox-2", OUTBOX + "_nl": "outbox-3"}


def test_every_variable_of_the_file_is_wired_and_no_value_is_written(project) -> None:
    config = load_config(project(OTHER_TABLES), environ={**SECRET_VALUES, "CRM_PASSWORD": "crm-pa55"})
    deployment, _ = check_daemon(daemon_manifests(config, K8sOptions(secret_name="etl-secrets", ephemeral_state=True)))
    env = pod_of(deployment)["containers"][0]["env"]
    assert env == [{"name": var, "valueFrom": {"secretKeyRef": {"name": "etl-secrets", "key": var}}}
                   for var in ("ACTITO_API_KEY", "CRM_PASSWORD", "DWH_PASSWORD")]
    for name in scheduled_names(config):  # a warehouse's and a destination's variables, at least
        assert set(secret_variables(config, name)) <= {e["name"] for e in env}
    text = render_yaml(daemon_manifests(config, K8sOptions(ephemeral_state=True)))
    assert not any(value in text for value in [*SECRET_VALUES.values(), "crm-pa55"])


def test_what_cronjobs_cannot_schedule_the_daemon_runs(project) -> None:
    toml = WITH_SECRETS.replace('every = "15m"', 'every = "45m", start_at = "2030-01-01T06:00:00"')
    config = load_config(project(toml), environ=SECRET_VALUES)
    with pytest.raises(ConfigError, match="a CronJob has no start time"):
        cronjob_manifests(config, scheduled_names(config), K8sOptions(ephemeral_state=True))
    check_daemon(daemon_manifests(config, K8sOptions(ephemeral_state=True)))


def test_the_grace_period_follows_the_shutdown_grace(project) -> None:
    config = load_config(project("[settings]\nshutdown_grace_seconds = 900\n" + WITH_SECRETS), environ=SECRET_VALUES)
    deployment, _ = check_daemon(daemon_manifests(config, K8sOptions(ephemeral_state=True)))
    assert pod_of(deployment)["terminationGracePeriodSeconds"] > 900


def test_more_replicas_need_a_shared_ledger(project, caplog: pytest.LogCaptureFixture) -> None:
    file_ledger = load_config(project(WITH_SECRETS), environ=SECRET_VALUES)
    with pytest.raises(ConfigError, match=r"--replicas: 2 replicas need one shared ledger.*settings.state_url"):
        daemon_manifests(file_ledger, PVC, replicas=2)
    with pytest.raises(ConfigError, match="--replicas: 1 or more"):
        daemon_manifests(file_ledger, PVC, replicas=0)
    shared = load_config(project(SHARED_LEDGER + WITH_SECRETS), environ={**SECRET_VALUES, "STATE_PASSWORD": "pw"})
    with caplog.at_level(logging.WARNING, logger="audience_sync.k8s"):
        deployment, _ = check_daemon(daemon_manifests(shared, PVC, replicas=2))
    assert "must be ReadWriteMany" in caplog.text
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"  # the slot claims keep two pods apart
    assert "STATE_PASSWORD" in [e["name"] for e in pod_of(deployment)["containers"][0]["env"]]


def test_what_would_vanish_with_the_pod_is_said_once(demo_project: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        daemon_manifests(load_config(demo_project), K8sOptions())
    said = caught.value.message()
    assert said.count("the state directory would be an emptyDir") == 1 and "--state-claim NAME" in said
    assert "[activations.vip_members]" in said and "members who leave would never be removed" in said
    assert "[activations.newsletter_engaged]: its destination is a local directory" in said


def test_a_configuration_without_an_enabled_schedule_is_refused(project) -> None:
    config = load_config(project(WITH_SECRETS.replace("schedule = {", "enabled = false\nschedule = {")),
                         environ=SECRET_VALUES)
    with pytest.raises(ConfigError, match="no enabled activation has a schedule"):
        daemon_manifests(config, K8sOptions(ephemeral_state=True))


# --------------------------------------------------------------------------- through the CLI


def audience_sync(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "etl", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=120, cwd=config.parent)


def test_the_command_writes_the_configmap_the_deployment_and_the_service(demo_project: Path) -> None:
    done = audience_sync(demo_project, "k8s", "--daemon", "--state-claim", "audience-sync-state",
                         "--ephemeral-state", "--with-config", "--namespace", "marketing")
    assert done.returncode == 0, done.stderr
    configmap, *daemon = yaml.safe_load_all(done.stdout)
    validated(configmap, "V1ConfigMap")
    deployment, service = check_daemon(daemon)
    assert {m["metadata"]["namespace"] for m in (configmap, deployment, service)} == {"marketing"}
    assert pod_of(deployment)["volumes"][0]["configMap"]["name"] == configmap["metadata"]["name"]


def test_the_command_refuses_replicas_on_a_file_ledger_and_misplaced_options(demo_project: Path,
                                                                             cli: Callable[..., Any]) -> None:
    done = audience_sync(demo_project, "k8s", "--daemon", "--replicas", "2", "--state-claim", "s",
                         "--ephemeral-state")
    assert done.returncode == 2 and done.stdout == ""
    assert "2 replicas need one shared ledger" in done.stderr and "settings.state_url" in done.stderr
    named = cli(demo_project, "k8s", "--daemon", "vip_customers")
    assert named.code == 2 and "name none" in named.said
    cronjobs = cli(demo_project, "k8s", "--all", "--replicas", "2")
    assert cronjobs.code == 2 and "--replicas is for the daemon" in cronjobs.said
