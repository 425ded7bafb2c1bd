"""Peers on the GPU: gpt-fast dense and TEAL's own sparse kernels, Llama-3-8B shape, random weights.

What a user would pick instead of WINA in ONNX Runtime, on the shape, prompt and decode
length of benchmarks/e2e_cuda.py (batch 1, --prompt-tokens prompt, --decode-tokens
single-token steps), random float16 weights (normal, std 0.02, norm weights 1):

  gpt-fast dense  TEAL's fork of gpt-fast (gpt-fast/model.py), the decode step compiled
                  as gpt-fast's generate.py does (torch.compile mode "reduce-overhead",
                  fullgraph, Inductor's coordinate-descent tuning; prefill eager);
  TEAL s          the same model monkeypatched as TEAL's generate.py `_load_model` does:
                  column-major weights (w.data = w.data.T.contiguous().T), q/k/v through
                  SparseQKVGEMV and o/gate/up/down through SparseGEMV (TEAL's Triton
                  split-K sparse GEMV, registered as torch.library ops), uniform sparsity s,
                  thresholds at the s quantile of |x| at each projection's input over a
                  prefill of --calib-tokens random token ids through the dense model (TEAL
                  reads the same quantile from its histograms: icdf(0.5 + s/2) of x).

Fair tuning: TEAL's autotune list leaves out the BLOCK_N = 1024 configurations its
source marks as usable for Llama 3; they are added (--no-wide-configs leaves them out),
and each sparsity gets its own autotuning (SPARSITY_BIN = round(100 s), a key of TEAL's
autotuner), where TEAL's generate.py uses bin 0 for every sparsity.

TEAL's code (FasterDecoding/TEAL at 5baaec8: kernels/ and gpt-fast/model.py, MIT and
BSD-3-Clause) is not part of this project: --teal names a folder holding it, which
goes on sys.path as TEAL's scripts arrange it. It needs torch with Triton and msgspec.

Per configuration: two warm-up generations (compilation, autotuning, CUDA graph
capture), then --repeats generations; each times the prefill and the decode steps
(CUDA synchronised before and after), greedy tokens (argmax on the GPU). Median and
IQR; configurations run one after another (the TEAL patch changes the model in place).

  python benchmarks/peers_teal.py --teal path/to/teal --out peers_teal.txt
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

WIDE_BLOCK_MS = (128, 16, 64, 32)  # BLOCK_N = 1024 configs in TEAL's source (commented out there)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teal", required=True, help="folder with TEAL's kernels/ and gpt-fast/model.py")
    p.add_argument("--out", required=True, help="file for the results (command, environment, table, JSON)")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=14336)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--rope-base", type=float, default=500000.0)
    p.add_argument("--sparsities", default="0.5,0.4", help="TEAL sparsities, comma-separated (default 0.5,0.4)")
    p.add_argument("--calib-tokens", type=int, default=512, help="random-token prefill for the thresholds")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-wide-configs", action="store_true", help="TEAL's autotune list as published")
    p.add_argument("--no-dense", action="store_true", help="skip gpt-fast dense")
    p.add_argument("--device", default="cuda", help="cuda (cpu: a functional check of this script only)")
    return p.parse_args(argv)


def log(message: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {message}", flush=True)


def import_teal(folder: Path):
    """TEAL's gpt-fast model module and sparse_gemv kernels, imported from `folder` as TEAL's scripts do."""
    for sub in ("kernels", "", "gpt-fast"):  # ends as [gpt-fast, teal, teal/kernels, ...]
        path = str((folder / sub).resolve())
        if path not in sys.path:
            sys.path.insert(0, path)
    import model as gptfast  # TEAL's gpt-fast/model.py
    from kernels import sparse_gemv

    return gptfast, sparse_gemv


def add_wide_configs(sparse_gemv) -> int:
    """Add TEAL's BLOCK_N = 1024 autotune configs to both kernels (the list may be shared); how many were added."""
    import triton

    added = 0
    for kernel in (sparse_gemv.splitk_sparse_gemv_kernel, sparse_gemv.qkv_kernel):
        configs = getattr(kernel, "configs", None)
        if not isinstance(configs, list):
            log("TEAL's kernels have no autotune list to extend (Triton's Autotuner changed): left as published")
            return 0
        have = {(tuple(sorted(c.kwargs.items())), c.num_warps) for c in configs}
        for block_m in WIDE_BLOCK_MS:
            key = (tuple(sorted({"BLOCK_M": block_m, "BLOCK_N": 1024}.items())), 4)
            if key not in have:
                configs.append(triton.Config({"BLOCK_M": block_m, "BLOCK_N": 1024}, num_warps=4,
                                             pre_hook=sparse_gemv.init_to_zero("Y")))
                have.add(key)
                added += 1
    return added


def chosen_configs(sparse_gemv) -> dict[str, str]:
    """The autotuner's choice per kernel and key, for the record."""
    out = {}
    for name in ("splitk_sparse_gemv_kernel", "qkv_kernel"):
        cache = getattr(getattr(sparse_gemv, name), "cache", {}) or {}
        for key, config in cache.items():
            out[f"{name} {key}"] = str(config)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python3 benchmarks/peers_teal.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    import torch
    import torch._dynamo
    import torch._inductor.config

    # gpt-fast's generate.py settings
    torch._inductor.config.coordinate_descent_tuning = True
    torch._inductor.config.triton.unique_kernel_names = True
    torch._inductor.config.fx_graph_cache = True

    gptfast, sparse_gemv = import_teal(Path(args.teal))
    added = 0 if args.no_wide_configs else add_wide_configs(sparse_gemv)
    device = torch.device(args.device)
    sparsities = [float(s) for s in args.sparsities.split(",") if s]
    total = args.prompt_tokens + args.decode_tokens + 1

    log("building the model (random float16 weights)")
    config = gptfast.ModelArgs(block_size=max(8192, total), n_layer=args.layers, n_head=args.heads,
                               n_local_heads=args.kv_heads, dim=args.hidden, intermediate_size=args.intermediate,
                               vocab_size=args.vocab, rope_base=args.rope_base)
    torch.set_default_dtype(torch.float16)
    with torch.device(device):
        model = gptfast.Transformer(config)
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.02, generator=gen)
            else:
                param.fill_(1.0)
    model = model.eval().requires_grad_(False)
    with torch.device(device):
        model.setup_caches(max_batch_size=1, max_seq_length=total)
    torch.set_default_dtype(torch.float32)

    rng = np.random.default_rng(args.seed)
    prompt = torch.tensor(rng.integers(0, args.vocab, size=(1, args.prompt_tokens)), device=device)
    calib_ids = torch.tensor(rng.integers(0, args.vocab, size=(1, args.calib_tokens)), device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def prefill(x, input_pos):
        logits = model(x, input_pos)
        return torch.argmax(logits[:, -1], dim=-1, keepdim=True).to(torch.int)

    def decode_one_token(x, input_pos):
        logits = model(x, input_pos)
        return torch.argmax(logits[:, -1], dim=-1, keepdim=True).to(torch.int)

    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def math_attention():
            return sdpa_kernel(SDPBackend.MATH)
    except ImportError:  # older torch
        def math_attention():
            return torch.backends.cuda.sdp_kernel(enable_flash=False, enable_mem_efficient=False, enable_math=True)

    def generate(decode) -> tuple[float, float]:
        """One generation: (prefill ms, decode ms per token)."""
        with torch.no_grad():
            sync()
            start = time.perf_counter()
            token = prefill(prompt, torch.arange(0, args.prompt_tokens, device=device))
            sync()
            middle = time.perf_counter()
            input_pos = torch.tensor([args.prompt_tokens], device=device, dtype=torch.int)
            for _ in range(args.decode_tokens):
                with math_attention():  # as gpt-fast's decode_n_tokens: Inductor generates the attention
                    token = decode(token.view(1, -1), input_pos).clone()
                input_pos += 1
            sync()
            end = time.perf_counter()
        return (middle - start) * 1e3, (end - middle) * 1e3 / args.decode_tokens

    results = []

    def run_config(name: str) -> None:
        torch._dynamo.reset()
        decode = torch.compile(decode_one_token, mode="reduce-overhead", fullgraph=True, dynamic=False)
        start = time.perf_counter()
        for _ in range(args.warmup):
            generate(decode)
        warm = time.perf_counter() - start
        prefills, decodes = [], []
        for rep in range(args.repeats):
            p, d = generate(decode)
            prefills.append(p)
            decodes.append(d)
            log(f"{name} repeat {rep + 1}: prefill {p:.2f} ms, decode {d:.3f} ms/token")
        results.append({"name": name, "warmup_s": warm, "prefill_ms": prefills, "decode_ms": decodes})

    if not args.no_dense:
        log("gpt-fast dense: compiling and warming up")
        run_config("gpt-fast dense")

    thresholds: dict[float, list[dict[str, float]]] = {}
    if sparsities:
        log(f"thresholds from a prefill of {args.calib_tokens} random token ids through the dense model")
        inputs: dict[tuple[int, str], torch.Tensor] = {}
        hooks = []
        for i, layer in enumerate(model.layers):
            for site, module in (("qkv", layer.attention.wqkv), ("o", layer.attention.wo),
                                 ("gate_up", layer.feed_forward.w1), ("down", layer.feed_forward.w2)):
                def hook(mod, inp, key=(i, site)):
                    inputs[key] = inp[0].detach().abs().flatten().float()
                hooks.append(module.register_forward_pre_hook(hook))
        with torch.no_grad():
            model(calib_ids, torch.arange(0, args.calib_tokens, device=device))
        for h in hooks:
            h.remove()
        for s in sparsities:
            per_layer = []
            for i in range(len(model.layers)):
                row = {}
                for site in ("qkv", "o", "gate_up", "down"):
                    values = inputs[(i, site)]
                    k = max(1, min(values.numel(), int(round(s * values.numel()))))
                    row[site] = float(torch.kthvalue(values, k).values)
                per_layer.append(row)
            thresholds[s] = per_layer
        del inputs

        log("TEAL: column-major weights, sparse kernels (TEAL's _load_model)")
        kind = device.type
        for layer in model.layers:
            ffn, attn = layer.feed_forward, layer.attention
            ffn.gemv1 = sparse_gemv.SparseGEMV.initialize("sparse_gemv", kind).operator(True)
            ffn.gemv2 = sparse_gemv.SparseGEMV.initialize("sparse_gemv", kind).operator(True)
            attn.gemv1 = sparse_gemv.SparseQKVGEMV.initialize("sparse_qkv_gemv", kind).operator(True)
            attn.gemv2 = sparse_gemv.SparseGEMV.initialize("sparse_gemv", kind).operator(True)
            for w in (ffn.w1, ffn.w3, ffn.w2, attn.wqkv, attn.wo):
                w.weight.data = w.weight.data.T.contiguous().T  # column major
            ffn.apply_monkeypatch()
            attn.apply_monkeypatch()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    for s in sparsities:
        for layer, t in zip(model.layers, thresholds[s]):
            ffn, attn = layer.feed_forward, layer.attention
            attn.thresh_q = attn.thresh_k = attn.thresh_v = t["qkv"]
            attn.thresh_o = t["o"]
            ffn.thresh_gate = ffn.thresh_up = t["gate_up"]
            ffn.thresh_down = t["down"]
            attn.sparsity_bin = ffn.sparsity_bin = int(round(100 * s))
        log(f"TEAL {s:.0%}: compiling, autotuning and warming up")
        run_config(f"TEAL {s:.0%}")

    env = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "python": platform.python_version(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    rows = [("peer", "prefill ms [IQR]", "decode ms/token [IQR]", "tokens/s", "warm-up s")]
    for r in results:
        for key in ("prefill", "decode"):
            q1, med, q3 = np.percentile(r[f"{key}_ms"], [25, 50, 75])
            r[f"{key}_median"], r[f"{key}_iqr"] = float(med), float(q3 - q1)
        rows.append((r["name"], f"{r['prefill_median']:.2f} [{r['prefill_iqr']:.2f}]",
                     f"{r['decode_median']:.3f} [{r['decode_iqr']:.3f}]", f"{1e3 / r['decode_median']:.1f}",
                     f"{r['warmup_s']:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    table.insert(1, "  ".join("-" * w for w in widths))
    lines = [
        f"# command: {command}",
        f"# date: {env['date']}",
        f"# device: {env['device']}",
        f"# torch {env['torch']}, triton {env.get('triton', '-')}, python {env['python']}",
        f"# model: Llama shape layers {args.layers}, hidden {args.hidden}, intermediate {args.intermediate}, "
        f"heads {args.heads}/{args.kv_heads}, vocab {args.vocab}; random float16 weights, batch 1",
        f"# TEAL: thresholds from {args.calib_tokens} random token ids; autotune configs "
        + ("as published" if args.no_wide_configs else f"+ {added} BLOCK_N=1024") + "; one autotuning per sparsity",
        "",
        f"prompt {args.prompt_tokens} tokens, decode {args.decode_tokens} tokens, {args.repeats} repeats "
        f"after {args.warmup} warm-up generations",
        *table,
        "",
        json.dumps({"results": results, "environment": env,
                    "thresholds_layer0": {str(s): t[0] for s, t in thresholds.items()},
                    "autotune": chosen_configs(sparse_gemv)}, indent=1),
    ]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines[:9 + len(table)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
