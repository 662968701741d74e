"""Prometheus text for many streams: each stream's own metrics with a `stream="ID"` label, merged.

The text format wants every sample of a metric family together, after its one HELP and TYPE line,
so the streams' texts are parsed into families and written out family by family; the label goes
first in each sample's label set. The service adds its own families: streams by state, and per
stream whether it serves and how often it was restarted.
"""

from __future__ import annotations

import re
from typing import Mapping

__all__ = ["merge_metrics", "service_metrics", "add_label"]

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?(\s.*)\Z")
_SUFFIXES = ("_total", "_created", "_bucket", "_count", "_sum", "_info")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def add_label(line: str, name: str, value: str) -> str:
    """One sample line with `name="value"` first among its labels."""
    found = _SAMPLE.match(line)
    if not found:
        return line
    metric, labels, rest = found.groups()
    inner = labels[1:-1] if labels else ""
    label = f'{name}="{_escape(value)}"'
    return f"{metric}{{{label}{',' + inner if inner else ''}}}{rest}"


def _family_of(sample: str, families: Mapping[str, dict]) -> str:
    for suffix in ("",) + _SUFFIXES:
        if suffix and sample.endswith(suffix) and sample[: -len(suffix)] in families:
            return sample[: -len(suffix)]
        if not suffix and sample in families:
            return sample
    return sample


def merge_metrics(texts: Mapping[str, str]) -> str:
    """The streams' exposition texts ({stream id: text}) as one text, labelled by stream."""
    families: dict[str, dict] = {}
    for stream_id, text in texts.items():
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                parts = line.split(" ", 3)
                if len(parts) == 4:
                    fam = families.setdefault(parts[2], {"help": None, "type": None, "samples": []})
                    fam["help" if parts[1] == "HELP" else "type"] = fam["help" if parts[1] == "HELP" else "type"] or line
                continue
            if not line.strip() or line.startswith("#"):
                continue
            found = _SAMPLE.match(line)
            if not found:
                continue
            name = _family_of(found.group(1), families)
            fam = families.setdefault(name, {"help": None, "type": None, "samples": []})
            fam["samples"].append(add_label(line, "stream", stream_id))
    out = []
    for fam in families.values():
        out += [x for x in (fam["help"], fam["type"]) if x] + fam["samples"]
    return "\n".join(out) + ("\n" if out else "")


def service_metrics(streams: list[dict]) -> str:
    """The service's own families from the streams' infos."""
    states: dict[str, int] = {}
    for info in streams:
        states[info.get("state", "?")] = states.get(info.get("state", "?"), 0) + 1
    lines = ["# HELP continuityseq_cluster_streams Streams of this service by state.",
             "# TYPE continuityseq_cluster_streams gauge"]
    lines += [f'continuityseq_cluster_streams{{state="{_escape(s)}"}} {n}' for s, n in sorted(states.items())]
    lines += ["# HELP continuityseq_cluster_stream_up 1 while the stream serves, else 0.",
              "# TYPE continuityseq_cluster_stream_up gauge"]
    lines += [f'continuityseq_cluster_stream_up{{stream="{_escape(i["id"])}"}} {int(i.get("state") == "running")}'
              for i in streams]
    lines += ["# HELP continuityseq_cluster_stream_restarts_total Times the stream was restarted after its "
              "process died.", "# TYPE continuityseq_cluster_stream_restarts_total counter"]
    lines += [f'continuityseq_cluster_stream_restarts_total{{stream="{_escape(i["id"])}"}} {int(i.get("restarts") or 0)}'
              for i in streams]
    return "\n".join(lines) + "\n"
