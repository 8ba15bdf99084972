"""Loading and validating ``schedules.toml``.

The file is read in three passes so that a user sees *every* problem at once, each with its
location: TOML syntax, then ``${VAR}`` interpolation and secret rules over the raw tree, then the
typed models (pydantic, unknown keys forbidden) and the cross-references between tables (SQL files,
warehouses, destinations, schedules, file names). Secrets never come from literals in the file:
they come from ``${ENV_VAR}`` (or ``ENV_VAR_FILE``, a mounted secret file) or from a ``*_file`` key.
"""

from etl.config.destinations import (ACTITO_ENVIRONMENTS, OPENFIELD_ROUTES, OPENFIELD_SANDBOX_PASSWORD, AnyDestination, Destination, FileLocation,
                                     FtpsLocation, LocalLocation, OpenFieldDestination, OpenFieldRoutes, SftpLocation)
from etl.config.load import config_path, load_config
from etl.config.model import (Activation, ActivationBase, Alerts, AudienceActivation, Config, EmailAlerts, FileOptions,
                              ImportActivationBase, InteractionsActivation, Metrics, ProfilesActivation, Schedule,
                              Settings, SubscriptionsActivation, Warehouse, parse_interval)

__all__ = [
    "ACTITO_ENVIRONMENTS", "OPENFIELD_ROUTES", "OPENFIELD_SANDBOX_PASSWORD", "Activation", "ActivationBase", "Alerts", "AnyDestination",
    "AudienceActivation", "Config", "Destination", "EmailAlerts", "FileLocation", "FileOptions", "FtpsLocation",
    "ImportActivationBase", "InteractionsActivation", "LocalLocation", "Metrics", "OpenFieldDestination",
    "OpenFieldRoutes", "ProfilesActivation", "Schedule", "Settings", "SftpLocation", "SubscriptionsActivation",
    "Warehouse", "config_path", "load_config", "parse_interval",
]
