"""Offline model builds (training and ONNX export). Never imported inside Triton."""
