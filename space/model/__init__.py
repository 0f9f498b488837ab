"""The model on disk and the machine it runs on: folder resolution, bake manifests, the CPU plan.

The lowest layer: it imports nothing else from ``space`` but settings and errors, so every other layer
(backends, serving, web, bake) may read it.
"""
