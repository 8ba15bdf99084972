"""Kubernetes CronJobs, one per scheduled activation, each running ``audience-sync run NAME`` in a fresh pod.

``startingDeadlineSeconds`` is always set: without it, 100 missed schedules stop a CronJob for good.
The pod failure policy is keyed on the CLI's exit codes, so a configuration error is never retried and a
skip for a held lock never uses up ``backoffLimit``. Without a state volume claim the ledger and snapshots
are lost after every run (docs/deploy.md). Problems are all reported in one ConfigError.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from etl.config import AudienceActivation, Config, parse_interval
from etl.config.base import VARIABLE
from etl.config.dbt import MANIFEST
from etl.version import __version__
from etl.errors import ConfigError

log = logging.getLogger("audience_sync.k8s")

#: where the ConfigMap's files appear in the pod; relative paths of the configuration start here
CONFIG_DIR = PurePosixPath("/etc/audience-sync")
#: the ConfigMap key (and file name in the pod) of the configuration file, whatever its name locally
CONFIG_KEY = "schedules.toml"
#: Kubernetes refuses a ConfigMap whose data is larger than 1 MiB
_CONFIGMAP_MAX_BYTES = 1_048_576
CONTAINER_NAME = "audience-sync"
#: the CLI's exit codes the pod failure policy is keyed on (etl.cli: EXIT_CONFIG, EXIT_LOCKED, EXIT_FAILED)
EXIT_FAILED, EXIT_CONFIG, EXIT_LOCKED = 1, 2, 3
#: a CronJob's name is at most 52 characters: its Jobs get an 11-character suffix
MAX_NAME = 52
#: the pod's user and group: the Dockerfile's non-root user
RUN_AS = 10001
DEFAULT_IMAGE = f"audience-sync:{__version__}"
SUCCESSFUL_JOBS_KEPT = 3
FAILED_JOBS_KEPT = 5

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_CONFIGMAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


@dataclass(frozen=True)
class K8sOptions:
    """What the manifests need beyond the configuration; the defaults suit a small audience."""

    #: the tag the Dockerfile's build instructions give this version's image (never a moving "latest")
    image: str = DEFAULT_IMAGE
    namespace: str | None = None
    #: the Secret holding one key per ``${VAR}`` the configuration references
    secret_name: str = "audience-sync"
    #: the ConfigMap holding ``schedules.toml`` and the SQL files (see configmap_manifest)
    config_map: str = "audience-sync-config"
    starting_deadline_seconds: int = 600
    backoff_limit: int = 2
    cpu_request: str = "250m"
    memory_request: str = "256Mi"
    memory_limit: str = "512Mi"
    cpu_limit: str | None = None
    #: a PersistentVolumeClaim for the state directory; without it the state dir is an emptyDir
    state_volume_claim: str | None = None
    #: accept a state directory and a local outbox that live only as long as the pod — a trial only
    ephemeral_state: bool = False
    #: hand the pod every variable the file references, not only the activation's own
    all_secrets: bool = False


def scheduled_names(config: Config) -> list[str]:
    """Every activation with a schedule: a disabled one becomes a suspended CronJob, so pruning keeps it."""
    return [name for name, activation in config.activations.items() if activation.schedule is not None]


def cronjob_manifests(config: Config, names: Sequence[str], options: K8sOptions) -> list[dict[str, Any]]:
    """One CronJob per named activation, in the order given; ConfigError lists every problem."""
    files, problems = files_and_problems(config, options)
    raw = _raw_config(config)
    every_variable = _variables(raw)
    seen: dict[str, str] = {}
    manifests: list[dict[str, Any]] = []
    for name in dict.fromkeys(names):  # keep the order, drop repeats
        where = f"[activations.{name}]"
        try:
            k8s_name, schedule = _schedule(config, name, where, seen)
            if config.activations[name].needs_lasting_state and options.state_volume_claim is None:
                raise _Refused(where, LASTING_STATE)
            problems += ephemeral_problems(config, name, where, options)
            variables = _pod_variables(raw, config, name, every_variable, where, options)
        except _Refused as refused:
            problems.append(refused.problem)
            continue
        manifests.append(_cronjob(config, name, k8s_name, schedule, variables, files, options))
    if problems:
        raise ConfigError(problems, source=config.source)
    _warn_of_unhonoured(config, names)
    return manifests


def _warn_of_unhonoured(config: Config, names: Sequence[str]) -> None:
    """Separate CronJobs start on their own schedules and only at their slots: said, as neither ``after``
    between them nor ``run_on_create`` is honoured (neither is wrong enough to refuse the manifests)."""
    unordered = [f"{name} after {', '.join(config.activations[name].after)}" for name in dict.fromkeys(names)
                 if config.activations[name].after and config.activations[name].enabled]
    if unordered:
        log.warning("each CronJob runs one activation on its own schedule, so `after` does not order them (%s): "
                    "run those activations in one pod with `audience-sync run A B` or with `audience-sync "
                    "schedule` (docs/deploy.md, \"Activation order\")", "; ".join(unordered))
    created = [name for name in dict.fromkeys(names)
               if (schedule := config.activations[name].schedule) is not None and schedule.run_on_create]
    if created:
        log.warning("a CronJob waits for its first slot: run_on_create is not honoured (%s); start a first run "
                    "with `kubectl create job --from=cronjob/NAME`", ", ".join(created))


class _Refused(Exception):
    """An activation that cannot become a CronJob, and why (its other checks are skipped)."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(what)
        self.problem = (where, what)


LASTING_STATE = ('delivery = "membership" compares each run with the members the previous run kept in the state '
                 "directory: on an emptyDir, members who leave would never be removed. Give a "
                 "PersistentVolumeClaim for it (--state-claim NAME)")


def _schedule(config: Config, name: str, where: str, seen: dict[str, str]) -> tuple[str, str]:
    """(Kubernetes name, cron schedule) of an activation; ``seen`` maps the names given so far to their activation."""
    activation = config.activations.get(name)
    if activation is None:
        known = ", ".join(sorted(config.activations)) or "none"
        raise _Refused(f"activation {name!r}", f"not in the configuration (known: {known})")
    if activation.schedule is None:
        raise _Refused(where, "has no schedule: add schedule = { cron = \"...\" } or { every = \"6h\" }")
    k8s_name = cronjob_name(name)
    if k8s_name in seen:
        raise _Refused(where, f"its Kubernetes name {k8s_name!r} is also the one of [activations.{seen[k8s_name]}]: "
                              "rename one of them")
    seen[k8s_name] = name
    if activation.schedule.start_at is not None:
        raise _Refused(f"{where} schedule.start_at",
                       "a CronJob has no start time: it would run before start_at and, for `every`, in other slots. "
                       "Remove start_at for Kubernetes, or run the activation with `audience-sync schedule`")
    schedule = activation.schedule.cron
    if schedule is not None and (problem := _cron_problem(schedule)) is not None:
        raise _Refused(f"{where} schedule.cron", problem)
    if schedule is None:
        every = activation.schedule.every or ""
        schedule = every_as_cron(every)
        if schedule is None:
            raise _Refused(f"{where} schedule.every", _every_refusal(every))
    return k8s_name, schedule


def _pod_variables(raw: dict[str, Any], config: Config, name: str, every_variable: dict[str, str], where: str,
                   options: K8sOptions) -> list[str]:
    """The variables handed to the activation's pod: its own, or every one with ``all_secrets``."""
    if options.all_secrets:
        return sorted(every_variable)
    own = _activation_variables(raw, config, name)
    if missing := {var: table for var, table in every_variable.items() if var not in own}:
        listed = ", ".join(f"{var} ({table})" for var, table in sorted(missing.items()))
        raise _Refused(where, f"`audience-sync run` reads the whole file, which also references {listed}: "
                              "the pod would stop with exit code 2 without them. Hand every pod every "
                              "variable (--all-secrets), or keep the other tables in another file")
    return sorted(own)


def files_and_problems(config: Config, options: K8sOptions) -> tuple[list[_File], list[tuple[str, str]]]:
    """The files every pod mounts, and the problems of the options and of those files, to list with the others."""
    files, problems = _config_files(config)
    return files, _option_problems(options) + problems


def every_variable(config: Config) -> list[str]:
    """Every variable the file references: the daemon loads and runs the whole file, so it needs them all."""
    return sorted(_variables(_raw_config(config)))


def configmap_manifest(config: Config, options: K8sOptions) -> dict[str, Any]:
    """The configuration file and its SQL files; a ConfigMap is safe as the loader refuses literal secrets."""
    files, problems = _config_files(config)
    if problems:
        raise ConfigError(problems, source=config.source)
    data = {CONFIG_KEY: _config_file(config).read_text(encoding="utf-8")}
    for file in files:
        data[file.key] = file.local.read_text(encoding="utf-8")
    if (size := sum(len(text.encode("utf-8")) for text in data.values())) > _CONFIGMAP_MAX_BYTES:
        raise ConfigError([("--with-config", f"the configuration and its files take {size:,} bytes; a ConfigMap "
                                             f"holds at most {_CONFIGMAP_MAX_BYTES:,} (a dbt manifest.json is often "
                                             "larger): create the ConfigMap yourself, e.g. from a volume")],
                          source=config.source)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_metadata(options.config_map, options, {"app.kubernetes.io/name": "audience-sync"}),
        "data": data,
    }


def render_yaml(manifests: list[dict[str, Any]]) -> str:
    """Multi-document YAML, keys in the order they were built."""
    if not manifests:
        return ""
    return str(yaml.dump_all(manifests, Dumper=_Dumper, explicit_start=True, sort_keys=False, allow_unicode=True,
                             width=4096))


class _Dumper(yaml.SafeDumper):
    """Safe dumping that writes a repeated mapping out again instead of as an ``&id001`` anchor."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


# --------------------------------------------------------------------------- names and schedules


def cronjob_name(activation: str) -> str:
    """A DNS-1123 name; a name over `MAX_NAME` is cut and ends with a hash of the whole, so it stays unique."""
    name = re.sub(r"[^a-z0-9-]", "-", activation.lower()).strip("-") or "activation"
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(activation.encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME - len(digest) - 1].rstrip('-')}-{digest}"
    return name


def every_as_cron(every: str) -> str | None:
    """The cron expression for an interval dividing an hour or a day, else None.

    Trap: cron is wall-clock time but the daemon counts elapsed time, so across DST a ``2h``..``12h``
    interval runs an hour apart from the daemon's times for half of the year."""
    seconds = parse_interval(every)
    if seconds % 60:
        return None
    minutes = seconds // 60
    if minutes < 60:
        if 60 % minutes:
            return None
        return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
    if minutes % 60:
        return None
    hours = minutes // 60
    if hours == 24:
        return "0 0 * * *"
    if hours > 24 or 24 % hours:
        return None
    return "0 * * * *" if hours == 1 else f"0 */{hours} * * *"


_CRON_NAMES = frozenset(
    "jan feb mar apr may jun jul aug sep oct nov dec sun mon tue wed thu fri sat".split()
)


def _cron_problem(cron: str) -> str | None:
    """What Kubernetes would refuse that APScheduler accepts, such as ``last`` (day of the month)."""
    words = {word.lower() for word in re.findall(r"[A-Za-z]+", cron)}
    if unknown := sorted(words - _CRON_NAMES):
        return (f"{cron!r} uses {', '.join(unknown)}, which Kubernetes cron schedules do not support: "
                "use numbers, month names (jan) and day names (mon) only")
    return None


def _every_refusal(every: str) -> str:
    return (f"every = {every!r} cannot be a Kubernetes schedule: a cron expression only repeats an interval that "
            "divides an hour (1m, 2m, 3m, 4m, 5m, 6m, 10m, 12m, 15m, 20m, 30m) or a day (1h, 2h, 3h, 4h, 6h, 8h, "
            "12h, 1d). Use one of those, or write cron = \"M H DoM Mon DoW\"")


# --------------------------------------------------------------------------- the CronJob


def _cronjob(config: Config, name: str, k8s_name: str, schedule: str, variables: list[str],
             files: list[_File], options: K8sOptions) -> dict[str, Any]:
    activation = config.activations[name]
    assert activation.schedule is not None
    labels = {
        "app.kubernetes.io/name": "audience-sync",
        "app.kubernetes.io/component": "activation",
        "audience-sync/activation": k8s_name,
    }
    annotations = {"audience-sync/activation": name}
    if activation.schedule.every is not None:
        annotations["audience-sync/every"] = activation.schedule.every
    if activation.after:  # said, not honoured: another CronJob is not waited for (docs/deploy.md)
        annotations["audience-sync/after-not-enforced"] = ", ".join(activation.after)
    job_spec = {
        "backoffLimit": options.backoff_limit,
        "podFailurePolicy": {"rules": _pod_failure_rules()},
        "template": pod_template(config, [name], labels, ["run", name], variables, files, options),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": object_metadata(k8s_name, options, labels, annotations),
        "spec": {
            "schedule": schedule,
            "timeZone": activation.schedule.timezone,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": options.starting_deadline_seconds,
            "successfulJobsHistoryLimit": SUCCESSFUL_JOBS_KEPT,
            "failedJobsHistoryLimit": FAILED_JOBS_KEPT,
            "suspend": not activation.enabled,
            "jobTemplate": {"metadata": {"labels": dict(labels)}, "spec": job_spec},
        },
    }


def pod_template(config: Config, names: Sequence[str], labels: dict[str, str], arguments: list[str],
                 variables: list[str], files: list[_File], options: K8sOptions,
                 restart_policy: str = "Never") -> dict[str, Any]:
    """One builder for a CronJob's pod and the daemon's, so the daemon never drifts from the CronJobs' security
    context, mounts and Secret wiring; ``names`` are the activations the pod may run (their scratch dirs)."""
    volumes, mounts = _volumes(config, names, files, options)
    command = ["audience-sync", "--log-format", "json", "--config", str(CONFIG_DIR / CONFIG_KEY), *arguments]
    container = _container(command, variables, mounts, options)
    return {"metadata": {"labels": dict(labels)}, "spec": _pod_spec(config, container, volumes, restart_policy)}


def _container(command: list[str], variables: list[str], mounts: list[dict[str, Any]],
               options: K8sOptions) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": options.image,
        "command": command,
        # paths some settings read relative to the working directory then mean the same as on a server
        "workingDir": str(CONFIG_DIR),
    }
    if variables:
        container["env"] = [
            {"name": var, "valueFrom": {"secretKeyRef": {"name": options.secret_name, "key": var}}}
            for var in variables
        ]
    limits = {"memory": options.memory_limit}
    if options.cpu_limit is not None:
        limits["cpu"] = options.cpu_limit
    container["resources"] = {
        "requests": {"cpu": options.cpu_request, "memory": options.memory_request},
        "limits": limits,
    }
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    container["volumeMounts"] = mounts
    return container


def _pod_spec(config: Config, container: dict[str, Any], volumes: list[dict[str, Any]],
              restart_policy: str) -> dict[str, Any]:
    return {
        "restartPolicy": restart_policy,
        "automountServiceAccountToken": False,
        # a run (the daemon's runs, on SIGTERM) gets its shutdown grace to finish, then time to record how it ended
        "terminationGracePeriodSeconds": config.settings.shutdown_grace_seconds + 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }


def _pod_failure_rules() -> list[dict[str, Any]]:
    def on_exit(code: int) -> dict[str, Any]:
        return {"containerName": CONTAINER_NAME, "operator": "In", "values": [code]}

    return [
        # a configuration error: the next attempt would read the same file
        {"action": "FailJob", "onExitCodes": on_exit(EXIT_CONFIG)},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        # skipped for a held lock: nothing was done, try again once it is released
        {"action": "Ignore", "onExitCodes": on_exit(EXIT_LOCKED)},
        {"action": "Count", "onExitCodes": on_exit(EXIT_FAILED)},
    ]


def object_metadata(name: str, options: K8sOptions, labels: dict[str, str],
                    annotations: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if options.namespace is not None:
        metadata["namespace"] = options.namespace
    metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    return metadata


# --------------------------------------------------------------------------- files and volumes


@dataclass(frozen=True)
class _File:
    key: str  # in the ConfigMap
    local: Path  # where it is now
    pod: PurePosixPath  # where the configuration expects it in the pod


def _pod_path(path: Path) -> PurePosixPath:
    """Where a path of the configuration points in the pod, whose configuration dir is CONFIG_DIR."""
    text = path.as_posix()
    return PurePosixPath(posixpath.normpath(text if path.is_absolute() else f"{CONFIG_DIR}/{text}"))


def _config_files(config: Config) -> tuple[list[_File], list[tuple[str, str]]]:
    """Every SQL file, dbt manifest and transform file the configuration references (the loader checks them
    all, whichever activation runs)."""
    files: dict[str, _File] = {}
    problems: list[tuple[str, str]] = []
    for name, activation in config.activations.items():
        target = activation.transform_target if isinstance(activation, AudienceActivation) else None
        # a dbt model is read from its project's manifest: the pod needs that file, not the project
        query = ("sql", activation.sql) if activation.dbt is None else ("dbt", activation.dbt.project_dir / MANIFEST)
        referenced = [query] + ([("transform", target[0])] if target else [])
        for key, path in referenced:
            assert path is not None  # an activation has a SQL file or a dbt model, by its validator
            file = _File(path.name, config.path(path), _pod_path(path))
            where = f"[activations.{name}] {key}"
            if not _CONFIGMAP_KEY.match(file.key) or file.key == CONFIG_KEY:
                problems.append((where, f"{file.key!r} cannot be a ConfigMap key: name SQL and transform files with "
                                        "letters, digits, '-', '_' and '.' only"))
            elif file.key in files and files[file.key].pod != file.pod:
                problems.append((where, f"two files are named {file.key!r} ({files[file.key].pod} and {file.pod}): "
                                        "ConfigMap keys are file names, rename one"))
            else:
                files[file.key] = file
    return list(files.values()), problems


def _volumes(config: Config, names: Sequence[str], files: list[_File],
             options: K8sOptions) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    items = [{"key": CONFIG_KEY, "path": CONFIG_KEY}] + [{"key": f.key, "path": f.key} for f in files]
    volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": options.config_map, "items": items}}]
    # by subPath: the state volume, usually under the config dir, cannot be mounted inside a read-only ConfigMap volume
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": str(CONFIG_DIR / CONFIG_KEY), "subPath": CONFIG_KEY, "readOnly": True}
    ] + [{"name": "config", "mountPath": str(f.pod), "subPath": f.key, "readOnly": True} for f in files]

    state_dir = _pod_path(config.settings.state_dir)
    if options.state_volume_claim is not None:
        volumes.append({"name": "state", "persistentVolumeClaim": {"claimName": options.state_volume_claim}})
    else:
        volumes.append({"name": "state", "emptyDir": {}})
    mounts.append({"name": "state", "mountPath": str(state_dir)})
    volumes.append({"name": "tmp", "emptyDir": {}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    # the daemon's pod runs every activation: a directory is mounted once, a volume name taken gets a suffix
    mounted = {PurePosixPath(m["mountPath"]) for m in mounts}
    for volume, path in (dirs for name in names for dirs in _scratch_dirs(config, name)):
        if path.is_relative_to(state_dir) or path in mounted:
            continue
        base, suffix = volume, 1
        while volume in {v["name"] for v in volumes}:
            suffix += 1
            volume = f"{base}-{suffix}"
        mounted.add(path)
        volumes.append({"name": volume, "emptyDir": {}})
        mounts.append({"name": volume, "mountPath": str(path)})
    return volumes, mounts


def _scratch_dirs(config: Config, name: str) -> Iterator[tuple[str, PurePosixPath]]:
    """Directories outside the state dir the run writes to, on the read-only root filesystem."""
    activation = config.activations[name]
    _, warehouse = config.warehouse_for(name)
    url = warehouse.url.get_secret_value()
    database = url[len("sqlite:///"):]
    if warehouse.demo and url.startswith("sqlite:///") and database and not database.startswith(":memory:"):
        yield "demo-warehouse", _pod_path(Path(database)).parent
    for index, destination in enumerate(config.destinations_of(name)):
        location = config.destinations[destination].file_location
        outbox = location.local_directory if location is not None and activation.delivers_file else None
        if outbox is not None:
            # a local "file transfer location" in a pod is only a placeholder: see docs/deploy.md
            yield "outbox" + (f"-{index + 1}" if index else ""), _pod_path(outbox)
    if config.metrics.textfile is not None:
        # read relative to the working directory, which is CONFIG_DIR in the pod
        yield "metrics", _pod_path(config.metrics.textfile).parent


def ephemeral_problems(config: Config, name: str, where: str, options: K8sOptions,
                       state: bool = True) -> list[tuple[str, str]]:
    """What would silently vanish with each pod, unless asked for (``--ephemeral-state``); the daemon's one
    pod says its state directory once (``state=False``), not once per activation."""
    if options.ephemeral_state:
        return []
    problems = []
    if options.state_volume_claim is None and state:
        problems.append((where, "the state directory would be an emptyDir, lost after every run (the ledger, "
                                "the snapshots, the shrink guard's memory): give --state-claim NAME, or "
                                "--ephemeral-state to accept it"))
    if any(volume.startswith("outbox") for volume, _ in _scratch_dirs(config, name)):
        problems.append((where, "its destination is a local directory, which in a pod is an emptyDir Actito never "
                                "sees: use an sftp or ftps location, or --ephemeral-state for a trial"))
    return problems


# --------------------------------------------------------------------------- secrets


def _config_file(config: Config) -> Path:
    return config.base_dir / Path(config.source).name


def _raw_config(config: Config) -> dict[str, Any]:
    """The file as written, ``${VAR}`` references intact (the loaded configuration holds their values)."""
    file = _config_file(config)
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([(str(file), f"cannot read the configuration again: {exc}")], source=config.source) from None


def _references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)
    elif isinstance(node, str):
        yield from VARIABLE.findall(node)


def _tables(raw: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in raw.items():
        if key in ("warehouses", "destinations", "activations") and isinstance(value, dict):
            for name, table in value.items():
                yield f"[{key}.{name}]", table
        else:
            yield f"[{key}]", value


def _variables(raw: dict[str, Any]) -> dict[str, str]:
    """Every variable the file references, with the first table that does."""
    found: dict[str, str] = {}
    for table, node in _tables(raw):
        for var in _references(node):
            found.setdefault(var, table)
    return found


def _activation_variables(raw: dict[str, Any], config: Config, name: str) -> set[str]:
    """The variables one activation's run uses: its own table, its warehouse, its destination, and the
    tables every run reads ([settings], [alerts], [metrics])."""
    warehouse, _ = config.warehouse_for(name)
    nodes = [
        raw.get("settings"), raw.get("alerts"), raw.get("metrics"),
        (raw.get("warehouses") or {}).get(warehouse),
        *((raw.get("destinations") or {}).get(destination) for destination in config.destinations_of(name)),
        (raw.get("activations") or {}).get(name),
    ]
    return {var for node in nodes for var in _references(node)}


def secret_variables(config: Config, name: str) -> list[str]:
    """The Secret keys an activation's pod receives as environment variables (without all_secrets)."""
    return sorted(_activation_variables(_raw_config(config), config, name))


# --------------------------------------------------------------------------- options


def _option_problems(options: K8sOptions) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if not options.image.strip():
        problems.append(("k8s image", "an image is needed"))
    names = {"namespace": options.namespace, "secret_name": options.secret_name,
             "config_map": options.config_map, "state_volume_claim": options.state_volume_claim}
    for option, value in names.items():
        if value is not None and (len(value) > 253 or not _DNS_SUBDOMAIN.match(value)):
            problems.append((f"k8s {option}", f"{value!r} is not a Kubernetes name (lowercase letters, digits, '-')"))
    if options.starting_deadline_seconds < 10:
        problems.append(("k8s starting_deadline_seconds", "at least 10: below, Kubernetes may never start the Job"))
    if options.backoff_limit < 0:
        problems.append(("k8s backoff_limit", "0 or more"))
    quantities = {"cpu_request": options.cpu_request, "memory_request": options.memory_request,
                  "memory_limit": options.memory_limit, "cpu_limit": options.cpu_limit}
    for option, value in quantities.items():
        if value is not None and not _QUANTITY.match(value):
            problems.append((f"k8s {option}", f"{value!r} is not a Kubernetes quantity (e.g. 250m, 0.5, 512Mi, 1Gi)"))
    return problems
