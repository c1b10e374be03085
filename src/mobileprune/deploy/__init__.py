"""Deployment: sparse model files for the native engine, ONNX, TorchScript Lite, ExecuTorch, device bundles."""
