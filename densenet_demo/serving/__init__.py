"""Predictions: the ``Predictor`` (a model built once per model and weights, top-k, Grad-CAM) in ``predict``, and
exports for use elsewhere (ONNX) in ``export``."""
