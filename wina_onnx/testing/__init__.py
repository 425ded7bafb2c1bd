"""Model builders for tests and benchmarks only (not used by the pass, the runtime or the CLI).

fused_llama: a Llama decoder written directly as ONNX Runtime's fused graph (float16 or
the GenAI builder's CUDA int4 layout), random weights, at any size.
tiny_llama: the tests' tiny SmolLM2-shaped random Llama, in Hugging Face format.
"""
