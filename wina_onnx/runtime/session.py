"""Run an exported causal LM with ONNX Runtime: sessions, KV cache and tokenizer.

Deployment code: imports only onnxruntime, numpy, onnx (for a header-only look at
the model) and tokenizers, never torch or transformers.

The model is an Optimum `text-generation-with-past` export, a model from ONNX Runtime
GenAI's builder, or anything with the same interface (the cache names and sizes come
from the folder's config files, see wina_onnx.runtime.model_facts):
    inputs  input_ids [b, s] int64, attention_mask [b, past + s] int64,
            position_ids [b, s] int64 (optional),
            past_key_values.{i}.key / .value [b, kv_heads, past, head_dim]
    outputs logits [b, s, vocab], present.{i}.key / .value [b, kv_heads, past + s, head_dim]
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import onnxruntime as ort

from .. import schema
from ..errors import ModelLoadError
from ..library import LibraryNotFoundError, register_library, session_options
from ..modelio import load_model, model_file
from .model_facts import cache_name_match, kv_dims_from_graph, read_facts

if TYPE_CHECKING:
    import onnx

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}

Past = list[tuple[np.ndarray, np.ndarray]]


def uses_wina_domain(model_path: str | Path) -> bool:
    """True when the model imports the WinaSparseMatMul domain (reads no weights)."""
    return imports_wina_domain(load_model(model_path, load_weights=False))


def imports_wina_domain(model: onnx.ModelProto) -> bool:
    """True when the ModelProto (or one of its local functions) imports the WinaSparseMatMul domain."""
    domains = {op.domain for op in model.opset_import}
    for function in model.functions:  # ops inside local functions count too
        domains.update(op.domain for op in function.opset_import)
    return schema.DOMAIN in domains


def load_session(
    model_path: str | Path,
    *,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    optimization_level: str | None = None,
    config: dict[str, str] | None = None,
) -> ort.InferenceSession:
    """Create an InferenceSession for `model_path`, registering the op library when needed.

    The library is registered only if the model uses the "ai.wina" domain, so dense
    models run even where the library was not built. providers defaults to CPU.
    A folder means the model.onnx inside it.
    """
    model_path = model_file(model_path)
    options = session_options(threads=threads, optimization_level=optimization_level, config=config, register=False)
    if uses_wina_domain(model_path):
        try:
            register_library(options)
        except LibraryNotFoundError as exc:
            raise LibraryNotFoundError(
                f"{model_path.name} uses {schema.OP_TYPE} ({schema.DOMAIN}) but the op library cannot be loaded: "
                f"{exc}. Register it with SessionOptions.register_custom_ops_library(wina_onnx.get_library_path())"
            ) from exc
        except Exception as exc:  # ORT refuses the library (e.g. built for another API)
            raise LibraryNotFoundError(f"the op library was refused by ONNX Runtime {ort.__version__}: "
                                       f"{_first_line(exc)}") from exc
    try:
        return ort.InferenceSession(
            str(model_path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
        )
    except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.InvalidArgument, ort.capi.onnxruntime_pybind11_state.NoSuchFile,
            ort.capi.onnxruntime_pybind11_state.InvalidProtobuf) as exc:
        # IR version or opset newer than this ONNX Runtime, a missing weight file, ...
        raise ModelLoadError(f"ONNX Runtime {ort.__version__} cannot load {model_path}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (ORT's can run to many lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_tokenizer(model_dir: str | Path):
    """The `tokenizers.Tokenizer` from tokenizer.json in `model_dir` (or beside a model file)."""
    from tokenizers import Tokenizer

    model_dir = Path(model_dir)
    if model_dir.is_file():
        model_dir = model_dir.parent
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ModelLoadError(f"no tokenizer.json in {model_dir}; export the model with `wina-onnx export`")
    return Tokenizer.from_file(str(path))


class _GraphDims:
    """KV heads and head size from the session's model graph, read only when asked."""

    def __init__(self, session: ort.InferenceSession, past_key_name: str) -> None:
        self._session, self._name, self._dims = session, past_key_name, None

    def _read(self) -> tuple[int | None, int | None]:
        if self._dims is None:
            self._dims = (None, None)
            model = _session_model(self._session)
            if model is not None:
                self._dims = kv_dims_from_graph(model, self._name)
        return self._dims

    def kv_heads(self) -> int | None:
        return self._read()[0]

    def head_dim(self) -> int | None:
        return self._read()[1]


def _session_model(session: ort.InferenceSession):
    """The ONNX graph a session was made from (no external weights), or None."""
    import onnx

    path, data = getattr(session, "_model_path", None), getattr(session, "_model_bytes", None)
    try:
        if path:
            return onnx.load(str(path), load_external_data=False)
        if data:
            return onnx.load_from_string(data)
    except Exception:  # noqa: BLE001 - a file gone since (a temporary graph): nothing to read
        return None
    return None


def _cached_length(cached: int, past_length: int | None) -> int:
    """The cache's length `cached`, checked against the caller's `past_length` (None: unchecked)."""
    if past_length is not None and past_length != cached:
        raise ValueError(f"past_length={past_length} but the cache holds {cached} positions")
    return cached


def as_batch(input_ids: np.ndarray) -> np.ndarray:
    """input_ids as an int64 [b, s] array (a 1-D array is one sequence)."""
    input_ids = np.asarray(input_ids, dtype=np.int64)
    return input_ids[None, :] if input_ids.ndim == 1 else input_ids


class CausalLM:
    """A text-generation-with-past ONNX model with its KV cache bookkeeping.

    Attributes discovered from the session and the model's folder (wina_onnx.runtime.model_facts):
    num_layers, num_kv_heads, head_dim, dtype (of the KV cache), vocab_size, eos_token_ids,
    takes_position_ids, past_names and present_names ((key, value) per layer), facts.
    """

    def __init__(self, session: ort.InferenceSession, model_dir: str | Path | None = None) -> None:
        """Wrap `session`; model_dir (default: the session's model folder) holds tokenizer.json
        and the model's facts (config.json, generation_config.json or genai_config.json)."""
        self.session = session
        path = getattr(session, "_model_path", None)
        path = str(path) if isinstance(path, (str, Path)) and path else None
        where = path or "the model"  # errors name the model: bench and eval load several
        if model_dir is None:
            # Tokenizer and config files live beside the model: find them from its path.
            model_dir = Path(path).parent if path else None
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.facts = read_facts(self.model_dir)
        inputs = {i.name: i for i in session.get_inputs()}
        if "input_ids" not in inputs:
            raise ModelLoadError(f"{where} has no input_ids input; export it with task text-generation-with-past")
        past = self.facts.past_pattern()
        layers = sorted({m[0] for name in inputs if (m := cache_name_match(past, name))})
        if not layers or layers != list(range(len(layers))):
            raise ModelLoadError(f"{where} has no KV cache (no past_key_values.{{i}}.key/value inputs); export it "
                                 "with task text-generation-with-past")
        self.num_layers = len(layers)
        self.past_names = [(self.facts.past_key % i, self.facts.past_value % i) for i in layers]
        self.present_names = [(self.facts.present_key % i, self.facts.present_value % i) for i in layers]
        key = inputs[self.past_names[0][0]]
        self.dtype = np.dtype(_ORT_DTYPES.get(key.type, np.float32))
        graph_dims = _GraphDims(session, self.past_names[0][0])
        self.num_kv_heads = self._dim(key.shape, 1, self.facts.num_kv_heads, graph_dims.kv_heads, "num_key_value_heads")
        self.head_dim = self._dim(key.shape, 3, self.facts.head_dim, graph_dims.head_dim, "head_dim")
        self.takes_position_ids = "position_ids" in inputs
        self.takes_attention_mask = "attention_mask" in inputs
        logits = next(o for o in session.get_outputs() if o.name == "logits")
        self.vocab_size = logits.shape[-1] if isinstance(logits.shape[-1], int) else self.facts.vocab_size
        self.output_names = ["logits"] + [name for pair in self.present_names for name in pair]
        self.eos_token_ids: list[int] = list(self.facts.eos_token_ids)
        self._tokenizer = None

    @staticmethod
    def _dim(shape: list, axis: int, known: int | None, from_graph, key: str) -> int:
        # Optimum exports these axes as static ints; GenAI's builder leaves the head size
        # symbolic: then the folder's config files, then the attention node, say.
        if isinstance(shape[axis], int) and shape[axis] > 0:
            return shape[axis]
        if known:
            return int(known)
        value = from_graph()
        if value:
            return int(value)
        raise ModelLoadError(f"cannot tell the KV cache's {key} from the model or its folder; keep its "
                             "config.json or genai_config.json beside it")

    @classmethod
    def from_path(
        cls,
        model_path: str | Path,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        optimization_level: str | None = None,
        config: dict[str, str] | None = None,
    ) -> "CausalLM":
        """Load model.onnx (or a folder holding it) with `load_session`."""
        model_path = model_file(model_path)
        session = load_session(
            model_path, threads=threads, providers=providers, optimization_level=optimization_level, config=config
        )
        return cls(session, model_path.parent)

    @property
    def tokenizer(self):
        """The tokenizer from tokenizer.json beside the model (loaded once)."""
        if self._tokenizer is None:
            if self.model_dir is None:
                raise ModelLoadError("no model folder known: pass model_dir to CausalLM to get its tokenizer")
            self._tokenizer = load_tokenizer(self.model_dir)
        return self._tokenizer

    def empty_past(self, batch: int = 1) -> Past:
        """A KV cache of length 0 for `batch` sequences."""
        shape = (batch, self.num_kv_heads, 0, self.head_dim)
        return [(np.zeros(shape, self.dtype), np.zeros(shape, self.dtype)) for _ in range(self.num_layers)]

    def token_inputs(self, input_ids: np.ndarray, cached: int) -> dict[str, np.ndarray]:
        """input_ids [b, s] and, where the model takes them, the attention mask and positions
        of those tokens after `cached` cached positions (no padding: a mask of ones)."""
        batch, seq = input_ids.shape
        inputs: dict[str, np.ndarray] = {"input_ids": input_ids}
        if self.takes_attention_mask:
            inputs["attention_mask"] = np.ones((batch, cached + seq), dtype=np.int64)
        if self.takes_position_ids:
            positions = np.arange(cached, cached + seq, dtype=np.int64)
            inputs["position_ids"] = np.broadcast_to(positions, (batch, seq)).copy()
        return inputs

    def feeds(self, input_ids: np.ndarray, past: Past | None = None,
              past_length: int | None = None) -> dict[str, np.ndarray]:
        """The session inputs for `input_ids` [b, s] after a cache of `past_length` tokens.

        past None means an empty cache. past_length defaults to the cache's length.
        No padding: every sequence of the batch has the same length (mask of ones).
        """
        input_ids = as_batch(input_ids)
        if past is None:
            past = self.empty_past(input_ids.shape[0])
        if len(past) != self.num_layers:
            raise ValueError(f"past has {len(past)} layers, the model {self.num_layers}")
        cached = _cached_length(past[0][0].shape[2], past_length)
        feeds = self.token_inputs(input_ids, cached)
        for (key_name, value_name), (k, v) in zip(self.past_names, past):
            feeds[key_name] = k
            feeds[value_name] = v
        return feeds

    def forward(self, input_ids: np.ndarray, past: Past | None = None,
                past_length: int | None = None) -> tuple[np.ndarray, Past]:
        """Run `input_ids` [b, s] after the cache `past`; return (logits, present). See `feeds`."""
        feeds = self.feeds(input_ids, past, past_length)
        outputs = self.session.run(self.output_names, feeds)
        present = [(outputs[1 + 2 * i], outputs[2 + 2 * i]) for i in range(self.num_layers)]
        return outputs[0], present


CUDA_PROVIDERS = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]


def require_cuda_provider() -> None:
    """Preload the CUDA libraries where onnxruntime can, then insist on its CUDA provider."""
    if hasattr(ort, "preload_dlls"):  # the CUDA libraries of the nvidia-* wheels, if that is where they are
        try:
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - the provider's own loading reports what is missing
            pass
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ModelLoadError("this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")


class CudaCausalLM:
    """A CausalLM run on the CUDA provider through IOBinding: nothing but token ids goes to the GPU.

    The inputs (ids, mask, positions: a few bytes per step) are copied to the device,
    the KV cache stays there (each step's present.* OrtValues are bound as the next step's
    past_key_values.*), and logits are left on the device unless asked for. The past is a
    list of (key, value) OrtValues on the GPU.
    """

    def __init__(self, lm: CausalLM, device_id: int = 0, device_type: str = "cuda") -> None:
        """device_type "cpu" binds the same way in host memory (for tests without a GPU)."""
        self.lm = lm
        self.session = lm.session
        self.device_id = device_id
        self.device_type = device_type
        self.output_names = lm.output_names

    @classmethod
    def from_path(
        cls,
        model_path: str | Path,
        *,
        optimization_level: str | None = None,
        config: dict[str, str] | None = None,
        device_id: int = 0,
    ) -> "CudaCausalLM":
        """Load model.onnx (or its folder) on the CUDA provider."""
        require_cuda_provider()
        providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        lm = CausalLM.from_path(model_path, providers=providers, optimization_level=optimization_level, config=config)
        if lm.session.get_providers()[0] != "CUDAExecutionProvider":
            raise ModelLoadError(f"{model_path} did not load on the CUDA provider")
        return cls(lm, device_id)

    def _device(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device_type, self.device_id)

    def empty_past(self, batch: int = 1) -> list:
        """A KV cache of length 0 on the GPU."""
        shape = [batch, self.lm.num_kv_heads, 0, self.lm.head_dim]
        return [
            tuple(ort.OrtValue.ortvalue_from_shape_and_type(shape, self.lm.dtype, self.device_type, self.device_id)
                  for _ in range(2))
            for _ in range(self.lm.num_layers)
        ]

    def forward(self, input_ids: np.ndarray, past: list | None = None, past_length: int | None = None,
                *, fetch_logits: bool = False):
        """Run `input_ids` [b, s] after `past`; return (logits or None, present on the GPU).

        Returns when the GPU work of the step is done (the run synchronises the stream).
        """
        input_ids = as_batch(input_ids)
        if past is None:
            past = self.empty_past(input_ids.shape[0])
        cached = _cached_length(past[0][0].shape()[2], past_length)
        binding = self.session.io_binding()
        for name, value in self.lm.token_inputs(input_ids, cached).items():
            binding.bind_ortvalue_input(name, self._device(value))
        for (key_name, value_name), (k, v) in zip(self.lm.past_names, past):
            binding.bind_ortvalue_input(key_name, k)
            binding.bind_ortvalue_input(value_name, v)
        for name in self.output_names:
            binding.bind_output(name, self.device_type, self.device_id)
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        outputs = binding.get_outputs()
        present = [(outputs[1 + 2 * i], outputs[2 + 2 * i]) for i in range(self.lm.num_layers)]
        logits = outputs[0].numpy() if fetch_logits else None
        return logits, present
