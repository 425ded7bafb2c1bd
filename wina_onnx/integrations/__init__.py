"""Glue for the tools users already run: Optimum (optimum.py) and Triton Inference Server (triton.py).

Each module imports its tool lazily, so importing wina_onnx never needs them.
"""
