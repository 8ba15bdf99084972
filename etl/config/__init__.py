"""Loading and validating ``schedules.toml``; secrets come from the environment or files, never literals."""

from etl.config.destinations import (ACTITO_ENVIRONMENTS, ActitoWire, OPENFIELD_ROUTES, OPENFIELD_SANDBOX_PASSWORD, AnyDestination, Destination, FileLocation,
                                     FtpsLocation, LocalLocation, OpenFieldDestination, OpenFieldRoutes, SftpLocation)
from etl.config.load import config_path, load_config
from etl.config.model import (Activation, ActivationBase, Alerts, AudienceActivation, Config, EmailAlerts, FileOptions,
                              ImportActivationBase, InteractionsActivation, Metrics, ProfilesActivation, Schedule,
                              Settings, SubscriptionsActivation, Warehouse, parse_interval)

__all__ = [
    "ACTITO_ENVIRONMENTS", "ActitoWire", "OPENFIELD_ROUTES", "OPENFIELD_SANDBOX_PASSWORD", "Activation", "ActivationBase", "Alerts", "AnyDestination",
    "AudienceActivation", "Config", "Destination", "EmailAlerts", "FileLocation", "FileOptions", "FtpsLocation",
    "ImportActivationBase", "InteractionsActivation", "LocalLocation", "Metrics", "OpenFieldDestination",
    "OpenFieldRoutes", "ProfilesActivation", "Schedule", "Settings", "SftpLocation", "SubscriptionsActivation",
    "Warehouse", "config_path", "load_config", "parse_interval",
]
