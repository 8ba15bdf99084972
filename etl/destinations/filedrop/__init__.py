"""Putting audience files in place at a file transfer location, atomically, over local disk, SFTP or FTPS.

Each kind lives in its own module, imported when a location of that kind is used: a run delivering
to local disk never loads paramiko or ftplib.
"""
