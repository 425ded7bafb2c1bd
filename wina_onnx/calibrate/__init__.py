"""Step 2 of the pipeline: how much each projection may skip, measured in ONNX Runtime.

    calibration  score distributions at every gated MatMul (thresholds from quantiles)
    allocation   per-matrix sparsity: uniform, per-role or from a JSON file
    greedy       TEAL's greedy per-matrix allocation from the dense model's error curves
    refine       thresholds re-read inside the gated model (closed loop)
"""
