"""The streaming side: the producer process, the shared-memory ring buffer, the run loop that
feeds the sinks, and its status lines. Nothing here imports torch or the pipeline; the producer
imports its chunk source by name ("module:function") inside its own process.
"""
