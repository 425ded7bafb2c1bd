"""Step 1 of the pipeline: a model as ONNX.

    optimum_export  a Hugging Face or GGUF causal LM through Optimum (text-generation-with-past)
    gguf_int4       a GGUF model's own 4-bit codes as ONNX Runtime's MatMulNBits (export --int4)
    quantize        a float model's projections as MatMulNBits through ORT's quantizer (--quantize int4)
"""
