"""The names `etl` offers to code and tests that drive runs themselves: pinned, so that removing or
renaming one is a deliberate change, and resolved lazily, so that `import etl` stays cheap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import etl

REPO = Path(__file__).resolve().parent.parent

STABLE_NAMES = [
    "__version__",
    "Config", "load_config",
    "AudienceSyncError", "Fatal", "Retriable", "ConfigError", "UsageError", "StateError", "LockBusy", "LeaseLost",
    "StateStore", "RunRecord", "open_store",
    "RunStatus", "RunResults", "Delivery",
    "execute", "RunContext", "RunOutcome", "JobBody", "Finisher",
]


def test_the_public_names_are_pinned() -> None:
    assert etl.__all__ == STABLE_NAMES


@pytest.mark.parametrize("name", STABLE_NAMES)
def test_each_public_name_resolves(name: str) -> None:
    assert getattr(etl, name) is not None


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(etl, "no_such_name")


def test_importing_etl_loads_no_heavy_library() -> None:
    probe = ("import sys, etl\n"
             "print(sorted(m for m in ('sqlalchemy', 'pyarrow', 'numpy', 'pandas', 'pydantic', 'etl.config', "
             "'etl.runtime.runs') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_run_statuses_and_deliveries_are_the_ledger_s_values() -> None:
    assert [str(status) for status in etl.RunStatus] == ["running", "succeeded", "failed", "interrupted", "locked",
                                                       "skipped"]
    delivery = etl.Delivery("actito", "Actito table 'orders'", "3 changed rows sent, 0 unchanged")
    assert etl.Delivery.from_details(delivery.as_details()) == delivery
    assert etl.Delivery.from_details({"destination": "actito"}) is None


def test_run_results_are_the_columns_a_job_set() -> None:
    results = etl.RunResults.from_columns({"rows_extracted": 5, "rows_delivered": 0, "file_name": None, "other": 1})
    assert results.rows_extracted == 5 and results.rows_rejected is None
    assert dict(results) == {"rows_extracted": 5, "rows_delivered": 0}
    assert results.get("rows_rejected") is None and results.get("file_name", "none") == "none"
    assert results == {"rows_extracted": 5, "rows_delivered": 0} and etl.RunResults() == {}


def test_a_run_records_its_delivery_and_tells_its_finishers(tmp_path: Path) -> None:
    from etl.ops.run_output import summary
    from etl.config import Settings

    config = etl.Config(settings=Settings(state_dir=tmp_path / "state"), warehouses={}, destinations={},
                        activations={}, base_dir=tmp_path)
    delivery = etl.Delivery("actito", "Actito table 'orders'", "3 changed rows sent, 0 unchanged")
    finished: list[etl.RunOutcome] = []

    def body(context: etl.RunContext) -> None:
        context.results.update(rows_extracted=3, rows_delivered=3)
        context.delivery = delivery

    with etl.StateStore.in_directory(config.state_dir) as store:
        outcome = etl.execute(config, store, "orders", "interactions", body,
                              finishers=[lambda config, store, outcome: finished.append(outcome)])
        (record,) = store.runs("orders")
    assert finished == [outcome] and outcome.status is etl.RunStatus.SUCCEEDED
    assert outcome.results == {"rows_extracted": 3, "rows_delivered": 3} and outcome.delivery == delivery
    assert (record.status, record.rows_delivered, record.details["delivery"]) == ("succeeded", 3, delivery.as_details())
    assert "✓ orders: Actito table 'orders': 3 changed rows sent, 0 unchanged  (rejects: None)" in summary([outcome])
