"""Step 5 of the pipeline: quality, speed and what a gated model does, against the dense model.

    perplexity      sliding-window perplexity over a token stream
    metrics         distance of a sparse model's next-token distributions from the dense model's
    bench           prefill and per-token decode latency of several models, interleaved
    sparsity_probe  the sparsity a gated model actually applies on some text
    summary         one row per gated op (`wina-onnx inspect`)
    report          PNG plots of results (`wina-onnx report`)
"""
