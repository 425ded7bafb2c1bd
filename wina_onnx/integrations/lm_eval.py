"""lm-evaluation-harness model "wina-onnx": evaluate ONNX models (dense or WINA) on its tasks.

`WinaOnnxLM` is a `lm_eval.api.model.TemplateLM` over `wina_onnx.runtime.session.CausalLM`:

* loglikelihood: for each (context, continuation), the sum over the continuation tokens
  of log softmax(logits) and whether every one is the argmax. Requests that share a
  context run it once; each continuation then runs after its KV cache (ONNX Runtime
  returns new present tensors, so the cache is shared unmodified).
* loglikelihood_rolling: the same over the harness's disjoint rolling windows of
  `max_length` tokens, each starting from the prefix (BOS) token.
* generate_until: greedy decoding with the KV cache until an EOS token, a stop string
  (`until`) or `max_gen_toks`; the text is cut before the first stop string.

lm-eval has no plugin entry point for models, so `register()` adds "wina-onnx" to its
registry and `main(argv)` (also `wina-onnx lm-eval ...` and
`python -m wina_onnx.integrations.lm_eval ...`) runs lm-eval's own command line with
`--model wina-onnx` after registering it. Model arguments: model=DIR (or model.onnx),
threads=N, max_length=N, add_bos_token=True|False,
optimization_level=disable|basic|extended|all. Text is tokenized as lm-eval's "hf" model
does (the tokenizer's special tokens unless add_bos_token says otherwise), so scores are
comparable with `--model hf` on the PyTorch checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import onnxruntime as ort

from ..errors import ConfigError
from ..runtime.session import CausalLM, Past

MODEL_NAME = "wina-onnx"
# Tasks shipped with wina-onnx (wina_tiny_mc: six questions, no download), found by main()
# when no --include_path is given.
TASKS_DIR = Path(__file__).with_name("lm_eval_tasks")
DEFAULT_MAX_LENGTH = 2048
DEFAULT_MAX_GEN_TOKS = 256

try:
    from lm_eval.api.model import TemplateLM
except ImportError as exc:  # the module stays importable so the error says what to install
    _IMPORT_ERROR: ImportError | None = exc
    TemplateLM = object  # type: ignore[misc,assignment]
else:
    _IMPORT_ERROR = None


def _require_lm_eval() -> None:
    if _IMPORT_ERROR is not None:
        raise ConfigError(f"lm-evaluation-harness is not installed ({_IMPORT_ERROR}); "
                          "pip install 'wina-onnx[lm_eval]'")


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, in float64."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def continuation_score(logits: np.ndarray, continuation: Sequence[int]) -> tuple[float, bool]:
    """(sum of log p(continuation[i]), all greedy) from the logits [len(continuation), vocab] predicting it."""
    logprobs = _log_softmax(logits)
    cont = np.asarray(continuation, dtype=np.int64)
    total = float(logprobs[np.arange(len(cont)), cont].sum())
    greedy = bool((logprobs.argmax(axis=-1) == cont).all())
    return total, greedy


class WinaOnnxLM(TemplateLM):
    """lm-eval model over an exported causal LM folder (model.onnx + tokenizer.json)."""

    def __init__(
        self,
        model: str | None = None,
        *,
        threads: int | None = None,
        max_length: int | None = None,
        optimization_level: str | None = None,
        add_bos_token: bool | None = None,
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
        device: str | None = None,
        **unused: Any,
    ) -> None:
        """Load `model` (a folder or model.onnx). batch_size is accepted and ignored (one
        sequence at a time). add_bos_token None applies the tokenizer's own post-processor
        (special tokens), as lm-eval's "hf" model does; True/False force it. device "cuda..." (lm-eval's default) selects the CUDA execution
        provider when this onnxruntime has it, else the CPU."""
        _require_lm_eval()
        super().__init__()
        if not model:
            raise ConfigError("--model_args needs model=DIR (a folder with model.onnx and tokenizer.json)")
        if unused:
            raise ConfigError(f"unknown wina-onnx model argument(s): {', '.join(sorted(unused))}")
        providers = ["CPUExecutionProvider"]
        if str(device or "").startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.lm = CausalLM.from_path(Path(model), threads=None if threads is None else int(threads),
                                     providers=providers, optimization_level=optimization_level)
        self.tokenizer = self.lm.tokenizer
        facts = self.lm.facts  # config.json, or genai_config.json in a GenAI folder
        self._max_length = int(max_length or facts.context_length or DEFAULT_MAX_LENGTH)
        if not self.lm.eos_token_ids:
            raise ConfigError(f"{model}: no eos_token_id in generation_config.json, config.json or genai_config.json")
        self._eot = int(self.lm.eos_token_ids[0])
        bos = facts.bos_token_id
        self._prefix = int(bos) if isinstance(bos, int) else self._eot
        self.add_bos_token = add_bos_token

    # ------------------------------------------------------------------ TemplateLM interface
    @property
    def eot_token_id(self) -> int:
        """The end-of-text id (the first EOS id of the model)."""
        return self._eot

    @property
    def prefix_token_id(self) -> int:
        """The token that conditions an empty context: BOS when the model has one, else EOS."""
        return self._prefix

    @property
    def max_length(self) -> int:
        """The longest sequence run at once (by default config.json's max_position_embeddings, or
        genai_config.json's context_length)."""
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids of `string`.

        add_special_tokens None: the model's add_bos_token, else the tokenizer's default
        (its post-processor), but never a second BOS in front of a string that starts with one.
        """
        if add_special_tokens is None:
            add_special_tokens = True if self.add_bos_token is None else self.add_bos_token
            bos = self.tokenizer.id_to_token(self.prefix_token_id)
            if bos and string.startswith(bos):
                add_special_tokens = False
        return list(self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens)).ids)

    def tok_decode(self, tokens: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `tokens`."""
        return self.tokenizer.decode(list(tokens), skip_special_tokens=skip_special_tokens)

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """Score every (key, context ids, continuation ids); a shared context runs once."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        by_context: dict[tuple[int, ...], list[int]] = {}
        for index, (_, context, continuation) in enumerate(requests):
            if not continuation:
                raise ValueError("an lm-eval request has an empty continuation")
            if len(continuation) > self.max_length:
                raise ConfigError(f"a continuation of {len(continuation)} tokens exceeds max_length={self.max_length}")
            whole = (list(context) + list(continuation))[-(self.max_length + 1):]
            context = tuple(whole[: len(whole) - len(continuation)])
            by_context.setdefault(context, []).append(index)
        for context, indices in by_context.items():
            if context:
                logits, past = self.lm.forward(np.asarray(context, dtype=np.int64)[None, :])
                first = logits[0, -1:]
            else:  # the continuation fills the whole window: its first token is not scored
                first, past = None, None
            for index in indices:
                results[index] = self._score_continuation(first, past, requests[index][2], bool(context))
            if self.cache_hook is not None:
                for index in indices:
                    self.cache_hook.add_partial("loglikelihood", requests[index][0], results[index])
        return results  # type: ignore[return-value]

    def _score_continuation(
        self, first: np.ndarray | None, past: Past | None, continuation: list[int], has_context: bool
    ) -> tuple[float, bool]:
        """Score `continuation` after the context whose last logits are `first` and cache `past`."""
        if not has_context:
            continuation = continuation[-self.max_length:]
            logits, _ = self.lm.forward(np.asarray(continuation[:-1], dtype=np.int64)[None, :])
            return continuation_score(logits[0], continuation[1:])
        if len(continuation) == 1:
            return continuation_score(first, continuation)
        logits, _ = self.lm.forward(np.asarray(continuation[:-1], dtype=np.int64)[None, :], past)
        return continuation_score(np.concatenate([first, logits[0]], axis=0), continuation)

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole string, over disjoint windows of max_length tokens."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for request in requests:
            (string,) = request.args
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1,
                )
            ]
            scores = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows])
            total = sum(score for score, _ in scores)
            if self.cache_hook is not None:
                self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            out.append(total)
        return out

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuation of each context, cut at the first stop string."""
        out = []
        for request in requests:
            context, gen_kwargs = request.args
            until, max_gen_toks = _generation_options(gen_kwargs, self.tok_decode([self.eot_token_id]))
            ids = self.tok_encode(context)[-max(1, self.max_length - max_gen_toks):]
            text = self.greedy_until(ids, until, max_gen_toks)
            if self.cache_hook is not None:
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out

    def greedy_until(self, ids: Sequence[int], until: Sequence[str], max_new_tokens: int) -> str:
        """Greedy-decode after `ids` until an EOS id, a stop string or max_new_tokens; the text before the stop."""
        if not ids:
            ids = [self.prefix_token_id]
        stops = set(self.lm.eos_token_ids)
        new: list[int] = []
        logits, past = self.lm.forward(np.asarray(ids, dtype=np.int64)[None, :])
        text = ""
        while len(new) < max_new_tokens:
            token = int(np.argmax(logits[0, -1]))
            if token in stops:
                break
            new.append(token)
            text = self.tok_decode(new)
            if any(stop and stop in text for stop in until):
                break
            if len(ids) + len(new) >= self.max_length:
                break
            logits, past = self.lm.forward(np.array([[token]], dtype=np.int64), past)
        for stop in until:
            if stop:
                text = text.split(stop)[0]
        return text


def _generation_options(gen_kwargs: dict, eot_text: str) -> tuple[list[str], int]:
    """(stop strings, max new tokens) of a generate_until request; sampling is refused."""
    options = dict(gen_kwargs or {})
    if options.get("do_sample") or float(options.get("temperature", 0.0) or 0.0) > 0.0:
        raise ConfigError("wina-onnx decodes greedily only: set do_sample=false, temperature=0")
    until = options.get("until") or []
    if isinstance(until, str):
        until = [until]
    until = [u for u in until if isinstance(u, str)]
    if eot_text and eot_text not in until:
        until.append(eot_text)
    return until, int(options.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))


def register() -> type:
    """Register `WinaOnnxLM` in lm-eval's model registry as "wina-onnx" (idempotent); return it."""
    _require_lm_eval()
    import lm_eval.models  # noqa: F401  (fills the registry with lm-eval's own models first)
    from lm_eval.api.registry import model_registry, register_model

    if model_registry.get(MODEL_NAME, None) is not WinaOnnxLM:
        register_model(MODEL_NAME)(WinaOnnxLM)
    return WinaOnnxLM


def main(argv: Sequence[str] | None = None) -> int:
    """Run lm-eval's command line with the "wina-onnx" model registered.

    argv are lm-eval `run` options (e.g. --model_args model=DIR --tasks hellaswag);
    --model defaults to wina-onnx, --include_path to TASKS_DIR (the task wina_tiny_mc).
    """
    _require_lm_eval()
    from lm_eval.__main__ import cli_evaluate

    register()
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "run":
        args = args[1:]
    if not any(a == "--model" or a.startswith("--model=") for a in args):
        args = ["--model", MODEL_NAME, *args]
    if not any(a == "--include_path" or a.startswith("--include_path=") for a in args):
        args = ["--include_path", str(TASKS_DIR), *args]
    saved = sys.argv
    sys.argv = ["lm-eval", "run", *args]
    try:
        cli_evaluate()
    except SystemExit as exc:  # argparse errors and --help
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except ValueError as exc:  # lm-eval reports bad options (unknown task, bad arguments) so
        raise ConfigError(f"lm-eval: {exc}") from exc
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    from ..errors import WinaError

    try:
        sys.exit(main())
    except WinaError as error:
        print(f"wina_onnx.integrations.lm_eval: error: {error}", file=sys.stderr)
        sys.exit(2)
