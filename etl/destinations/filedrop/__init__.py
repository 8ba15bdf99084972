"""Putting audience files in place at a file transfer location, atomically, over local disk, SFTP or FTPS.

The deliverers are imported when first named: a run delivering to local disk never loads paramiko
or ftplib.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from etl.destinations.filedrop.base import DeliveredFile, Deliverer
    from etl.destinations.filedrop.ftps import FtpsDeliverer
    from etl.destinations.filedrop.local import LocalDeliverer
    from etl.destinations.filedrop.sftp import SftpDeliverer

#: where each public name lives
_MODULES = {"DeliveredFile": "base", "Deliverer": "base", "FtpsDeliverer": "ftps", "LocalDeliverer": "local",
            "SftpDeliverer": "sftp"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"etl.destinations.filedrop.{_MODULES[name]}"), name)


__all__ = ["DeliveredFile", "Deliverer", "FtpsDeliverer", "LocalDeliverer", "SftpDeliverer"]
