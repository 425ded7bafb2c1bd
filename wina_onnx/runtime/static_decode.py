"""Decode with a fixed-length KV buffer, bound once, replayed as CUDA graphs.

For the static-cache graphs of wina_onnx.testing.fused_llama (GroupQueryAttention with
seqlens_k / total_seq_len inputs, past and present bound to one buffer of
`max_length` positions). Everything a decode step touches is allocated once and bound
once: input_ids [b, 1], seqlens_k [b] and the logits [b, 1, vocab] on the device,
total_seq_len [] on the host (always the buffer length in decode, since the attention
op reads it on the host and a captured graph would keep its first value), the KV
buffers on the device as both past and present. A step writes the new token and its
length (seqlens_k) into those buffers in place and runs the
same binding again, so the shapes and addresses never change and, with the CUDA
provider's `enable_cuda_graph`, ONNX Runtime captures the step once (after its warm-up
runs) and replays it from then on: one graph launch a token instead of one launch per
node.

Prefill runs in the same session with the run option gpu_graph_id = -1 (no capture,
no replay): its shapes differ from a decode step's, and one session holds the weights
once. It writes positions 0..P-1 of the same KV buffers.

With cuda_graph=False the same binding runs node by node (the reference the graph
replay is checked against); device_type "cpu" binds in host memory (tests on the CPU
provider).

Deployment code: imports onnxruntime and numpy only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import ModelLoadError
from ..modelio import model_file
from .session import CausalLM, load_session, require_cuda_provider

# The static-cache graph's length inputs (as ONNX Runtime GenAI's builder names them).
SEQLENS_K = "seqlens_k"
TOTAL_SEQ_LEN = "total_seq_len"
GRAPH_ANNOTATION = "gpu_graph_id"  # ORT run option: -1 = no CUDA graph for this run


class StaticCacheLM:
    """A static-cache causal LM with its buffers bound once (batch 1 or more, no padding)."""

    def __init__(self, session: ort.InferenceSession, model_dir: str | Path | None, *, max_length: int,
                 batch: int = 1, device_type: str = "cuda", device_id: int = 0, cuda_graph: bool = False) -> None:
        names = {i.name for i in session.get_inputs()}
        if SEQLENS_K not in names or TOTAL_SEQ_LEN not in names:
            raise ModelLoadError("not a static-cache model (no seqlens_k / total_seq_len inputs): "
                                 "see wina_onnx.testing.fused_llama.write_static_cache_model")
        self.lm = CausalLM(session, model_dir)  # layers, heads, dtype, vocab from the session and its folder
        if not isinstance(self.lm.vocab_size, int):
            raise ModelLoadError("the vocabulary size is unknown (keep config.json or genai_config.json beside "
                                 "the model)")
        self.session = session
        self.max_length = int(max_length)
        self.batch = int(batch)
        self.device_type = device_type
        self.device_id = device_id
        self.cuda_graph = cuda_graph
        # Zero-filled: positions past a sequence's length are never attended to, but a kernel
        # that masks by multiplying (the CPU one) must not meet NaNs there.
        zeros = np.zeros((self.batch, self.lm.num_kv_heads, self.max_length, self.lm.head_dim), self.lm.dtype)
        self.kv = [
            tuple(ort.OrtValue.ortvalue_from_numpy(zeros.copy() if device_type == "cpu" else zeros, device_type,
                                                   device_id)
                  for _ in range(2))
            for _ in range(self.lm.num_layers)
        ]
        # Decode-step buffers: fixed addresses for the captured graph.
        self._ids = ort.OrtValue.ortvalue_from_numpy(np.zeros((self.batch, 1), np.int64), device_type, device_id)
        self._seqlens = ort.OrtValue.ortvalue_from_numpy(np.zeros(self.batch, np.int32), device_type, device_id)
        # total_seq_len is read on the host (it sets the attention op's launch shapes): a captured
        # graph keeps the value it was captured with, so every decode step passes the same one,
        # the buffer length; the true lengths reach the device in seqlens_k.
        self._total = ort.OrtValue.ortvalue_from_numpy(np.array(self.max_length, np.int32))
        self.logits = ort.OrtValue.ortvalue_from_shape_and_type(
            [self.batch, 1, self.lm.vocab_size], self.lm.dtype, device_type, device_id)
        self._decode = self._binding(self._ids, self._seqlens, self._total, self.logits)
        self._decode_options = ort.RunOptions()
        self._prefill_options = ort.RunOptions()
        self._prefill_options.add_run_config_entry(GRAPH_ANNOTATION, "-1")
        self.length = 0  # positions filled in the KV buffers

    @classmethod
    def from_path(cls, model_path: str | Path, *, max_length: int, cuda_graph: bool = True, batch: int = 1,
                  device_type: str = "cuda", device_id: int = 0, optimization_level: str | None = None,
                  config: dict[str, str] | None = None) -> "StaticCacheLM":
        """Load model.onnx (or its folder): the CUDA provider (CUDA graphs on by default) or, device_type "cpu", the CPU one."""
        model_path = model_file(model_path)
        if device_type == "cuda":
            require_cuda_provider()
            options = {"device_id": str(device_id)}
            if cuda_graph:
                options["enable_cuda_graph"] = "1"
            providers = [("CUDAExecutionProvider", options)]
            if not cuda_graph:
                providers.append("CPUExecutionProvider")
        else:
            if cuda_graph:
                raise ValueError("CUDA graphs need device_type 'cuda'")
            providers = ["CPUExecutionProvider"]
        session = load_session(model_path, providers=providers, optimization_level=optimization_level, config=config)
        if device_type == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
            raise ModelLoadError(f"{model_path} did not load on the CUDA provider")
        return cls(session, model_path.parent, max_length=max_length, batch=batch, device_type=device_type,
                   device_id=device_id, cuda_graph=cuda_graph)

    def _binding(self, ids: ort.OrtValue, seqlens: ort.OrtValue, total: ort.OrtValue, logits: ort.OrtValue):
        binding = self.session.io_binding()
        binding.bind_ortvalue_input("input_ids", ids)
        binding.bind_ortvalue_input(SEQLENS_K, seqlens)
        binding.bind_ortvalue_input(TOTAL_SEQ_LEN, total)
        binding.bind_ortvalue_output("logits", logits)
        for (past_k, past_v), (present_k, present_v), (k, v) in zip(self.lm.past_names, self.lm.present_names,
                                                                   self.kv):
            binding.bind_ortvalue_input(past_k, k)
            binding.bind_ortvalue_input(past_v, v)
            binding.bind_ortvalue_output(present_k, k)
            binding.bind_ortvalue_output(present_v, v)
        return binding

    def prefill(self, input_ids: np.ndarray, *, fetch_logits: bool = False):
        """Run the prompt [b, P] from position 0 (no CUDA graph); logits [b, P, vocab] if asked for.

        Returns when the GPU work is done.
        """
        input_ids = np.asarray(input_ids, dtype=np.int64)
        if input_ids.ndim == 1:
            input_ids = input_ids[None, :]
        if input_ids.shape[0] != self.batch:
            raise ValueError(f"batch {input_ids.shape[0]}, the buffers hold {self.batch}")
        length = input_ids.shape[1]
        if not 0 < length <= self.max_length:
            raise ValueError(f"prompt of {length} tokens does not fit a KV buffer of {self.max_length}")
        ids = ort.OrtValue.ortvalue_from_numpy(input_ids, self.device_type, self.device_id)
        seqlens = ort.OrtValue.ortvalue_from_numpy(np.full(self.batch, length - 1, np.int32),
                                                   self.device_type, self.device_id)
        total = ort.OrtValue.ortvalue_from_numpy(np.array(length, np.int32))
        logits = ort.OrtValue.ortvalue_from_shape_and_type(
            [self.batch, length, self.lm.vocab_size], self.lm.dtype, self.device_type, self.device_id)
        binding = self._binding(ids, seqlens, total, logits)
        self.session.run_with_iobinding(binding, self._prefill_options)
        binding.synchronize_outputs()
        self.length = length
        return logits.numpy().copy() if fetch_logits else None  # (a host value's numpy() is a view)

    def step(self, tokens, *, fetch_logits: bool = False, use_graph: bool = True):
        """Decode one token per sequence (an int or [b] ids) at position `length`; logits [b, 1, vocab] if asked for.

        Only the bound buffers change: the token and seqlens_k, written in place
        (total_seq_len stays the buffer length). With CUDA graphs, ONNX Runtime replays the captured step once it has one;
        use_graph=False runs this step node by node in the same session (gpu_graph_id -1),
        the reference for the replay. Returns when the GPU work is done.
        """
        if self.length == 0:
            raise RuntimeError("prefill first")
        if self.length >= self.max_length:
            raise RuntimeError(f"the KV buffer of {self.max_length} positions is full")
        self._ids.update_inplace(np.broadcast_to(np.asarray(tokens, np.int64).reshape(-1, 1), (self.batch, 1)).copy())
        self._seqlens.update_inplace(np.full(self.batch, self.length, np.int32))
        options = self._decode_options if use_graph else self._prefill_options
        self.session.run_with_iobinding(self._decode, options)
        self._decode.synchronize_outputs()
        self.length += 1
        return self.logits.numpy().copy() if fetch_logits else None

    def greedy(self, prompt: np.ndarray, new_tokens: int, *, use_graph: bool = True) -> list[int]:
        """Greedy continuation of a 1-sequence prompt: the new token ids (argmax of the logits).

        use_graph=False: every step node by node (see `step`).
        """
        if self.batch != 1:
            raise ValueError("greedy decoding here takes one sequence")
        logits = self.prefill(np.asarray(prompt, np.int64).reshape(1, -1), fetch_logits=True)
        out = [int(np.argmax(logits[0, -1]))]
        while len(out) < new_tokens:
            logits = self.step(out[-1], fetch_logits=True, use_graph=use_graph)
            out.append(int(np.argmax(logits[0, -1])))
        return out
