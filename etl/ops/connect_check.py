"""`validate --connect`: the configuration's queries checked against their warehouses, reading no row."""

from __future__ import annotations

from etl.config import AudienceActivation, Config
from etl.errors import ConfigError
from etl.extract import check_queries
from etl.transform.audience import AudienceCleaner


def check_queries_connected(config: Config) -> None:
    """`validate --connect`: each warehouse plans each query without reading a row, and an audience's
    identifier column is found among the columns it would return, as a run would look for it."""
    def choose(name: str, columns: list[str]) -> None:
        activation = config.activations[name]
        if isinstance(activation, AudienceActivation):  # the identifier column must be found by name
            AudienceCleaner(activation.identifier, column=activation.identifier_column,
                            where=config.query_where(name)).identifier_column(columns)

    problems = check_queries(config, choose)
    if problems:
        raise ConfigError(problems, source=config.source)
