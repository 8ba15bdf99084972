"""The transform stage: warehouse rows made into what a destination is sent.

audience.py cleans and deduplicates audience identifiers (dedupe.py holds the stream-wide set);
mapping.py maps rows to a destination's fields through the value rules of etl.values; members.py
and delta.py keep the snapshots that turn a full extract into what changed.
"""
