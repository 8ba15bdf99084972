"""The printed set-up sheet for the Actito side of an audience: that side is configured by hand (its
API routes are not public), so the marketer gets the exact values that must match what the job writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from etl.config import AudienceActivation, Config, Destination, FtpsLocation, LocalLocation, SftpLocation, parse_interval
from etl.files import final_file_name
from etl.ops.history import size_after
from etl.runtime.ledger import open_store
from etl.transform.audience import HEADER

_SEPARATORS = {",": "comma (,)", ";": "semicolon (;)", "\t": "tab"}


def setup_sheet(config: Config, name: str) -> str:
    activation = config.activation_of(name, AudienceActivation)
    if activation.destinations:  # a fan-out: Actito is set up at each destination
        return "\n\n".join(setup_sheet(*config.delivery(name, each)) for each in activation.destinations)
    destination = config.destination_of(activation.destination, Destination)
    key = HEADER[activation.identifier]
    pattern = config.file_name_pattern(name)
    current = final_file_name(pattern, datetime.now(UTC), activation.file.compression)
    compression = {"none": "none", "gzip": "GZIP", "zip": "ZIP"}[activation.file.compression]
    lines = [
        f"Actito set-up for activation '{name}'" + (f" — {activation.description}" if activation.description else ""),
        f"Licence entity: {destination.entity}"
        + (f"   technical status e-mail: {destination.technical_email}" if destination.technical_email else ""),
        "",
        "1. File transfer location (Actito: Data → File transfer locations)",
        *(f"   {line}" for line in _location_lines(config, activation.destination)),
        "",
        "2. File synchronisation on that location",
        f"   File name pattern : {pattern}{_suffix(activation.file.compression)}"
        + ("   (Actito date placeholders: $yyyyMMdd ...)" if "$" in pattern else "   (the same name every run)"),
        *_file_lines(pattern, current),
        f"   Compression       : {compression}",
        "   Format            : CSV, UTF-8 without BOM, header line, one column",
        f"   Separator         : {_SEPARATORS[activation.file.separator]}",
        f"   Column / key      : {key}",
        f"   Validity period   : {_validity(config, name)}",
        "   A JSON manifest (<name>.manifest.json) is delivered beside each file: exclude *.json from the pattern.",
        "   Each run delivers the whole audience as this one file, never split into parts (over file.max_bytes",
        "   the run is refused and the previous file stays); once it is in place, this activation's other files",
        "   in the directory (earlier names, parts left by older versions) are removed.",
        "",
        "3. Saved targeting (Actito: Profiles → Manage saved targetings)",
        f"   a. Create a targeting named '{name}' on the profile table that holds {key}.",
        "   b. Turn on Expert mode and remove the default 'Profile' module.",
        "   c. Add a module → File → 'Use reference'; pick the file synchronisation of step 2; 'Use the file reference'.",
        f"   d. 'Attribute used to select profiles': {key}.",
        "   e. Calculate: the count should be close to the audience size of the last run "
        f"({_last_delivered(config, name)}); then Save.",
    ]
    return "\n".join(lines)


def _file_lines(pattern: str, current: str) -> list[str]:
    """A dated name is removed after the next run, so it is shown as an example, never as the file to use."""
    if "$" not in pattern:
        return [f"   File              : {current}   (replaced whole by every run)"]
    return [f"   Today's file      : {current}   (an example: each run writes a new name and removes the one before;",
            "                       point the synchronisation at the pattern, not at this name)"]


def _suffix(compression: str) -> str:
    return {"none": "", "gzip": ".gz", "zip": " (as .zip)"}[compression]


def _location_lines(config: Config, destination_name: str) -> list[str]:
    location = config.destination_of(destination_name, Destination).files
    if isinstance(location, SftpLocation):
        return [
            f"Protocol: SFTP   Host: {location.host}   Port: {location.port}   User: {location.username}",
            f"Directory: {location.remote_dir}",
            "Authentication: " + ("SSH key (install Actito's public key for this user)" if location.key_file
                                  else "password (the one in this job's secret)"),
        ]
    if isinstance(location, FtpsLocation):
        return [
            f"Protocol: FTPS (explicit TLS, passive)   Host: {location.host}   Port: {location.port}",
            f"User: {location.username}   Directory: {location.remote_dir}",
        ]
    if isinstance(location, LocalLocation):
        return [
            f"Local directory: {config.path(location.path)}",
            "Serve this directory to Actito over SFTP or FTPS (or switch the destination to type = 'sftp'/'ftps').",
        ]
    return ["(no files location configured)"]


def _validity(config: Config, name: str) -> str:
    """Long enough to survive one missed run, short enough that a broken job stops targeting stale people."""
    schedule = config.activations[name].schedule
    if schedule is None:
        return "set one a little longer than the interval at which you run this activation"
    if schedule.every:
        seconds = parse_interval(schedule.every)
    else:
        trigger = CronTrigger.from_crontab(schedule.cron or "", timezone=ZoneInfo(schedule.timezone))
        first = trigger.get_next_fire_time(None, datetime.now(ZoneInfo(schedule.timezone)))
        second = trigger.get_next_fire_time(first, first + timedelta(seconds=1)) if first else None
        if first is None or second is None:
            return "set one a little longer than the interval between runs"
        seconds = int((second - first).total_seconds())
    hours = max(1, 2 * seconds // 3600)
    shown = f"{hours // 24} days" if hours % 24 == 0 else f"{hours} hours"
    return f"{shown} (twice the interval between runs, so one missed run does not stop the targeting)"


def _last_delivered(config: Config, name: str) -> str:
    with open_store(config) as store:
        last = store.last_success(name)
    size = size_after(last) if last else None
    return f"{size:,}" if size is not None else "no run yet"
