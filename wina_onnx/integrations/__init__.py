"""Glue for the tools users already run: Optimum (optimum.py), Triton Inference Server
(triton.py), ONNX Runtime GenAI (genai.py) and lm-evaluation-harness (lm_eval.py).

Each module imports its tool lazily, so importing wina_onnx never needs them.
"""
