"""An audience file for an Actito External Target List, put in place atomically at its file transfer location."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import SecretStr

from etl.config import AudienceActivation, Config, Destination, FileLocation, FtpsLocation, LocalLocation, SftpLocation
from etl.destinations.base import Target, written_locally
from etl.destinations.filedrop.base import Deliverer
from etl.errors import FileTooLarge
from etl.files import WrittenFile, name_matcher
from etl.runtime.results import Delivery
from etl.runtime.runs import RunContext
from etl.transform.members import MemberDiff, MemberSnapshot

#: Actito refuses files bigger than this
ACTITO_MAX_BYTES = 100_000_000


class FileDrop:
    """An audience as one file (and its manifest) at the destination's file transfer location."""

    wants_members = False

    def __init__(self, config: Config, name: str) -> None:
        self._name = name
        self._activation = config.activation_of(name, AudienceActivation)
        location = config.destination_of(self._activation.destination, Destination).files
        assert location is not None  # validated: an audience destination has a files location
        self._location = location
        self._base_dir = config.base_dir
        self._pattern = config.file_name_pattern(name)

    def target(self) -> Target:
        identity, shown = self._location.identity(self._base_dir)
        return Target("files", self._activation.destination, identity, shown, self._pattern)

    def accept(self, written: WrittenFile) -> None:
        """Too big is refused, never split: Actito takes the last file as the whole audience, so parts would replace."""
        limit, name = self._activation.file.max_bytes, self._name
        if written.size <= limit:
            return
        raise FileTooLarge(
            f"not delivered: the audience file is {written.size:,} bytes ({written.rows:,} rows), over "
            f"file.max_bytes = {limit:,}; an audience is always delivered as one file (Actito reads the last file "
            f"as the whole audience) and Actito refuses files over {ACTITO_MAX_BYTES:,} bytes (100 MB)",
            where=f"[activations.{name}] file.max_bytes",
            hint=_too_large_hint(name, self._activation.file.compression, limit),
        )

    def deliver(self, context: RunContext, files: list[Path], snapshot: MemberSnapshot, diff: MemberDiff) -> MemberDiff:
        """Deliver, then replace the snapshot: after a failed delivery the next run compares with the old members."""
        is_ours = name_matcher(self._pattern)  # exactly this activation's names
        context.details["target"] = self.target().as_details()  # before any file lands: what retire relies on
        with context.step("deliver"), open_deliverer(context.config, self._location) as deliverer:
            context.fence()  # removals and renames from here on: only while the activation is still ours
            leftovers = deliverer.discard_leftovers(is_ours, context.run_id)  # of a run killed mid-upload
            if leftovers:
                context.details["leftovers_removed"] = leftovers
            delivered = deliverer.deliver(files, context.run_id, all_uploaded=lambda: context.checkpoint("delivered"))
            context.details["delivered"] = [{"name": d.name, "bytes": d.size, "location": d.location}
                                            for d in delivered]
            context.checkpoint("confirmed")
            # only now, with the new files in place: the location never lacks a complete audience
            context.details["stale_removed"] = deliverer.remove_stale(is_ours, [d.name for d in delivered])
            if self._location.retention_days:
                context.fence()
                cutoff = datetime.now(UTC) - timedelta(days=self._location.retention_days)
                context.details["retention_removed"] = deliverer.apply_retention(is_ours, cutoff)
        context.fence()
        snapshot.replace(diff)
        return diff

    def describe(self, context: RunContext) -> Delivery:
        delivered = context.details.get("delivered", [])
        return Delivery("filedrop", str(delivered[0]["location"]), "") if delivered else \
            written_locally("filedrop", context)

    def close(self) -> None:
        """A deliverer is connected only while it delivers."""


def _plain(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


def _resolved(config: Config, path: Path | None) -> Path | None:
    return config.path(path.expanduser()) if path is not None else None


def open_deliverer(config: Config, location: FileLocation) -> Deliverer:
    # each kind's module is imported when used: a local delivery never loads paramiko
    if isinstance(location, LocalLocation):
        from etl.destinations.filedrop.local import LocalDeliverer

        return LocalDeliverer(config.path(location.path))
    if isinstance(location, SftpLocation):
        from etl.destinations.filedrop.sftp import SftpDeliverer

        return SftpDeliverer(
            host=location.host,
            port=location.port,
            username=location.username,
            password=_plain(location.password),
            key_file=_resolved(config, location.key_file),
            key_passphrase=_plain(location.key_passphrase),
            known_hosts=_resolved(config, location.known_hosts),
            verify_host_key=location.verify_host_key,
            remote_dir=location.remote_dir,
            timeout=location.timeout,
        )
    if isinstance(location, FtpsLocation):
        from etl.destinations.filedrop.ftps import FtpsDeliverer

        return FtpsDeliverer(
            host=location.host,
            port=location.port,
            username=location.username,
            password=location.password.get_secret_value(),
            remote_dir=location.remote_dir,
            ca_file=_resolved(config, location.ca_file),
            verify_tls=location.verify_tls,
            timeout=location.timeout,
        )
    raise AssertionError(f"unhandled location {location!r}")


def _too_large_hint(name: str, compression: str, limit: int) -> str:
    """What shrinks the file: compression first; a compressed audience this large has outgrown one file."""
    if compression == "none":
        way = f'set compression = "gzip" in [activations.{name}.file] (identifiers shrink several times)'
    else:
        way = (f'the file is already compressed: deliver it as delivery = "membership" in [activations.{name}] '
               "(only who entered and left is imported), or split the audience over several activations")
    if limit < ACTITO_MAX_BYTES:
        way += f" or raise file.max_bytes (at most {ACTITO_MAX_BYTES:,})"
    return way + "; the previous delivery is still in place"
