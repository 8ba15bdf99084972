"""A retired activation's files: every name it owned at a location it delivered to, and no other activation's.

The activation may have left the configuration, so the location and pattern are the ones recorded with its
deliveries (`Target`); the credentials are a configured destination's that reaches the same location. A name
another configured activation can write there is kept even if the retired pattern owns it too: the two were
never checked against each other once the retired one left the configuration.
"""

from __future__ import annotations

from pathlib import Path

from etl.config import AudienceActivation, Config, FileLocation, LocalLocation
from etl.destinations.base import Target
from etl.destinations.filedrop.factory import open_deliverer
from etl.errors import ConfigError
from etl.files import name_matcher
from etl.files.names import Claim, owned_names, overlaps
from etl.runtime.runs import RunContext


class FilesRetirement:
    """The retired activation's audience files, manifests and temporary files at one location."""

    def __init__(self, config: Config, name: str, target: Target) -> None:
        self.target = target
        self._config = config
        self._location = _location_of(config, target)
        sharing = _sharing(config, name, target)
        mine, theirs = name_matcher(target.pattern), [owned_names(claim.pattern, fold=True) for claim in sharing]
        self._is_ours = lambda file: mine(file) and not any(other.matches(file) for other in theirs)
        self.notes = [f"kept at {target.shown}: names [activations.{claim.activation}] ({claim.pattern!r}) can also "
                      f"write, e.g. {example}" for claim, example in sharing.items()]

    def pending(self) -> list[str]:
        with open_deliverer(self._config, self._location) as deliverer:
            return self._shown(deliverer.owned(self._is_ours))

    def retire(self, context: RunContext) -> list[str]:
        with open_deliverer(self._config, self._location) as deliverer:
            context.fence()
            return self._shown(deliverer.remove_owned(self._is_ours))

    def _shown(self, names: list[str]) -> list[str]:
        return [f"{self.target.shown.rstrip('/')}/{name}" for name in names]


def _location_of(config: Config, target: Target) -> FileLocation:
    """The location as configured today (its credentials), found by what it is, not by its destination's name."""
    named = config.destinations.get(target.destination)
    for destination in [named, *config.destinations.values()]:
        location = destination.file_location if destination is not None else None
        if location is not None and location.identity(config.base_dir)[0] == target.where:
            return location
    if target.where[0] == "local":  # a directory of this machine needs no credentials
        return LocalLocation(type="local", path=Path(target.where[1]))
    raise ConfigError([(f"[destinations.{target.destination}] files",
                        f"no destination reaches {target.shown} any more, where the retired activation's files "
                        f"(named {target.pattern!r}) were delivered: add a destination with that location and its "
                        "credentials, then retire again (or remove those files there by hand)")])


def _sharing(config: Config, name: str, target: Target) -> dict[Claim, str]:
    """Configured activations whose names at the location can coincide with the retired pattern's, with an example."""
    retired = Claim(name, target.pattern, target.where, target.shown, target.destination)
    claims = [retired]
    for other, activation in config.activations.items():
        if other == name or not isinstance(activation, AudienceActivation) or not activation.delivers_file:
            continue
        location = config.destinations[activation.destination].file_location
        if location is None:
            continue
        identity, shown = location.identity(config.base_dir)
        claims.append(Claim(other, config.file_name_pattern(other), identity, shown, activation.destination))
    return {second if first is retired else first: example
            for first, second, example in overlaps(claims) if retired in (first, second)}
