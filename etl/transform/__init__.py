"""The transform stage: audience cleaning (audience.py, dedupe.py), rows mapped to a destination's
fields (mapping.py), and the snapshots that turn a full extract into what changed (members.py, delta.py)."""
