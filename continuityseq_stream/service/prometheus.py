"""/metrics: the service's figures in Prometheus' text format (prometheus-client).

A registry of its own (nothing global). Most figures are read when scraped, from the state's cached
runtime status, the tap, the hub and the viewers (`ServiceCollector`); the two distributions are
histograms fed by the per-chunk events: seconds between chunks, and the seam score.

    continuityseq_chunks_total                 chunks made by the producer
    continuityseq_frames_made_total            frames made by the producer
    continuityseq_frames_delivered_total{output,kind}   frames written per sink (kind="sink") and
                                               sent per WebRTC viewer (kind="viewer")
    continuityseq_frames_skipped_total{output,kind}     frames a latest reader skipped
    continuityseq_reconnects_total{output}     reconnects of sinks that reconnect (RTMP/ffmpeg)
    continuityseq_ring_fill_frames, continuityseq_ring_slots
    continuityseq_generation_fps, continuityseq_output_fps
    continuityseq_chunk_seconds                histogram: seconds between consecutive chunks
    continuityseq_seam_score                   histogram; continuityseq_last_seam_score: gauge
    continuityseq_rss_bytes{process}           resident memory of "main" and "producer"
    continuityseq_viewers, continuityseq_paused, continuityseq_healthy
    continuityseq_commands_total{surface,result}   control commands per surface, ok or error
"""

from __future__ import annotations

import os
from typing import Iterator

import psutil
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .state import ServiceState

__all__ = ["ServiceMetrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CHUNK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
SEAM_BUCKETS = (0.5, 0.8, 1.0, 1.25, 1.5, 2, 3, 5, 10)


class ServiceCollector(Collector):
    """Reads the current figures from the state at scrape time."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        status = self.state.status()
        yield _counter("continuityseq_chunks", "Chunks made by the producer.", status.get("chunks_made", 0))
        yield _counter("continuityseq_frames_made", "Frames made by the producer.", status.get("frames_made", 0))
        yield from self._outputs(status)
        yield _gauge("continuityseq_ring_fill_frames", "Frames in the shared-memory ring.", status.get("ring_fill", 0))
        yield _gauge("continuityseq_ring_slots", "Frames the ring holds.", status.get("ring_slots", 0))
        yield _gauge("continuityseq_generation_fps", "Frames generated per second.", status.get("gen_fps", 0.0))
        yield _gauge("continuityseq_output_fps", "Frames per second of the output.", status.get("out_fps", 0.0))
        seam = (status.get("seam") or {}).get("seam_score")
        yield _gauge("continuityseq_last_seam_score", "Seam score of the last chunk (NaN before one).",
                     float("nan") if seam is None else seam)
        rss = GaugeMetricFamily("continuityseq_rss_bytes", "Resident memory per process.", labels=["process"])
        rss.add_metric(["main"], psutil.Process(os.getpid()).memory_info().rss)
        producer = self.state.producer()
        if producer is not None:
            try:
                rss.add_metric(["producer"], producer.memory_info().rss)
            except psutil.Error:
                pass
        yield rss
        yield _gauge("continuityseq_viewers", "WebRTC viewers connected.", status.get("viewers", 0))
        yield _gauge("continuityseq_paused", "1 while a pause holds the producer.", 1 if status.get("paused") else 0)
        yield _gauge("continuityseq_healthy", "1 while /healthz answers healthy.", 1 if status["health"]["healthy"] else 0)
        commands = CounterMetricFamily("continuityseq_commands", "Control commands per surface.",
                                       labels=["surface", "result"])
        for (surface, ok), n in sorted(self.state.surface_counts.items()):
            commands.add_metric([surface, "ok" if ok else "error"], n)
        yield commands

    def _outputs(self, status: dict) -> Iterator[Metric]:
        delivered = CounterMetricFamily("continuityseq_frames_delivered", "Frames delivered per output.",
                                        labels=["output", "kind"])
        skipped = CounterMetricFamily("continuityseq_frames_skipped", "Frames skipped per output.",
                                      labels=["output", "kind"])
        reconnects = CounterMetricFamily("continuityseq_reconnects", "Reconnects per sink.", labels=["output"])
        for sink in status.get("sinks", []):
            delivered.add_metric([sink["name"], "sink"], sink.get("frames", 0))
            skipped.add_metric([sink["name"], "sink"], sink.get("skipped", 0))
            if "reconnects" in sink:
                reconnects.add_metric([sink["name"]], sink["reconnects"])
        for viewer in list(self.state.viewers.values()):
            delivered.add_metric([viewer.name, "viewer"], viewer.sent)
            skipped.add_metric([viewer.name, "viewer"], viewer.skipped)
        yield delivered
        yield skipped
        yield reconnects


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class ServiceMetrics:
    """The registry behind /metrics; subscribe `on_event` to the event bus."""

    def __init__(self, state: ServiceState) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ServiceCollector(state))
        self.chunk_seconds = Histogram("continuityseq_chunk_seconds", "Seconds between consecutive chunks.",
                                       buckets=CHUNK_BUCKETS, registry=self.registry)
        self.seam = Histogram("continuityseq_seam_score", "Frame difference across a chunk boundary / inside.",
                              buckets=SEAM_BUCKETS, registry=self.registry)

    def on_event(self, event: dict) -> None:
        if event.get("event") == "chunk" and event.get("interval") is not None:
            self.chunk_seconds.observe(event["interval"])
        elif event.get("event") == "seam" and event.get("seam_score") is not None:
            self.seam.observe(event["seam_score"])

    def render(self) -> bytes:
        return generate_latest(self.registry)
