"""The web layer: FastAPI routes, the Gradio page, security, request logs and ``/metrics``.

The top of the serving process: it imports the serving path (:mod:`space.serving`), never the reverse.
"""
