"""Inference backends: one module per runtime behind the one small :class:`Backend` protocol, the registry
that declares them all (:mod:`space.backends.registry`), and the choice of which one serves
(:mod:`space.backends.choice`).

Runtimes are imported only by the module that serves them, and that module only when chosen: a server
that runs ONNX Runtime never imports torch (:mod:`space.backends.pytorch` is the one module that does).
"""

from space.backends.registry import Backend

__all__ = ["Backend"]
