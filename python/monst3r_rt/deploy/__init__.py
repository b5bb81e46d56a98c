"""Deployment: ONNX export of the encoder and decoder graphs, engines, and the backends that run
them (PyTorch, ONNX Runtime, TensorRT) behind one interface."""
