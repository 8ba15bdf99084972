"""Kubernetes CronJobs: every manifest is checked against the official client's object models."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient

from etl import cli
from etl.config import load_config
from etl.errors import ConfigError
from etl.ops.k8s import (
    CONFIG_KEY,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_LOCKED,
    K8sOptions,
    configmap_manifest,
    cronjob_manifests,
    cronjob_name,
    every_as_cron,
    render_yaml,
    scheduled_names,
    secret_variables,
)

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PVC = K8sOptions(state_volume_claim="audience-sync-state")
#: the shipped configuration's outbox is a local directory: accepted in these tests as a trial would
TRIAL = K8sOptions(state_volume_claim="audience-sync-state", ephemeral_state=True)

SECRET_VALUES = {"ACTITO_API_KEY": "act-k3y-0f-the-licence", "DWH_PASSWORD": "dwh-pa55-w0rd"}
WITH_SECRETS = """
    [warehouses.dwh]
    url = "postgresql+psycopg://etl:${DWH_PASSWORD}@dwh.internal:5432/analytics"

    [destinations.actito]
    environment = "ENV-0"
    entity = "acme"
    api_key = "${ACTITO_API_KEY}"

    [activations."Qualifio_Profiles.v2"]
    kind = "profiles"
    sql = "sql/qualifio_profiles.sql"
    destination = "actito"
    table = "customers"
    preset = "qualifio"
    schedule = { cron = "0 5 * * 1-5", timezone = "America/New_York" }

    [activations.every_quarter_hour]
    kind = "interactions"
    sql = "sql/qualifio_participations.sql"
    destination = "actito"
    table = "participations"
    params = { since_days = 90 }
    schedule = { every = "15m" }
"""


# --------------------------------------------------------------------------- the validator


def validated(manifest: dict[str, Any], kind: str) -> Any:
    """The manifest as the official client's model; fails on a missing required field, a wrong type
    or a key the model does not have (the model, serialized back, must equal the input)."""
    api = ApiClient()
    text = json.dumps(manifest)
    deserialize: Any = api.deserialize
    if "response_text" in inspect.signature(deserialize).parameters:  # recent clients (pydantic models) take text
        model = deserialize(text, kind, None)
    else:  # older clients read a response object's .data
        model = deserialize(SimpleNamespace(data=text), kind)
    assert api.sanitize_for_serialization(model) == manifest, "a key the Kubernetes model does not know was dropped"
    return model


def check_cronjob(manifest: dict[str, Any]) -> None:
    validated(manifest, "V1CronJob")
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "CronJob"
    name = manifest["metadata"]["name"]
    assert len(name) <= 52 and DNS_SUBDOMAIN.match(name), name
    spec = manifest["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert isinstance(spec["startingDeadlineSeconds"], int) and spec["startingDeadlineSeconds"] >= 10
    assert spec["timeZone"] and spec["schedule"]
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert isinstance(job["backoffLimit"], int)
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # required by podFailurePolicy
    for rule in job["podFailurePolicy"]["rules"]:  # enums the client models do not check
        assert rule["action"] in ("FailJob", "FailIndex", "Ignore", "Count")
        assert ("onExitCodes" in rule) != ("onPodConditions" in rule)
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["operator"] in ("In", "NotIn") and 0 not in rule["onExitCodes"]["values"]
    check_pod(pod, manifest["metadata"]["labels"])


def check_pod(pod: dict[str, Any], labels: dict[str, str]) -> None:
    """What the client models do not check of a pod: names, mounts, and that it runs as no one special."""
    (container,) = pod["containers"]
    assert DNS_LABEL.match(container["name"])
    volumes = {v["name"] for v in pod["volumes"]}
    assert all(DNS_LABEL.match(v) for v in volumes)
    assert {m["name"] for m in container["volumeMounts"]} == volumes
    paths = [m["mountPath"] for m in container["volumeMounts"]]
    assert len(paths) == len(set(paths)) and all(p.startswith("/") and ".." not in p for p in paths)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    for key, value in labels.items():
        assert len(value) <= 63 and re.match(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$", value), (key, value)


def rule_for(manifest: dict[str, Any], code: int) -> str:
    rules = manifest["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    return next(r["action"] for r in rules if code in r.get("onExitCodes", {}).get("values", []))


def container_of(manifest: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    return container


def volume(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    volumes = manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
    found: dict[str, Any] = next(v for v in volumes if v["name"] == name)
    return found


def test_the_validator_refuses_unknown_keys_and_missing_required_fields(demo_project: Path) -> None:
    config = load_config(demo_project)
    (manifest,) = cronjob_manifests(config, ["newsletter_engaged"], K8sOptions(ephemeral_state=True))
    validated(manifest, "V1CronJob")
    typo = json.loads(json.dumps(manifest))
    typo["spec"]["concurencyPolicy"] = typo["spec"].pop("concurrencyPolicy")
    with pytest.raises(AssertionError, match="dropped"):
        validated(typo, "V1CronJob")
    nameless = json.loads(json.dumps(manifest))
    del container_of(nameless)["name"]
    with pytest.raises(Exception):  # pydantic ValidationError, or ValueError from older clients
        validated(nameless, "V1CronJob")
    unscheduled = json.loads(json.dumps(manifest))
    del unscheduled["spec"]["schedule"]
    with pytest.raises(Exception):
        validated(unscheduled, "V1CronJob")
    wrong_type = json.loads(json.dumps(manifest))
    wrong_type["spec"]["startingDeadlineSeconds"] = "600"
    with pytest.raises(Exception):
        validated(wrong_type, "V1CronJob")


# --------------------------------------------------------------------------- the shipped configuration


def test_every_scheduled_activation_of_the_shipped_configuration_is_a_valid_cronjob(demo_project: Path) -> None:
    config = load_config(demo_project)
    manifests = cronjob_manifests(config, scheduled_names(config), TRIAL)
    assert [m["metadata"]["annotations"]["audience-sync/activation"] for m in manifests] == list(config.activations)
    for manifest in manifests:
        check_cronjob(manifest)
        assert manifest["spec"]["timeZone"] == "Europe/Brussels"
        assert manifest["spec"]["startingDeadlineSeconds"] == 600
        assert rule_for(manifest, EXIT_CONFIG) == "FailJob"
        assert rule_for(manifest, EXIT_LOCKED) == "Ignore"
        assert rule_for(manifest, EXIT_FAILED) == "Count"
        container = container_of(manifest)
        name = manifest["metadata"]["annotations"]["audience-sync/activation"]
        assert container["command"] == ["audience-sync", "--log-format", "json", "--config",
                                        "/etc/audience-sync/schedules.toml", "run", name]
        assert "env" not in container  # the demo references no variable
        assert volume(manifest, "state") == {"name": "state",
                                             "persistentVolumeClaim": {"claimName": "audience-sync-state"}}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/etc/audience-sync/var/state"]["name"] == "state"
        assert mounts["/etc/audience-sync/sql/vip_customers.sql"] == {
            "name": "config", "mountPath": "/etc/audience-sync/sql/vip_customers.sql",
            "subPath": "vip_customers.sql", "readOnly": True}
        assert mounts["/etc/audience-sync/var/demo"]["name"] == "demo-warehouse"  # built on first use
        assert mounts["/etc/audience-sync/sql/vip_scored.py"]["subPath"] == "vip_scored.py"  # validate reads it
    by_name = {m["metadata"]["name"]: m["spec"]["schedule"] for m in manifests}
    assert by_name == {
        "newsletter-engaged": "30 6 * * *",
        "vip-customers": "0 */6 * * *",
        "lapsed-buyers": "0 7 * * 1",
        "vip-scored": "0 */6 * * *",
        "vip-everywhere": "0 */6 * * *",
        "qualifio-profiles": "0 * * * *",
        "qualifio-participations": "0 * * * *",
        "didomi-consents": "*/15 * * * *",
        "vip-members": "0 */6 * * *",
        "openfield-profiles": "0 * * * *",
    }


def test_the_yaml_is_every_manifest_as_documents(demo_project: Path) -> None:
    config = load_config(demo_project)
    manifests = cronjob_manifests(config, scheduled_names(config), TRIAL)
    text = render_yaml(manifests)
    assert text.startswith("---\n") and text.count("\n---\n") == len(manifests) - 1
    assert list(yaml.safe_load_all(text)) == manifests
    assert "&id" not in text and "*id" not in text  # no anchors: readable, and diffs stay local
    assert render_yaml([]) == ""


def test_a_metrics_textfile_gets_a_writable_directory(project) -> None:
    config = load_config(project(WITH_SECRETS + '\n[metrics]\ntextfile = "metrics/audience_sync.prom"\n'),
                         environ=SECRET_VALUES)
    (manifest,) = cronjob_manifests(config, ["every_quarter_hour"], K8sOptions(ephemeral_state=True))
    check_cronjob(manifest)
    mounts = {m["mountPath"]: m["name"] for m in container_of(manifest)["volumeMounts"]}
    assert mounts["/etc/audience-sync/metrics"] == "metrics"
    assert volume(manifest, "metrics") == {"name": "metrics", "emptyDir": {}}
    assert container_of(manifest)["workingDir"] == "/etc/audience-sync"


def test_without_a_claim_the_state_dir_is_an_empty_dir(demo_project: Path) -> None:
    config = load_config(demo_project)
    (manifest,) = cronjob_manifests(config, ["vip_customers"], K8sOptions(ephemeral_state=True))
    check_cronjob(manifest)
    assert volume(manifest, "state") == {"name": "state", "emptyDir": {}}


def test_a_membership_audience_needs_a_persistent_state_volume(demo_project: Path) -> None:
    config = load_config(demo_project)
    with pytest.raises(ConfigError, match=r"\[activations.vip_members\].*members who leave would never be removed"):
        cronjob_manifests(config, ["vip_members"], K8sOptions(ephemeral_state=True))
    (manifest,) = cronjob_manifests(config, ["vip_members"], PVC)
    check_cronjob(manifest)


def test_the_configmap_holds_the_file_and_every_sql_file_the_cronjobs_mount(demo_project: Path) -> None:
    config = load_config(demo_project)
    configmap = configmap_manifest(config, K8sOptions(namespace="marketing"))
    validated(configmap, "V1ConfigMap")
    assert configmap["metadata"]["name"] == "audience-sync-config"
    assert configmap["metadata"]["namespace"] == "marketing"
    assert configmap["data"][CONFIG_KEY] == demo_project.read_text(encoding="utf-8")
    assert configmap["data"]["vip_customers.sql"] == (demo_project.parent / "sql/vip_customers.sql").read_text()
    assert configmap["data"]["vip_scored.py"] == (demo_project.parent / "sql/vip_scored.py").read_text()
    for manifest in cronjob_manifests(config, scheduled_names(config), TRIAL):
        keys = [item["key"] for item in volume(manifest, "config")["configMap"]["items"]]
        assert set(keys) == set(configmap["data"])


def test_a_disabled_activation_is_a_suspended_cronjob(project) -> None:
    config = load_config(project(WITH_SECRETS.replace('preset = "qualifio"', 'preset = "qualifio"\nenabled = false')),
                         environ=SECRET_VALUES)
    manifests = {m["metadata"]["name"]: m for m in cronjob_manifests(config, scheduled_names(config), K8sOptions(ephemeral_state=True))}
    assert manifests["qualifio-profiles-v2"]["spec"]["suspend"] is True
    assert manifests["every-quarter-hour"]["spec"]["suspend"] is False


# --------------------------------------------------------------------------- secrets


def test_secrets_are_environment_variables_from_the_secret_and_never_values(project) -> None:
    config = load_config(project(WITH_SECRETS), environ=SECRET_VALUES)
    options = K8sOptions(image="registry.example.com/audience-sync:1.4.0", namespace="marketing",
                         secret_name="audience-sync-secrets", cpu_limit="1", ephemeral_state=True)
    manifests = cronjob_manifests(config, scheduled_names(config), options)
    for manifest in manifests:
        check_cronjob(manifest)
        container = container_of(manifest)
        assert container["env"] == [
            {"name": var, "valueFrom": {"secretKeyRef": {"name": "audience-sync-secrets", "key": var}}}
            for var in ("ACTITO_API_KEY", "DWH_PASSWORD")
        ]
        assert container["image"] == "registry.example.com/audience-sync:1.4.0"
        assert container["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"},
                                          "limits": {"memory": "512Mi", "cpu": "1"}}
        assert manifest["metadata"]["namespace"] == "marketing"
    text = render_yaml([*manifests, configmap_manifest(config, options)])
    for value in SECRET_VALUES.values():
        assert value not in text
    assert "${DWH_PASSWORD}" in text  # the ConfigMap holds the file as written
    profiles, quarter = manifests
    assert profiles["metadata"]["name"] == "qualifio-profiles-v2"
    assert profiles["spec"]["timeZone"] == "America/New_York"
    assert profiles["spec"]["schedule"] == "0 5 * * 1-5"
    assert quarter["spec"]["timeZone"] == "UTC"
    assert quarter["spec"]["schedule"] == "*/15 * * * *"
    assert quarter["metadata"]["annotations"]["audience-sync/every"] == "15m"


OTHER_TABLES = WITH_SECRETS + """
    [warehouses.crm]
    url = "mysql+pymysql://crm:${CRM_PASSWORD}@crm.internal/crm"

    [activations.crm_contacts]
    kind = "profiles"
    sql = "sql/qualifio_profiles.sql"
    warehouse = "crm"
    destination = "actito"
    table = "customers"
"""


def test_an_activation_gets_only_the_variables_of_its_own_tables(project) -> None:
    config = load_config(project(OTHER_TABLES), environ={**SECRET_VALUES, "CRM_PASSWORD": "crm-pa55"})
    assert secret_variables(config, "every_quarter_hour") == ["ACTITO_API_KEY", "DWH_PASSWORD"]
    assert secret_variables(config, "crm_contacts") == ["ACTITO_API_KEY", "CRM_PASSWORD"]


def test_variables_the_pod_would_miss_are_refused_unless_all_secrets(project) -> None:
    config = load_config(project(OTHER_TABLES), environ={**SECRET_VALUES, "CRM_PASSWORD": "crm-pa55"})
    with pytest.raises(ConfigError) as caught:
        cronjob_manifests(config, ["every_quarter_hour"], K8sOptions(ephemeral_state=True))
    assert "[activations.every_quarter_hour]" in caught.value.message()
    assert "CRM_PASSWORD ([warehouses.crm])" in caught.value.message()
    (manifest,) = cronjob_manifests(config, ["every_quarter_hour"], K8sOptions(all_secrets=True, ephemeral_state=True))
    check_cronjob(manifest)
    assert [e["name"] for e in container_of(manifest)["env"]] == ["ACTITO_API_KEY", "CRM_PASSWORD", "DWH_PASSWORD"]
    assert "crm-pa55" not in render_yaml([manifest])


# --------------------------------------------------------------------------- names and schedules


@pytest.mark.parametrize(("activation", "expected"), [
    ("newsletter_engaged", "newsletter-engaged"),
    ("Qualifio_Profiles.v2", "qualifio-profiles-v2"),
    ("VIP-2024", "vip-2024"),
    ("weekly_", "weekly"),
])
def test_cronjob_names_are_dns_1123(activation: str, expected: str) -> None:
    assert cronjob_name(activation) == expected


def test_long_names_are_cut_to_52_characters_and_stay_distinct() -> None:
    first, second = "a" * 60 + "_first", "a" * 60 + "_second"
    names = {cronjob_name(first), cronjob_name(second)}
    assert len(names) == 2
    for name in names:
        assert len(name) <= 52 and DNS_SUBDOMAIN.match(name)


def test_two_activations_with_the_same_kubernetes_name_are_refused(project) -> None:
    toml = WITH_SECRETS + """
        [activations.every-quarter-hour]
        kind = "interactions"
        sql = "sql/qualifio_participations.sql"
        destination = "actito"
        table = "participations"
        params = { since_days = 90 }
        schedule = { every = "15m" }
    """
    config = load_config(project(toml), environ=SECRET_VALUES)
    with pytest.raises(ConfigError, match=r"\[activations.every-quarter-hour\].*'every-quarter-hour'"):
        cronjob_manifests(config, scheduled_names(config), K8sOptions(ephemeral_state=True))


@pytest.mark.parametrize(("every", "cron"), [
    ("1m", "* * * * *"), ("15m", "*/15 * * * *"), ("30m", "*/30 * * * *"), ("120s", "*/2 * * * *"),
    ("60m", "0 * * * *"), ("1h", "0 * * * *"), ("6h", "0 */6 * * *"), ("12h", "0 */12 * * *"),
    ("24h", "0 0 * * *"), ("1d", "0 0 * * *"),
    ("90s", None), ("45m", None), ("7m", None), ("90m", None), ("5h", None), ("36h", None), ("2d", None),
])
def test_intervals_become_cron_expressions_when_they_divide_an_hour_or_a_day(every: str, cron: str | None) -> None:
    assert every_as_cron(every) == cron


def test_an_interval_no_cron_expression_repeats_is_refused_with_the_activation_named(project) -> None:
    config = load_config(project(WITH_SECRETS.replace('every = "15m"', 'every = "45m"')), environ=SECRET_VALUES)
    with pytest.raises(ConfigError) as caught:
        cronjob_manifests(config, scheduled_names(config), K8sOptions(ephemeral_state=True))
    message = caught.value.message()
    assert "[activations.every_quarter_hour] schedule.every: every = '45m' cannot be a Kubernetes schedule" in message
    assert "Qualifio_Profiles" not in message  # the other activation is fine
    assert caught.value.exit_code == cli.EXIT_CONFIG


def test_a_cron_expression_kubernetes_cannot_read_is_refused(project) -> None:
    config = load_config(project(WITH_SECRETS.replace('"0 5 * * 1-5"', '"0 5 last * *"')), environ=SECRET_VALUES)
    refusal = r"\[activations.Qualifio_Profiles.v2\] schedule.cron: '0 5 last \* \*' uses last"
    with pytest.raises(ConfigError, match=refusal):
        cronjob_manifests(config, scheduled_names(config), K8sOptions(ephemeral_state=True))
    named = load_config(project(WITH_SECRETS.replace('"0 5 * * 1-5"', '"0 5 * jan-mar MON-FRI"')),
                        environ=SECRET_VALUES)
    check_cronjob(cronjob_manifests(named, ["Qualifio_Profiles.v2"], K8sOptions(ephemeral_state=True))[0])


def test_an_unknown_activation_is_refused(demo_project: Path) -> None:
    config = load_config(demo_project)
    with pytest.raises(ConfigError, match=r"activation 'nope': not in the configuration"):
        cronjob_manifests(config, ["nope"], K8sOptions(ephemeral_state=True))


def test_an_activation_without_a_schedule_is_refused(project) -> None:
    unscheduled = load_config(project(WITH_SECRETS.replace('schedule = { every = "15m" }', "")), environ=SECRET_VALUES)
    assert scheduled_names(unscheduled) == ["Qualifio_Profiles.v2"]
    with pytest.raises(ConfigError, match=r"\[activations.every_quarter_hour\]: has no schedule"):
        cronjob_manifests(unscheduled, ["every_quarter_hour"], K8sOptions(ephemeral_state=True))


def test_invalid_options_are_refused(demo_project: Path) -> None:
    config = load_config(demo_project)
    options = K8sOptions(namespace="Marketing_Team", memory_limit="lots", starting_deadline_seconds=5)
    with pytest.raises(ConfigError) as caught:
        cronjob_manifests(config, ["vip_customers"], options)
    message = caught.value.message()
    assert "k8s namespace" in message and "k8s memory_limit" in message and "k8s starting_deadline_seconds" in message


def test_the_failure_policy_uses_the_cli_exit_codes() -> None:
    assert (EXIT_FAILED, EXIT_CONFIG, EXIT_LOCKED) == (cli.EXIT_FAILED, cli.EXIT_CONFIG, cli.EXIT_LOCKED)


def test_what_would_vanish_with_each_pod_is_refused_unless_asked_for(demo_project) -> None:
    """A state directory without a claim, or a local outbox, is an emptyDir: the ledger, the snapshots
    and the delivered files would be gone after every run, silently."""
    config = load_config(demo_project)
    with pytest.raises(ConfigError) as no_claim:
        cronjob_manifests(config, ["newsletter_engaged"], K8sOptions())
    said = no_claim.value.message()
    assert "the state directory would be an emptyDir" in said and "--state-claim NAME" in said
    assert "a local directory, which in a pod is an emptyDir Actito never sees" in said
    with pytest.raises(ConfigError, match="Actito never sees"):
        cronjob_manifests(config, ["newsletter_engaged"], PVC)
    assert cronjob_manifests(config, ["newsletter_engaged"], TRIAL)
    assert cronjob_manifests(config, ["qualifio_profiles"], PVC)  # imports need no outbox
