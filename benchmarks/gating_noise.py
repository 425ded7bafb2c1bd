"""How much rounding-level differences move a gated model: the same models, two CPU set-ups.

Threshold and top-k gating are discontinuous: a feature whose score lies within rounding
error of its threshold is kept by one run and dropped by another, and the dropped or kept
row changes the next layers' inputs by far more than rounding, so more features flip
downstream. This script measures that noise floor on the CPU alone: each model runs on
the same windows with ONNX Runtime's graph optimizations off ("off") and on ("all":
fused kernels, other rounding), compared by run_pairs.py (perplexities, KL(off || all),
top-1 agreement). A dense model should agree to rounding; a gated one shows what any
change of rounding, such as another execution provider, can do to it.

    python benchmarks/gating_noise.py dense=DIR/model.onnx wina=OUT/model.onnx \\
        --data ../shared/data/wikitext-2/wiki.test.raw --windows 8 --out results.json
"""

from __future__ import annotations

import sys

import run_pairs


def main(argv=None) -> int:
    args = run_pairs.parse_args(__doc__.splitlines()[0], argv)
    from wina_onnx.runtime.session import CausalLM

    def optimizations(level):
        return lambda path: (CausalLM.from_path(path, threads=args.threads, optimization_level=level), None)

    run_pairs.compare(args, ("off", "all"), optimizations("disable"), optimizations("all"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
