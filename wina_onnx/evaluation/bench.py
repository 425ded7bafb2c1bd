"""Latency benchmark of several exported models: prefill and per-token decode.

All models are loaded with the same session options and run on the same token ids.
Each repetition runs every model once, in turn (A, B, A, B, ...), so a slow spell of
a noisy machine hits all models alike instead of biasing whichever ran during it.
We report the median and the interquartile range over repetitions, and the speedup
of each model against the first one (the baseline), as a ratio of medians.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..progress import Progress, stage
from ..runtime.session import CausalLM


@dataclass
class ModelTiming:
    """Timings of one model, in milliseconds (samples: one per repetition)."""

    name: str
    path: str
    prefill_ms: list[float] = field(default_factory=list)  # one whole prefill
    decode_ms: list[float] = field(default_factory=list)  # mean per decoded token
    prefill_median: float = 0.0
    prefill_iqr: float = 0.0
    decode_median: float = 0.0
    decode_iqr: float = 0.0
    prefill_speedup: float = 1.0  # baseline median / this median
    decode_speedup: float = 1.0
    # bench_static_models only: the same decode steps node by node (no CUDA graph), and
    # the greedy tokens of the graph replay and of the node-by-node steps
    decode_nograph_ms: list[float] = field(default_factory=list)
    decode_nograph_median: float = 0.0
    decode_nograph_iqr: float = 0.0
    decode_nograph_speedup: float = 1.0
    greedy_graph: list[int] = field(default_factory=list)
    greedy_nograph: list[int] = field(default_factory=list)


@dataclass
class BenchResult:
    """Timings of every model; the first one is the baseline."""

    models: list[ModelTiming]
    prompt_tokens: int
    decode_tokens: int
    repeats: int
    warmup: int
    threads: int | None
    device: str = "cpu"
    environment: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-serialisable dict."""
        return asdict(self)

    def to_json(self) -> str:
        """The dict as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A printable table: median [IQR] in ms and speedup vs the baseline."""
        head = (
            f"prompt {self.prompt_tokens} tokens, decode {self.decode_tokens} tokens, "
            f"{self.repeats} repeats, "
            + (f"threads {self.threads or 'default'}" if self.device == "cpu" else f"device {self.device}")
        )
        rows = [("model", "prefill ms [IQR]", "speedup", "decode ms/token [IQR]", "speedup", "tokens/s")]
        for m in self.models:
            rows.append(
                (
                    m.name,
                    f"{m.prefill_median:.2f} [{m.prefill_iqr:.2f}]",
                    f"{m.prefill_speedup:.3f}x",
                    f"{m.decode_median:.3f} [{m.decode_iqr:.3f}]",
                    f"{m.decode_speedup:.3f}x",
                    f"{1e3 / m.decode_median:.1f}" if m.decode_median else "-",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [head]
        for j, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
            if j == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _median_iqr(samples: Sequence[float]) -> tuple[float, float]:
    q1, med, q3 = np.percentile(np.asarray(samples, dtype=np.float64), [25, 50, 75])
    return float(med), float(q3 - q1)


def _run_once(lm, prompt: np.ndarray, decode_ids: np.ndarray) -> tuple[float, float]:
    """(prefill seconds, mean decode seconds per token) for one pass over the prompt."""
    start = time.perf_counter()
    _, past = lm.forward(prompt)
    prefill = time.perf_counter() - start
    if len(decode_ids) == 0:
        return prefill, 0.0
    start = time.perf_counter()
    for token in decode_ids:
        # Fixed ids rather than argmax so every model does exactly the same work.
        _, past = lm.forward(np.array([[token]], dtype=np.int64), past)
    return prefill, (time.perf_counter() - start) / len(decode_ids)


def bench_models(
    paths: dict[str, Path],
    *,
    prompt_tokens: int = 128,
    decode_tokens: int = 64,
    repeats: int = 5,
    threads: int | None = None,
    warmup: int = 1,
    optimization_level: str | None = None,
    providers: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    device: str = "cpu",
    load: Callable[[str, Path], object] | None = None,
) -> BenchResult:
    """Benchmark every model in `paths` (name -> model.onnx or its folder), interleaved.

    The prompt is `prompt_tokens` fixed pseudo-random ids (seeded), decoded with
    `decode_tokens` further fixed ids, one at a time with the KV cache.
    `warmup` unrecorded repetitions come first (first-run allocations, page faults).
    device "cuda": the CUDA provider with IOBinding (wina_onnx.runtime.session.CudaCausalLM):
    the KV cache and logits stay on the GPU, every step ends with the GPU done.
    load(name, path): loads one model instead (a CausalLM, or a CudaCausalLM with device
    "cuda"), e.g. with a session of its own; the default loads with the options above.
    """
    if not paths:
        raise ValueError("no model to benchmark")
    if prompt_tokens < 1 or repeats < 1:
        raise ValueError("prompt_tokens and repeats must be at least 1")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, not {device!r}")
    models: dict = {}
    # The sessions take turns: a session's pool threads must not keep spinning after its
    # run and steal the cores from the next model's (spinning within a run stays on).
    config = {"session.force_spinning_stop": "1"}
    for name, path in paths.items():
        stage("bench", f"loading {name} from {path}", enabled=progress)
        if load is not None:
            models[name] = load(name, path)
        elif device == "cuda":
            from ..runtime.session import CudaCausalLM

            models[name] = CudaCausalLM.from_path(path, optimization_level=optimization_level, config=config)
        else:
            models[name] = CausalLM.from_path(
                path, threads=threads, providers=providers, optimization_level=optimization_level, config=config
            )
    vocab = min(int((lm.lm if device == "cuda" else lm).vocab_size or 1000) for lm in models.values())
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, vocab, size=(1, prompt_tokens), dtype=np.int64)
    decode_ids = rng.integers(0, vocab, size=decode_tokens, dtype=np.int64)

    report = Progress("bench", total=(warmup + repeats) * len(paths), enabled=progress)
    timings = {name: ModelTiming(name=name, path=str(path)) for name, path in paths.items()}
    for rep in range(warmup + repeats):
        for name, lm in models.items():
            prefill, decode = _run_once(lm, prompt, decode_ids)
            label = "warmup" if rep < warmup else f"repeat {rep - warmup + 1}"
            if rep >= warmup:
                timings[name].prefill_ms.append(prefill * 1e3)
                timings[name].decode_ms.append(decode * 1e3)
            report.step(f"{label} {name}: prefill {prefill * 1e3:.1f} ms, decode {decode * 1e3:.2f} ms/token")

    ordered = list(timings.values())
    for t in ordered:
        t.prefill_median, t.prefill_iqr = _median_iqr(t.prefill_ms)
        t.decode_median, t.decode_iqr = _median_iqr(t.decode_ms)
    base = ordered[0]
    for t in ordered:
        t.prefill_speedup = base.prefill_median / t.prefill_median if t.prefill_median else float("nan")
        t.decode_speedup = base.decode_median / t.decode_median if t.decode_median else float("nan")
    report.done()
    return BenchResult(
        models=ordered,
        prompt_tokens=prompt_tokens,
        decode_tokens=decode_tokens,
        repeats=repeats,
        warmup=warmup,
        threads=threads,
        device=device,
        environment=_environment(device),
    )


def bench_static_models(
    paths: dict[str, Path],
    *,
    prompt_tokens: int = 512,
    decode_tokens: int = 128,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
    greedy_tokens: int = 16,
    nograph: bool = True,
    progress: bool = True,
) -> BenchResult:
    """Benchmark static-cache models (wina_onnx.testing.fused_llama.write_static_cache_model) with CUDA graphs.

    Each model gets one session on the CUDA provider with `enable_cuda_graph` and its
    buffers bound once (wina_onnx.runtime.static_decode.StaticCacheLM, KV buffer of prompt +
    decode positions). Per repetition and model, interleaved as in `bench_models`: the
    prefill of `prompt_tokens` fixed ids (no graph), then `decode_tokens` fixed ids one
    at a time as graph replays (decode_ms); with nograph, the same steps again after a
    fresh prefill, node by node in the same session (decode_nograph_ms). The warm-up
    repetitions capture the graph. Afterwards, for each model, the greedy continuation
    (`greedy_tokens` ids) of the prompt by graph replays and node by node, which must agree.
    """
    from ..runtime.static_decode import StaticCacheLM

    if not paths:
        raise ValueError("no model to benchmark")
    max_length = prompt_tokens + max(decode_tokens, greedy_tokens) + 1
    config = {"session.force_spinning_stop": "1"}
    models: dict = {}
    for name, path in paths.items():
        stage("bench", f"loading {name} from {path} (CUDA graphs)", enabled=progress)
        models[name] = StaticCacheLM.from_path(path, max_length=max_length, cuda_graph=True, config=config)
    vocab = min(int(lm.lm.vocab_size) for lm in models.values())
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, vocab, size=(1, prompt_tokens), dtype=np.int64)
    decode_ids = rng.integers(0, vocab, size=decode_tokens, dtype=np.int64)

    def decode(lm, use_graph: bool) -> float:
        lm.prefill(prompt)
        start = time.perf_counter()
        for token in decode_ids:
            lm.step(int(token), use_graph=use_graph)
        return (time.perf_counter() - start) / max(1, len(decode_ids))

    report = Progress("bench", total=(warmup + repeats) * len(paths), enabled=progress)
    timings = {name: ModelTiming(name=name, path=str(path)) for name, path in paths.items()}
    for rep in range(warmup + repeats):
        for name, lm in models.items():
            start = time.perf_counter()
            lm.prefill(prompt)
            prefill = time.perf_counter() - start
            step = decode(lm, True)
            plain = decode(lm, False) if nograph else 0.0
            label = "warmup" if rep < warmup else f"repeat {rep - warmup + 1}"
            if rep >= warmup:
                t = timings[name]
                t.prefill_ms.append(prefill * 1e3)
                t.decode_ms.append(step * 1e3)
                if nograph:
                    t.decode_nograph_ms.append(plain * 1e3)
            report.step(f"{label} {name}: prefill {prefill * 1e3:.1f} ms, decode {step * 1e3:.3f} ms/token "
                        f"(graph), {plain * 1e3:.3f} (no graph)")
    for name, lm in models.items():
        timings[name].greedy_graph = lm.greedy(prompt, greedy_tokens, use_graph=True)
        timings[name].greedy_nograph = lm.greedy(prompt, greedy_tokens, use_graph=False)

    ordered = list(timings.values())
    for t in ordered:
        t.prefill_median, t.prefill_iqr = _median_iqr(t.prefill_ms)
        t.decode_median, t.decode_iqr = _median_iqr(t.decode_ms)
        if t.decode_nograph_ms:
            t.decode_nograph_median, t.decode_nograph_iqr = _median_iqr(t.decode_nograph_ms)
    base = ordered[0]
    for t in ordered:
        t.prefill_speedup = base.prefill_median / t.prefill_median if t.prefill_median else float("nan")
        t.decode_speedup = base.decode_median / t.decode_median if t.decode_median else float("nan")
        if t.decode_nograph_median:
            t.decode_nograph_speedup = base.decode_nograph_median / t.decode_nograph_median
    report.done()
    return BenchResult(models=ordered, prompt_tokens=prompt_tokens, decode_tokens=decode_tokens, repeats=repeats,
                       warmup=warmup, threads=None, device="cuda (CUDA graphs)", environment=_environment("cuda"))


def _environment(device: str) -> dict:
    """Versions and the GPU, for the record."""
    import datetime
    import platform

    import onnxruntime as ort

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
    }
    if device.startswith("cuda"):
        import subprocess

        try:
            env["gpu"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["gpu"] = "unknown"
    return env
