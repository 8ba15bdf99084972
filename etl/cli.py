"""The ``audience-sync`` command: the one place where errors become words and exit codes (a
traceback only with ``--debug``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from etl.errors import AudienceSyncError, ConfigError, UsageError
from etl.logs import configure_logging, redact
from etl.runtime.results import RunStatus
from etl.version import __version__

if TYPE_CHECKING:
    from etl.config import Config
    from etl.runtime.runs import RunOutcome

# everything else is imported lazily: `--help` must not pay for pyarrow (tests/test_first_hour.py)

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_LOCKED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

log = logging.getLogger("audience_sync")


def _add_global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """Accepted before or after the command."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--config", "-c", default=default(None),
                        help="configuration file (default: $AUDIENCE_SYNC_CONFIG or ./schedules.toml)")
    parser.add_argument("--log-format", choices=("text", "json"), default=default("text"),
                        help="logs and results as JSON lines")
    parser.add_argument("--verbose", "-v", action="store_true", default=default(False), help="log every step")
    parser.add_argument("--debug", action="store_true", default=default(False),
                        help="show tracebacks of internal errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audience-sync",
        description="Activations from your warehouse to Actito: audiences in SQL, cleaned and delivered.",
        epilog="Exit codes: 0 ok, 1 an activation failed, 2 configuration error, 3 skipped (locked), 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"audience-sync {__version__}")
    _add_global_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, defaults=False)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], help=summary)

    _add_run_commands(command)
    _add_inspect_commands(command, common)
    _add_deploy_commands(command)
    _add_tool_commands(command)
    return parser


_Command = Callable[[str, str], argparse.ArgumentParser]


def _add_run_commands(command: _Command) -> None:
    init = command("init", "write a starter schedules.toml and SQL file")
    init.add_argument("directory", nargs="?", default=".", metavar="DIR")
    init.add_argument("--warehouse-url", help="your warehouse's SQLAlchemy URL (default: the demo warehouse)")

    run = command("run", "run activations now")
    run.add_argument("names", nargs="*", metavar="NAME")
    run.add_argument("--all", action="store_true", help="every enabled activation")
    run.add_argument("--dry-run", action="store_true", help="write the files locally, deliver nothing")
    run.add_argument("--force", action="store_true", help="deliver even if a safety guard (max_shrink) objects")
    run.add_argument("--as-of", type=_day, metavar="YYYY-MM-DD",
                     help="run as on that day: :run_date, :run_at and the file name's date (a backfill)")
    run.add_argument("--full", action="store_true",
                     help="imports: send every row, not only those changed, and rebuild the snapshot from what the "
                          "destination took (after Actito lost data); says what it will send and asks first")
    run.add_argument("--yes", action="store_true", help="with --full: send without asking (no terminal to ask on)")
    run.add_argument("--jobs", "-j", type=_at_least_one, default=1, metavar="N",
                     help="run up to N activations at once (default 1), within each warehouse's max_connections "
                          "and each licence's limits; `after` is kept; no live progress line when N > 1")

    replay = command("replay", "deliver again exactly the files a run delivered (checked against their sha256), "
                               "as a new run: to restore a past audience, or the values a past import set")
    replay.add_argument("run_id", metavar="RUN_ID")
    replay.add_argument("--dry-run", action="store_true", help="check and stage everything, deliver nothing")
    replay.add_argument("--force", action="store_true", help="deliver even if the shrink guard objects")

    preview = command("preview", "what a run would deliver, nothing sent or written: an audience's counts and "
                                 "first identifiers; an import's mapped columns, rows refused by reason, first rows")
    preview.add_argument("name", metavar="NAME")
    preview.add_argument("--limit", type=_at_least_zero, metavar="N",
                         help="identifiers (default 10) or mapped rows (default 5) to show")
    preview.add_argument("--as-of", type=_day, metavar="YYYY-MM-DD", help="preview as on that day (:run_date ...)")

    validate = command("validate", "check the configuration and report every problem")
    validate.add_argument("--connect", action="store_true",
                          help="also connect to each warehouse and plan each query, reading no row")

    retire = command("retire", "remove an activation's files and members from where it delivered them, and its "
                               "local state; its history stays (NAME may have left the configuration)")
    retire.add_argument("name", metavar="NAME")
    retire.add_argument("--dry-run", action="store_true", help="list exactly what would be removed, remove nothing")


def _add_inspect_commands(command: _Command, common: argparse.ArgumentParser) -> None:
    history = command("history", "recent runs")
    history.add_argument("name", nargs="?", metavar="NAME")
    history.add_argument("--limit", type=int, default=20)
    history.add_argument("--status", choices=[status.value for status in RunStatus
                                                    if status not in (RunStatus.LOCKED, RunStatus.SKIPPED)])
    history.add_argument("--since", type=_date, metavar="YYYY-MM-DD", help="runs started on or after this day (UTC)")
    history.add_argument("--sizes", action="store_true", help="audience size over time, with changes")

    show = command("show", "one run in full: steps, counts, files, rejected rows")
    show.add_argument("run_id", metavar="RUN_ID")

    sheet = command("setup-sheet", "what to configure on the Actito side for an activation")
    sheet.add_argument("name", metavar="NAME")

    actito = command("actito", "talk to Actito")
    actito_commands = actito.add_subparsers(dest="actito_command", required=True, metavar="ACTITO_COMMAND")
    check = actito_commands.add_parser(
        "check", parents=[common],
        help="credentials, entity, tables and every mapped column of a destination, before any data is sent",
    )
    check.add_argument("destination", metavar="DESTINATION")


def _add_deploy_commands(command: _Command) -> None:
    schedule = command("schedule", "run the scheduler daemon (SIGTERM stops, SIGHUP reloads)")
    schedule.add_argument("--preview", action="store_true", help="print each activation's next run times and exit")
    schedule.add_argument("--count", type=int, default=5, help="run times to preview (default 5)")
    schedule.add_argument("--listen", metavar="HOST:PORT",
                          help="serve /healthz, /readyz, /metrics and a status page (e.g. :9108, loopback; "
                          "0.0.0.0:9108 in a container)")

    k8s = command("k8s", "Kubernetes CronJobs, or with --daemon a Deployment and Service (YAML on stdout)")
    k8s.add_argument("names", nargs="*", metavar="NAME")
    k8s.add_argument("--all", action="store_true", help="every activation with a schedule")
    k8s.add_argument("--image", help="the container image (default: audience-sync:VERSION, as the Dockerfile "
                     "says to tag it)")
    k8s.add_argument("--namespace")
    k8s.add_argument("--secret", default="audience-sync", help="the Secret holding one key per ${VAR}")
    k8s.add_argument("--state-claim", help="PersistentVolumeClaim for the state directory (ledger, snapshots)")
    k8s.add_argument("--all-secrets", action="store_true", help="give every pod every variable the file references")
    k8s.add_argument("--ephemeral-state", action="store_true",
                     help="accept a state directory and a local outbox that vanish with each pod (a trial)")
    k8s.add_argument("--with-config", action="store_true", help="also emit the ConfigMap of schedules.toml and sql/")
    k8s.add_argument("--daemon", action="store_true", help="a Deployment running `schedule --listen` and its "
                     "Service, instead of CronJobs (no NAME: it runs every enabled scheduled activation)")
    k8s.add_argument("--replicas", type=int, help="the Deployment's replicas (default 1; more need settings.state_url)")


def _add_tool_commands(command: _Command) -> None:
    report = command("report", "a static HTML page of recent runs and sizes")
    report.add_argument("--output", "-o", help="where to write it (default: report.html in the state directory)")

    sandbox = command("sandbox", "run the Actito sandbox (an emulator on loopback) in the foreground")
    sandbox.add_argument("--port", type=int, default=8765)
    sandbox.add_argument("--fixture", help="JSON fixture of entities, tables and API keys (default: the demo one)")
    sandbox.add_argument("--state-file", help="keep the sandbox's profiles, records and imports in this JSON file")
    sandbox.add_argument("--latency-seconds", type=float, default=0.0,
                         help="how long each API request takes to answer, as a real Actito's do (default 0)")


def _day(text: str) -> date:
    """A calendar day, as ISO 8601 writes it: refused by argparse, with exit 2, otherwise."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day written YYYY-MM-DD (e.g. 2026-11-01)") from None


def _at_least(minimum: int, what: str) -> Callable[[str], int]:
    """A whole number refused by argparse, with exit 2, below ``minimum`` (a negative --limit would slice
    rows from the end; --jobs 0 would run nothing)."""
    def number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} ({minimum} or more)")
        return value

    return number


_at_least_zero = _at_least(0, "a count")
_at_least_one = _at_least(1, "a number of activations to run at once")


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_format, logging.INFO if args.verbose else logging.WARNING)
    if args.debug:  # the tracebacks of internal errors, which runs log at DEBUG
        logging.getLogger("audience_sync").setLevel(logging.DEBUG)
    try:
        return _dispatch(args)
    except AudienceSyncError as exc:
        print(f"audience-sync: {redact(exc.message())}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("audience-sync: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head`: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"audience-sync: internal error ({type(exc).__name__}: {redact(str(exc))}); "
            "rerun with --debug for the traceback and please report it",
            file=sys.stderr,
        )
        return EXIT_FAILED


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("run", "preview", "schedule", "actito") or getattr(args, "connect", False):
        from etl.runtime.arrow import configure_arrow  # commands that read rows

        configure_arrow()
    without_config = _WITHOUT_CONFIG.get(args.command)
    if without_config is not None:
        return without_config(args)
    from etl.config import load_config

    config = load_config(args.config, ledger_only=args.command in ("history", "show", "report"))
    return _WITH_CONFIG[args.command](config, args)


def _sandbox(args: argparse.Namespace) -> int:
    from etl.runtime.doubles import serve_actito_sandbox

    options = ["--port", str(args.port)]
    options += ["--fixture", args.fixture] if args.fixture else []
    options += ["--state-file", args.state_file] if args.state_file else []
    options += ["--latency-seconds", str(args.latency_seconds)]
    return serve_actito_sandbox(options)


def _schedule(args: argparse.Namespace) -> int:
    """The scheduler loads (and reloads) the configuration itself."""
    from etl.ops.announce import announce
    from etl.runtime.scheduler import main as schedule_main
    from jobs import job_for

    server = None
    if args.listen and not args.preview:  # bound first: a port in use is exit 2 before any run starts
        from etl.ops.status_server import StatusServer, parse_listen

        server = StatusServer(*parse_listen(args.listen))
    try:
        return schedule_main(Path(args.config) if args.config else None, job_for, preview=args.preview,
                             count=args.count, finishers=(announce,), on_start=server.attach if server else None)
    finally:
        if server is not None:
            server.close()


def _validate(config: Config, args: argparse.Namespace) -> int:
    if args.connect:
        from etl.ops.connect_check import check_queries_connected

        check_queries_connected(config)
    counted = ", ".join(f"{len(items)} {noun}{'' if len(items) == 1 else 's'}" for noun, items in (
        ("activation", config.activations), ("destination", config.destinations), ("warehouse", config.warehouses)))
    print(f"{config.source}: ok — {counted}" + (", every query planned by its warehouse" if args.connect else ""))
    from etl.ops.retire import leftovers

    for warning in leftovers(config, shared_ledger=args.connect):  # a warning: the exit code is unchanged
        log.warning("%s", warning)
    return EXIT_OK


def _retire(config: Config, args: argparse.Namespace) -> int:
    from etl.ops.retire import deliveries_left, retire_command

    codes = [EXIT_OK]
    # a fan-out that left the configuration: its deliveries, each an activation of its own, go with it
    for name in [args.name, *deliveries_left(config, args.name)]:
        said = retire_command(config, name, dry_run=args.dry_run)
        print(json.dumps(said.json, default=str) if args.log_format == "json" else said.text)
        outcome = said.outcome
        if outcome is not None and not outcome.ok:
            print(f"audience-sync: retire {name}: {outcome.error}", file=sys.stderr)
            codes.append(EXIT_LOCKED if outcome.status == RunStatus.LOCKED else EXIT_FAILED)
    return EXIT_FAILED if EXIT_FAILED in codes else max(codes)


def _setup_sheet(config: Config, args: argparse.Namespace) -> int:
    from etl.ops.setup_sheet import setup_sheet

    _require(config, [args.name], kind="audience")
    print(setup_sheet(config, args.name))
    return EXIT_OK


def _report(config: Config, args: argparse.Namespace) -> int:
    from etl.ops.report import write_report
    from etl.runtime.ledger import open_store

    with open_store(config) as store:
        print(write_report(config, store, Path(args.output) if args.output else config.state_dir / "report.html"))
    return EXIT_OK


def _actito(config: Config, args: argparse.Namespace) -> int:
    from etl.destinations.actito.check import check_destination

    report = check_destination(config, args.destination)
    print(report.text())
    return EXIT_OK if report.ok else EXIT_FAILED


def _k8s(config: Config, args: argparse.Namespace) -> int:
    from etl.ops.k8s import DEFAULT_IMAGE, K8sOptions, configmap_manifest, cronjob_manifests, render_yaml, scheduled_names

    options = K8sOptions(image=args.image or DEFAULT_IMAGE, namespace=args.namespace, secret_name=args.secret,
                         state_volume_claim=args.state_claim, all_secrets=args.all_secrets,
                         ephemeral_state=args.ephemeral_state)
    if args.daemon:
        from etl.ops.k8s_daemon import daemon_manifests

        if args.names:
            raise UsageError("the daemon runs every enabled scheduled activation: name none", where="k8s --daemon",
                             hint="audience-sync k8s --daemon [--replicas N]")
        manifests = daemon_manifests(config, options, 1 if args.replicas is None else args.replicas)
    elif args.replicas is not None:
        raise UsageError("--replicas is for the daemon's Deployment", where="k8s",
                         hint="audience-sync k8s --daemon --replicas N")
    else:
        manifests = cronjob_manifests(config, _chosen(config, args, "k8s", "the activations", scheduled_names(config)),
                                      options)
    if args.with_config:
        manifests.insert(0, configmap_manifest(config, options))
    print(render_yaml(manifests), end="")
    return EXIT_OK


def _init(args: argparse.Namespace) -> int:
    """There is no configuration yet."""
    from etl.ops.starter import write_starter

    started = write_starter(Path(args.directory), args.warehouse_url)
    print(f"wrote {started.config} and {started.sql}")
    if args.warehouse_url and "${WAREHOUSE_PASSWORD}" in started.config.read_text(encoding="utf-8"):
        print("the warehouse password is read from $WAREHOUSE_PASSWORD (or a file named by $WAREHOUSE_PASSWORD_FILE)")
    print("next:")
    for command in started.next_commands:
        print(f"  {command}")
    return EXIT_OK


def _chosen(config: Config, args: argparse.Namespace, command: str, what: str, every: list[str]) -> list[str]:
    if args.all == bool(args.names):
        raise UsageError(f"name {what}, or pass --all (not both)", where=command,
                         hint=f"audience-sync {command} NAME… or audience-sync {command} --all")
    names: list[str] = every if args.all else args.names
    _require(config, names)
    return names


def _require(config: Config, names: Sequence[str], *, kind: str | None = None) -> None:
    unknown = [name for name in names if name not in config.activations]
    if unknown:
        known = ", ".join(sorted(config.activations))
        raise ConfigError([(f"activation {name!r}", f"not in the configuration (known: {known})") for name in unknown],
                          source=config.source)
    wrong = [name for name in names if kind and config.activations[name].kind != kind]
    if wrong:
        raise ConfigError(
            [(f"activation {name!r}", f"is a {config.activations[name].kind} activation; this command works on "
              f"{kind} activations (try `run --dry-run {name}`)") for name in wrong],
            source=config.source,
        )


def _run(config: Config, args: argparse.Namespace) -> int:
    from etl.ops.announce import announce
    from etl.ops.run_output import Progress, full_run_confirmation, outcome_json, summary
    from etl.runtime.ledger import open_store
    from etl.runtime.order import dependencies, run_in_order, skipped
    from etl.runtime.runs import execute
    from jobs import job_for

    names = _chosen(config, args, "run", "the activations to run",
                    [n for n, a in config.activations.items() if a.enabled])
    confirm = full_run_confirmation(full=args.full, yes=args.yes)
    json_output = args.log_format == "json"
    shown_live = sys.stderr.isatty() and not json_output and args.jobs == 1  # one \r line cannot show several
    progress = Progress(sys.stderr) if shown_live else None
    printing = threading.Lock()  # parallel runs end together: each JSON line whole, once
    with open_store(config) as store:
        stop = _stop_on_sigterm()

        def told(outcome: RunOutcome) -> RunOutcome:
            if progress:
                progress.clear()
            if json_output:
                with printing:
                    for each in (*outcome.parts, outcome):  # a fan-out's deliveries are runs of their own
                        print(json.dumps(outcome_json(each), default=str), flush=True)
            return outcome

        def one(name: str) -> RunOutcome:
            kind = config.activations[name].kind
            return told(execute(
                config, store, name, kind, job_for(kind),
                dry_run=args.dry_run, progress=progress.update if progress else None, stop=stop, force=args.force,
                finishers=(announce,), shown=not json_output, as_of=args.as_of, full=args.full,
                confirm=(lambda plan: confirm(name, plan)) if confirm else None,
            ))

        outcomes = run_in_order(names, dependencies(config, names), one,
                                lambda name, reason: told(skipped(name, reason, dry_run=args.dry_run)),
                                lambda outcome: outcome.status, parallel=args.jobs > 1, at_most=args.jobs,
                                stop=stop)
    if not json_output:
        print(summary(outcomes))
    return EXIT_INTERRUPTED if stop.is_set() else _exit_code(outcomes)


def _exit_code(outcomes: Sequence[RunOutcome]) -> int:
    if any(o.status in (RunStatus.FAILED, RunStatus.INTERRUPTED) for o in outcomes):
        return EXIT_FAILED
    return EXIT_LOCKED if any(o.status == RunStatus.LOCKED for o in outcomes) else EXIT_OK


def _replay(config: Config, args: argparse.Namespace) -> int:
    """Checked before anything runs (exit 2, nothing recorded), then one run of the activation."""
    from etl.ops.announce import announce
    from etl.ops.run_output import outcome_json, summary
    from etl.runtime.ledger import open_store
    from etl.runtime.runs import execute
    from jobs.replay import replay_plan, replaying

    json_output = args.log_format == "json"
    with open_store(config) as store:
        replay_config, record = replay_plan(config, store, args.run_id)
        outcome = execute(replay_config, store, record.activation, record.kind, replaying(record),
                          dry_run=args.dry_run, force=args.force, finishers=(announce,), shown=not json_output)
    print(json.dumps(outcome_json(outcome), default=str) if json_output else summary([outcome]))
    return _exit_code([outcome])


def _stop_on_sigterm() -> threading.Event:
    """SIGTERM ends the current run at its next chunk; as PID 1 in a container Python would ignore it."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    return stop


def _preview_time(config: Config, name: str, as_of: date | None) -> datetime:
    from etl.runtime.runs import data_time

    return data_time(config.activations[name], datetime.now(UTC), as_of)


def _preview(config: Config, args: argparse.Namespace) -> int:
    from etl.ops.run_output import print_reasons
    from jobs import audience

    name, json_output = args.name, args.log_format == "json"
    _require(config, [name])
    if config.activations[name].kind != "audience":
        return _preview_rows(config, args)
    result = audience.preview(config, name, sample_size=10 if args.limit is None else args.limit,
                              when=_preview_time(config, name, args.as_of))
    counts = vars(result.counts)
    if json_output:
        print(json.dumps({"activation": name, **counts, "sample": result.sample,
                          "rejected_by_reason": result.rejected_by_reason}))
        return EXIT_OK
    print(f"{name}: {counts['kept']:,} {result.columns_used} values "
          f"({counts['extracted']:,} rows read, {counts['rejected']:,} rejected, {counts['duplicates']:,} duplicates)")
    for value in result.sample:
        print(f"  {value}")
    print_reasons("not kept, by reason:", result.rejected_by_reason)
    return EXIT_OK


def _preview_rows(config: Config, args: argparse.Namespace) -> int:
    """An import activation: mapped columns, what would be sent and refused, and the first rows as mapped."""
    from etl.ops.run_output import print_reasons
    from jobs import profiles

    name = args.name
    result = profiles.preview(config, name, sample_size=5 if args.limit is None else args.limit,
                              when=_preview_time(config, name, args.as_of))
    counts = result.counts
    if args.log_format == "json":
        print(json.dumps({"activation": name, "kind": config.activations[name].kind, "where": result.where,
                          "columns": [vars(column) for column in result.columns], "not_sent": result.not_sent,
                          **counts, "compared_with_last_run": result.compared, "sample": result.sample,
                          "rejected_by_reason": result.rejected_by_reason,
                          "dropped_by_reason": result.dropped_by_reason, "examples": result.examples},
                         default=str))
        return EXIT_OK
    duplicates = f", {counts['duplicates']:,} of them duplicates" if counts["duplicates"] else ""
    unchanged = (f"; {counts['unchanged']:,} unchanged since the last run" if result.compared else
                 "; not compared with an earlier run: every row kept would be sent")
    left_out = f", {counts['left_out']:,} incomplete participations left out" if counts["left_out"] else ""
    print(f"{name} → {result.where}: {counts['to_send']:,} rows would be sent ({counts['extracted']:,} read, "
          f"{counts['rejected']:,} refused{duplicates}{left_out}{unchanged})")
    print("mapped columns:")
    targets = [f"subscription {c.target!r}" if c.role == "subscription" else
               f"dataCollection.{c.target}" if c.role == "data collection" else c.target for c in result.columns]
    width = max((len(column.source) for column in result.columns), default=0)
    target_width = max(map(len, targets), default=0)
    for column, target in zip(result.columns, targets):
        print(f"  {column.source:<{width}} → {target:<{target_width}}  {column.rule}"
              + ("  (key)" if column.role == "key" else ""))
    if result.not_sent:
        print(f"not sent: {', '.join(result.not_sent)}")
    print_reasons("refused, by reason:", result.rejected_by_reason, result.examples)
    print_reasons("values dropped (the row is sent without them), by reason:", result.dropped_by_reason,
                   result.examples)
    if result.sample:
        print(f"first {len(result.sample)} rows as mapped:")
        for row in result.sample:
            print("  " + "  ".join(f"{key}={value}" for key, value in row.items() if value is not None))
    print("preview only: nothing was sent, written or recorded (rows the destination itself would refuse, such as "
          "a profile it does not know, show only when a run sends them)")
    return EXIT_OK


def _history(config: Config, args: argparse.Namespace) -> int:
    from etl.ops.history import runs_table, sizes_table
    from etl.runtime.ledger import open_store

    with open_store(config) as store:
        records = store.runs(args.name, status=args.status, limit=args.limit, since=args.since, with_parts=True)
    if args.name and not records:  # a retired activation has left the configuration, not the ledger
        _require(config, [args.name])
    if args.log_format == "json":
        for record in records:
            print(json.dumps(vars(record), default=str))
        return EXIT_OK
    if not records:
        print("no runs recorded yet")
        return EXIT_OK
    print(sizes_table(records) if args.sizes else runs_table(records))
    return EXIT_OK


def _show(config: Config, args: argparse.Namespace) -> int:
    from etl.ops.history import show_run
    from etl.runtime.ledger import open_store

    with open_store(config) as store:
        record = store.get_run(args.run_id)
    if record is None:
        raise AudienceSyncError(f"no run {args.run_id!r} in the ledger", hint="see `audience-sync history` for run ids")
    print(json.dumps(vars(record), default=str) if args.log_format == "json" else show_run(record))
    return EXIT_OK


_WITHOUT_CONFIG: dict[str, Callable[[argparse.Namespace], int]] = {
    "init": _init, "sandbox": _sandbox, "schedule": _schedule,
}
_WITH_CONFIG: dict[str, Callable[[Config, argparse.Namespace], int]] = {
    "validate": _validate, "run": _run, "preview": _preview, "history": _history, "show": _show,
    "setup-sheet": _setup_sheet, "k8s": _k8s, "report": _report, "actito": _actito, "retire": _retire,
    "replay": _replay,
}
