"""Step 4 of the pipeline: running a (gated) causal LM with ONNX Runtime.

    session        sessions, the KV cache loop and the tokenizer (CausalLM, CudaCausalLM)
    static_decode  a fixed-length KV buffer bound once and replayed as CUDA graphs
    generate       greedy generation
    model_facts    what a model's folder says about it (sizes, token ids, KV cache names)

The op library itself is found and registered by wina_onnx.library.
"""
