"""The serving path: one classification service (:mod:`space.serving.service` reads it top to bottom:
admit, decode, preprocess, batch, predict, score), its parameters, admission control and explanations.
Imports backends and the model layer, never the web.
"""
