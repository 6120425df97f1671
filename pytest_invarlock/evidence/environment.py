"""Who produced a pack's records: hosts, devices, drivers and package versions, as the records say.

A pack describes the machines that ran its items, never the one that packed them (a login node
packing a cluster's run knows nothing about the GPUs). Records produced alike are grouped, each group
naming its items; a field a record does not carry is "unknown", never filled in from the packing host.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

UNKNOWN = "unknown"
FIELDS = ("host", "device_name", "driver", "python")  # plain values a record carries about where it ran
VERSIONS = "versions"  # {package: version} of the process that produced the record


def _text(value: Any) -> str:
    return UNKNOWN if value is None or value == "" else str(value)


def producer(record: Mapping[str, Any]) -> dict[str, Any]:
    """Where one record says it was produced (its `environment` block, written by the worker)."""
    where = record.get("environment")
    where = where if isinstance(where, Mapping) else {}
    versions = where.get(VERSIONS)
    return {
        **{name: _text(where.get(name)) for name in FIELDS},
        VERSIONS: {str(k): _text(v) for k, v in sorted(versions.items())} if isinstance(versions, Mapping) else UNKNOWN,
    }


def producers(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """metadata/environment.json: the distinct producers, each with the items it produced."""
    groups: dict[str, dict[str, Any]] = {}
    for record in records:
        who = producer(record)
        group = groups.setdefault(json.dumps(who, sort_keys=True), {**who, "items": []})
        group["items"].append(str(record.get("param_id")))
    listed = sorted(groups.values(), key=lambda g: (-len(g["items"]), json.dumps(g, sort_keys=True)))
    for group in listed:
        group["items"].sort()
    return {
        "description": "where the packed records were produced, as each record says (not the host that packed them)",
        "producers": listed,
        "hosts": sorted({g["host"] for g in listed}),
    }


def package_version(environment: Mapping[str, Any], package: str) -> str:
    """One package's version across all producers: the version, several joined by ', ', or "unknown"."""
    found = {g[VERSIONS].get(package, UNKNOWN) if isinstance(g[VERSIONS], Mapping) else UNKNOWN for g in environment["producers"]}
    return ", ".join(sorted(found)) or UNKNOWN
