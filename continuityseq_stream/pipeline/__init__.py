"""The generation side: the pipeline (prompt encoding, denoising, decoding, `stream()`), the
conditioning selectors, where the first frame comes from, and the chunk source the producer runs.

This is the only layer (with models/ and demo/) that imports torch; the runtime reaches it only
through the producer's "module:function" seam (see runtime/producer.py).
"""
