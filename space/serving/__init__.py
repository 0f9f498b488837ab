"""The serving path: decode, preprocess, batch, predict, score (:mod:`space.serving.pipeline` reads it top
to bottom), with admission control and explanations. Imports backends and the model layer, never the web.
"""
