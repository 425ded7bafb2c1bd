"""Perplexity of the same models on ONNX Runtime's CPU and CUDA execution providers.

For each model (dense and WINA-optimized alike), the same windows of --data run once on
the CPU provider and once on the CUDA provider (CPU fallback disabled, so every node,
WinaSparseMatMul included, runs on the GPU; if that fails, the reason is recorded under
cpu_fallback and the model runs with fallback), and the script reports both perplexities,
their relative difference, KL(CPU || CUDA) of the next-token distributions and the top-1
agreement of the two (run_pairs.py). Needs onnxruntime-gpu and a GPU; WINA_ONNX_LIBRARY
may point at a CUDA build of the op library.

    python benchmarks/ppl_cuda_cpu.py dense=DIR/model.onnx wina=OUT/model.onnx \\
        --data ../shared/data/wikitext-2/wiki.test.raw --windows 8 --out results.json
"""

from __future__ import annotations

import sys

import run_pairs


def main(argv=None) -> int:
    args = run_pairs.parse_args(__doc__.splitlines()[0], argv)
    try:
        import torch  # noqa: F401  (loads the CUDA libraries the CUDA provider needs)
    except ImportError:
        pass
    import onnxruntime as ort

    from wina_onnx.runtime.session import CausalLM

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        sys.exit("onnxruntime has no CUDAExecutionProvider: install onnxruntime-gpu on a machine with a GPU")

    def on_cpu(path):
        return CausalLM.from_path(path, threads=args.threads), None

    def on_cuda(path):
        try:  # every node on the GPU; if some op has no CUDA kernel, say so and let it fall back
            lm = CausalLM.from_path(path, providers=["CUDAExecutionProvider"],
                                    config={"session.disable_cpu_ep_fallback": "1"})
            fallback = None
        except Exception as exc:  # noqa: BLE001
            fallback = str(exc).splitlines()[0][:300]
            lm = CausalLM.from_path(path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        assert lm.session.get_providers()[0] == "CUDAExecutionProvider", lm.session.get_providers()
        return lm, {"cpu_fallback": fallback}

    run_pairs.compare(args, ("cpu", "cuda"), on_cpu, on_cuda)
    return 0


if __name__ == "__main__":
    sys.exit(main())
