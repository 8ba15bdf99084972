"""The scheduler daemon (``audience-sync schedule``) as a Kubernetes Deployment and its Service.

The alternative to one CronJob per activation: one long-running pod honours what CronJobs cannot
(``start_at``, ``run_on_create``, ``after`` across a slot) and serves ``/metrics`` and a status page.
Its pod comes from the CronJobs' builder (etl.ops.k8s.pod_template), so both wear the same security
context, mounts and Secret wiring. Problems are all reported in one ConfigError, as for the CronJobs.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from etl.config import Config
from etl.errors import ConfigError
from etl.ops.k8s import (
    LASTING_STATE,
    K8sOptions,
    configmap_manifest,
    ephemeral_problems,
    every_variable,
    files_and_problems,
    object_metadata,
    pod_template,
)

log = logging.getLogger("audience_sync.k8s")

#: the port of ``schedule --listen``: /healthz, /readyz, /metrics and the status page
PORT = 9108
NAME = "audience-sync"
LABELS = {"app.kubernetes.io/name": "audience-sync", "app.kubernetes.io/component": "scheduler"}
#: liveness is only checked once /healthz has answered: a slow start (a slow ledger) is not a hang
STARTUP_PROBE = {"periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 60}
#: a restart interrupts the runs in progress, so a hung loop is only assumed after 3 minutes of silence
LIVENESS_PROBE = {"periodSeconds": 60, "timeoutSeconds": 10, "failureThreshold": 3}
#: readiness only takes the pod out of the Service (scraping), so it reacts within 30 s
READINESS_PROBE = {"periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3}


def daemon_names(config: Config) -> list[str]:
    """The activations the daemon runs: every enabled one with a schedule (a disabled one is skipped)."""
    return [name for name, activation in config.activations.items()
            if activation.schedule is not None and activation.enabled]


def daemon_manifests(config: Config, options: K8sOptions, replicas: int = 1) -> list[dict[str, Any]]:
    """The Deployment and its Service; ConfigError lists every problem, as cronjob_manifests does."""
    files, problems = files_and_problems(config, options)
    names = daemon_names(config)
    if not names:
        problems.append(("[activations]", "no enabled activation has a schedule: the daemon would run nothing"))
    if options.state_volume_claim is None and not options.ephemeral_state:
        problems.append(("k8s --daemon", "the state directory would be an emptyDir, lost whenever the pod is "
                                         "replaced (the ledger, the snapshots, the shrink guard's memory): give "
                                         "--state-claim NAME, or --ephemeral-state to accept it"))
    for name in names:
        where = f"[activations.{name}]"
        if config.activations[name].needs_lasting_state and options.state_volume_claim is None:
            problems.append((where, LASTING_STATE))
        problems += ephemeral_problems(config, name, where, options, state=False)
    problems += _replica_problems(config, replicas)
    if problems:
        raise ConfigError(problems, source=config.source)
    if replicas > 1 and options.state_volume_claim is not None:
        log.warning("%d replicas mount the claim %s: it must be ReadWriteMany (a ReadWriteOnce claim keeps the "
                    "pods of other nodes in ContainerCreating)", replicas, options.state_volume_claim)
    arguments = ["schedule", "--listen", f"0.0.0.0:{PORT}"]
    template = pod_template(config, names, LABELS, arguments, every_variable(config), files, options,
                            restart_policy="Always")
    _serve(template["spec"]["containers"][0])
    # subPath mounts never see a ConfigMap change: a new checksum rolls the pod, which then reads it
    if checksum := _checksum(config, options):
        template["metadata"]["annotations"] = checksum
    return [_deployment(config, template, options, replicas), _service(options)]


def _replica_problems(config: Config, replicas: int) -> list[tuple[str, str]]:
    """Replicas share the work through the ledger's leases and slot claims, so they must share one ledger."""
    if replicas < 1:
        return [("--replicas", "1 or more")]
    if replicas > 1 and config.settings.state_url is None:
        return [("--replicas", f"{replicas} replicas need one shared ledger, or each would run every slot: set "
                               "settings.state_url (PostgreSQL). The SQLite ledger in state_dir cannot be shared: "
                               "an emptyDir is each pod's own, and SQLite's locking is not reliable on a "
                               "ReadWriteMany network volume. Or run 1 replica")]
    return []


def _serve(container: dict[str, Any]) -> None:
    """The port and the probes of ``schedule --listen``, whose contract says what each path answers."""
    container["ports"] = [{"name": "http", "containerPort": PORT, "protocol": "TCP"}]
    container["startupProbe"] = {"httpGet": {"path": "/healthz", "port": "http"}, **STARTUP_PROBE}
    container["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": "http"}, **LIVENESS_PROBE}
    container["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": "http"}, **READINESS_PROBE}


def _checksum(config: Config, options: K8sOptions) -> dict[str, str]:
    try:
        data = configmap_manifest(config, options)["data"]
    except ConfigError:  # too large for a ConfigMap: the files reach the pod some other way, unseen here
        return {}
    digest = hashlib.sha256("\0".join(f"{key}\0{data[key]}" for key in sorted(data)).encode()).hexdigest()
    return {"audience-sync/config-sha256": digest}


def _deployment(config: Config, template: dict[str, Any], options: K8sOptions, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_metadata(NAME, options, LABELS),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(LABELS)},
            # a file ledger must never be opened by an old and a new pod at once (nor a ReadWriteOnce claim
            # be wanted on two nodes); a shared ledger lets the new pod start first
            "strategy": {"type": "Recreate"} if config.settings.state_url is None else {
                "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": template,
        },
    }


def _service(options: K8sOptions) -> dict[str, Any]:
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(PORT), "prometheus.io/path": "/metrics"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(NAME, options, LABELS, annotations),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(LABELS),
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
