"""Putting audience files in place at a file transfer location, atomically, over local disk, SFTP or FTPS."""

from etl.delivery.base import DeliveredFile, Deliverer
from etl.delivery.ftps import FtpsDeliverer
from etl.delivery.local import LocalDeliverer
from etl.delivery.sftp import SftpDeliverer

__all__ = ["DeliveredFile", "Deliverer", "FtpsDeliverer", "LocalDeliverer", "SftpDeliverer"]
