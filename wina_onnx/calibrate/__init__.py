"""Step 2 of the pipeline: how much each projection may skip, measured in ONNX Runtime.

    calibration  score distributions at every gated MatMul (thresholds from quantiles)
    greedy       TEAL's greedy per-matrix allocation from the dense model's error curves
                 (a passes.allocation.Allocation: the sparsity per MatMul the gate pass reads)
    refine       thresholds re-read inside the gated model (closed loop)
    instrument   a model run over windows of text with chosen nodes' inputs exposed (used by
                 calibration, refine and evaluation.sparsity_probe)
"""
