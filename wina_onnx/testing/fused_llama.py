"""Build a Llama decoder directly as ONNX Runtime's fused graph, with random weights.

Nothing at the 7-8B scale can be exported on a small machine or carried to a GPU
machine, so this module writes, for any Llama configuration, the graph that ONNX
Runtime's transformer optimizer and model builder make of a Llama decoder:

    embed_tokens Gather
    per layer:  (Skip)SimplifiedLayerNormalization            (input_layernorm)
                q_proj, k_proj, v_proj MatMul
                GroupQueryAttention (com.microsoft; rotary fused, KV cache in and out)
                o_proj MatMul
                SkipSimplifiedLayerNormalization               (post_attention_layernorm)
                gate_proj, up_proj MatMul, SiLU as Sigmoid * x, * up, down_proj MatMul
    SkipSimplifiedLayerNormalization (final norm), lm_head MatMul

The projection MatMuls are named as the exporters name them
(`/model/layers.3/self_attn/q_proj/MatMul`), with [K, N] initializer weights, so that
the WINA pass (passes.roles) recognises them. Inputs and outputs are those of an Optimum
`text-generation-with-past` export, so wina_onnx.runtime.session drives the model unchanged:

    input_ids [b, s] int64, attention_mask [b, past + s] int64, position_ids [b, s] int64,
    past_key_values.{i}.key / .value [b, kv_heads, past, head_dim]
    -> logits [b, s, vocab], present.{i}.key / .value [b, kv_heads, past + s, head_dim]

GroupQueryAttention derives the positions from the attention mask (seqlens_k = number
of ones - 1), as ONNX Runtime GenAI's builder does; position_ids is accepted for the
interface and unused (no padding: positions are 0..past+s-1). The weights are random
(normal, std 0.02, as transformers initialises Llama; norm weights 1), written to one
external data file as they are drawn, so an 8B model needs no more host memory than
its largest tensor. It is a speed model: the numbers it computes mean nothing.
The rotary cache uses plain RoPE with rope_theta (Llama-3's frequency scaling changes
the cache values, not the work).

4-bit weights (`weights="int4"`): the graph the GenAI builder writes for CUDA with
`-p int4`. Every projection and the LM head is a com.microsoft MatMulNBits (bits 4,
block_size 32, accuracy_level 0, float16 scales [N, K/32], no zero points: symmetric
codes around 8), q/k/v packed into one qkv_proj whose output feeds GroupQueryAttention
as packed QKV, gate/up/down and o_proj separate, the embedding table float16. Node and
weight names follow the builder (`/model/layers.3/attn/qkv_proj/MatMul_Q4`,
`model.layers.3.attn.qkv_proj.MatMul.weight_Q4` and `..._scales`). The codes are
uniform random bytes and the scales |normal| sized so a weight's standard deviation is
`std`, as in the float16 model.

Static KV cache (`static_cache=True`, or `write_static_cache_model` on any model this
module wrote, dense or rewritten by the WINA pass): the variant ONNX Runtime GenAI's
builder writes for CUDA graphs. GroupQueryAttention takes its lengths as graph inputs
and the KV cache is one buffer of a fixed maximum length that is both past and present:

    input_ids [b, s] int64, seqlens_k [b] int32 (tokens so far, this step's included, - 1),
    total_seq_len [] int32 (on the host), past_key_values.{i}.key / .value
    [b, kv_heads, max_sequence_length, head_dim]
    -> logits [b, s, vocab], present.{i}.key / .value [b, kv_heads, max_sequence_length, head_dim]

Bound to the same buffer as past, present is written in place (GroupQueryAttention's
past_present_share_buffer), so a decode step has the same shapes and addresses every
time and can be replayed as a CUDA graph (wina_onnx.runtime.static_decode).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..runtime.static_decode import SEQLENS_K, TOTAL_SEQ_LEN  # the length inputs the static-cache runner binds

IR_VERSION = 10  # ONNX Runtime 1.2x-1.3x; onnx 1.23 would write 14 by default
OPSET = 17  # SimplifiedLayerNormalization is an ORT op in the default domain from opset 1
MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class LlamaShape:
    """The configuration fields that set the graph's shapes."""

    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    vocab_size: int = 128256
    max_position_embeddings: int = 8192
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def parameters(self) -> int:
        """Number of weights (embeddings, projections, norms, LM head)."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.num_key_value_heads * self.head_dim
        layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h
        return self.vocab_size * h * 2 + self.num_hidden_layers * layer + h

    def config_json(self) -> dict:
        """A transformers-style config.json for the runtime (KV cache dimensions)."""
        out = asdict(self)
        out.update(model_type="llama", architectures=["LlamaForCausalLM"], head_dim=self.head_dim,
                   torch_dtype="float16", tie_word_embeddings=False)
        return out


LLAMA3_8B = LlamaShape()

# A weight generator: (name, shape, std) -> float16 array. std 0 means "all ones".
Generator = Callable[[str, tuple, float], np.ndarray]


def numpy_generator(seed: int = 0) -> Generator:
    """Random float16 weights from NumPy (slow for billions of weights; fine for tests)."""
    rng = np.random.default_rng(seed)

    def draw(name: str, shape: tuple, std: float) -> np.ndarray:
        if std == 0:
            return np.ones(shape, dtype=np.float16)
        return (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float16)

    return draw


def torch_generator(seed: int = 0, device: str = "cuda") -> Generator:
    """Random float16 weights drawn by torch on `device` (seconds for an 8B model on a GPU)."""
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(seed)

    def draw(name: str, shape: tuple, std: float) -> np.ndarray:
        if std == 0:
            return np.ones(shape, dtype=np.float16)
        t = torch.empty(shape, dtype=torch.float16, device=device)
        t.normal_(0.0, std, generator=gen)
        return t.cpu().numpy()

    return draw


# A code generator: (name, shape) -> uint8 array of uniform random bytes (two 4-bit codes each).
CodeGenerator = Callable[[str, tuple], np.ndarray]


def numpy_code_generator(seed: int = 0) -> CodeGenerator:
    """Uniform random bytes from NumPy."""
    rng = np.random.default_rng(seed + 1)

    def draw(name: str, shape: tuple) -> np.ndarray:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)

    return draw


def torch_code_generator(seed: int = 0, device: str = "cuda") -> CodeGenerator:
    """Uniform random bytes drawn by torch on `device`."""
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(seed + 1)

    def draw(name: str, shape: tuple) -> np.ndarray:
        return torch.randint(0, 256, shape, dtype=torch.uint8, device=device, generator=gen).cpu().numpy()

    return draw


WEIGHT_FORMATS = ("float16", "int4")
INT4_BLOCK_SIZE = 32  # the GenAI builder's default block size
_CODE_VARIANCE = 21.5  # E[(c - 8)^2] for codes c uniform in 0..15


class _Weights:
    """Appends tensors to one external data file and makes the TensorProtos that point at it."""

    def __init__(self, folder: Path, location: str) -> None:
        self.location = location
        self.file = open(folder / location, "wb")
        self.offset = 0
        self.tensors: list[onnx.TensorProto] = []

    def add(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        pad = (-self.offset) % 64  # aligned offsets let ORT map the file
        if pad:
            self.file.write(b"\0" * pad)
            self.offset += pad
        data = array.tobytes()
        self.file.write(data)
        tensor = onnx.TensorProto()
        tensor.name = name
        tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", str(self.offset)), ("length", str(len(data)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.offset += len(data)
        self.tensors.append(tensor)
        return name

    def close(self) -> None:
        self.file.close()


def _path_parts(module: str) -> list[str]:
    """"model.layers.3.mlp.gate_proj" -> ["model", "layers.3", "mlp", "gate_proj"] (node path parts)."""
    parts = module.split(".")
    out: list[str] = []
    for part in parts:
        if part.isdigit() and out:
            out[-1] = f"{out[-1]}.{part}"
        else:
            out.append(part)
    return out


def _rotary_cache(shape: LlamaShape) -> tuple[np.ndarray, np.ndarray]:
    half = shape.head_dim // 2
    inv_freq = 1.0 / (shape.rope_theta ** (np.arange(0, half, dtype=np.float64) * 2 / shape.head_dim))
    angles = np.outer(np.arange(shape.max_position_embeddings, dtype=np.float64), inv_freq)
    return np.cos(angles).astype(np.float16), np.sin(angles).astype(np.float16)


def build_fused_llama(
    shape: LlamaShape,
    output_dir: str | Path,
    *,
    generator: Generator | None = None,
    std: float = 0.02,
    progress: Callable[[str], None] | None = None,
    static_cache: bool = False,
    weights: str = "float16",
    code_generator: CodeGenerator | None = None,
    block_size: int = INT4_BLOCK_SIZE,
) -> Path:
    """Write model.onnx (+ model.onnx.data) and config.json for `shape` into output_dir.

    Returns the model path. float16 activations, KV cache and logits.
    static_cache: the GenAI-style graph with a fixed-length KV buffer shared by past and
    present (see the module's docstring); default: the Optimum-style interface.
    weights: "float16" (MatMul projections, q/k/v separate) or "int4" (the GenAI builder's
    CUDA int4 graph: MatMulNBits projections and LM head, q/k/v packed; codes from
    `code_generator`, scales from `generator`; block_size must divide the hidden and
    intermediate sizes).
    """
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, not {weights!r}")
    int4 = weights == "int4"
    if int4 and (block_size < 16 or block_size & (block_size - 1)
                 or shape.hidden_size % block_size or shape.intermediate_size % block_size):
        raise ValueError(f"block_size {block_size} must be a power of two of 16 or more dividing "
                         f"{shape.hidden_size} and {shape.intermediate_size}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    draw = generator or numpy_generator()
    draw_codes = code_generator or numpy_code_generator()
    store = _Weights(output_dir, "model.onnx.data")
    f16 = TensorProto.FLOAT16
    h, inter, n_layers = shape.hidden_size, shape.intermediate_size, shape.num_hidden_layers
    heads, kv_heads, hd = shape.num_attention_heads, shape.num_key_value_heads, shape.head_dim
    nodes: list[onnx.NodeProto] = []
    small: list[onnx.TensorProto] = []

    def node(op: str, inputs: list[str], outputs: list[str], name: str, domain: str = "", **attrs) -> None:
        nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))

    def const(name: str, array: np.ndarray) -> str:
        small.append(onnx.numpy_helper.from_array(array, name))
        return name

    def projection(module: str, x: str, k: int, n: int, output: str | None = None) -> str:
        """One projection of `module` ("model.layers.3.mlp.gate_proj", "lm_head") on x [.., k] -> [.., n]."""
        path = "/" + "/".join(_path_parts(module))
        if not int4:
            w = store.add(f"{module}.weight", draw(module, (k, n), std))
            out = output or f"{path}/MatMul_output_0"
            node("MatMul", [x, w], [out], f"{path}/MatMul")
            return out
        blocks = k // block_size
        codes = store.add(f"{module}.MatMul.weight_Q4", draw_codes(module, (n, blocks, block_size // 2)))
        scales = np.abs(draw(module + ".scales", (n, blocks), std / np.sqrt(_CODE_VARIANCE)))
        scales = store.add(f"{module}.MatMul.weight_scales", scales.astype(np.float16))
        out = output or f"{path}/MatMul/output_0"
        node("MatMulNBits", [x, codes, scales], [out], f"{path}/MatMul_Q4", domain=MS_DOMAIN, K=k, N=n, bits=4,
             block_size=block_size, accuracy_level=0)
        return out

    try:
        embed = store.add("model.embed_tokens.weight", draw("embed", (shape.vocab_size, h), std))
        node("Gather", [embed, "input_ids"], ["/model/embed_tokens/Gather_output_0"], "/model/embed_tokens/Gather")
        # GroupQueryAttention's lengths, from the attention mask (as ONNX Runtime GenAI's builder).
        mask = "/model/attn_mask_reformat/attn_mask_subgraph"
        node("ReduceSum", ["attention_mask", const("/model/constants/axes_1", np.array([1], np.int64))],
             [f"{mask}/ReduceSum_output_0"], f"{mask}/ReduceSum", keepdims=0)
        node("Sub", [f"{mask}/ReduceSum_output_0", const("/model/constants/one_i64", np.array(1, np.int64))],
             [f"{mask}/Sub_output_0"], f"{mask}/Sub")
        node("Cast", [f"{mask}/Sub_output_0"], [f"{mask}/seqlens_k"], f"{mask}/Sub/Cast", to=TensorProto.INT32)
        node("Shape", ["attention_mask"], [f"{mask}/Shape_output_0"], f"{mask}/Shape")
        node("Gather", [f"{mask}/Shape_output_0", const("/model/constants/one_scalar", np.array(1, np.int64))],
             [f"{mask}/Gather_output_0"], f"{mask}/Gather", axis=0)
        node("Cast", [f"{mask}/Gather_output_0"], [f"{mask}/total_seq_len"], f"{mask}/Gather/Cast",
             to=TensorProto.INT32)
        cos, sin = _rotary_cache(shape)
        cos_name = const("cos_cache", cos)
        sin_name = const("sin_cache", sin)

        attn_module = "attn" if int4 else "self_attn"  # the GenAI builder's name / the exporters'
        residual = "/model/embed_tokens/Gather_output_0"
        pending = None  # output of the previous layer's down_proj, added to the residual by the next norm
        for i in range(n_layers):
            p = f"/model/layers.{i}"
            m = f"model.layers.{i}"
            ln = store.add(f"{m}.input_layernorm.weight", draw("ln", (h,), 0))
            normed = f"{p}/input_layernorm/output_0"
            if pending is None:
                node("SimplifiedLayerNormalization", [residual, ln], [normed], f"{p}/input_layernorm/LayerNorm",
                     axis=-1, epsilon=shape.rms_norm_eps, stash_type=1)
            else:
                new_residual = f"{p}/input_layernorm/output_3"
                node("SkipSimplifiedLayerNormalization", [pending, residual, ln],
                     [normed, "", "", new_residual], f"{p}/input_layernorm/SkipLayerNorm", domain=MS_DOMAIN,
                     epsilon=shape.rms_norm_eps)
                residual = new_residual
            if int4:  # packed: GroupQueryAttention splits q, k, v itself
                qkv = [projection(f"{m}.attn.qkv_proj", normed, h, (heads + 2 * kv_heads) * hd), "", ""]
            else:
                qkv = [projection(f"{m}.self_attn.{kind}", normed, h, n_out) for kind, n_out in
                       (("q_proj", heads * hd), ("k_proj", kv_heads * hd), ("v_proj", kv_heads * hd))]
            attn = f"{p}/{attn_module}/GroupQueryAttention_output_0"
            node("GroupQueryAttention",
                 [*qkv, f"past_key_values.{i}.key", f"past_key_values.{i}.value", f"{mask}/seqlens_k",
                  f"{mask}/total_seq_len", cos_name, sin_name],
                 [attn, f"present.{i}.key", f"present.{i}.value"], f"{p}/{attn_module}/GroupQueryAttention",
                 domain=MS_DOMAIN, num_heads=heads, kv_num_heads=kv_heads, do_rotary=1, rotary_interleaved=0,
                 scale=float(1.0 / np.sqrt(hd)))
            o_out = projection(f"{m}.{attn_module}.o_proj", attn, heads * hd, h)
            post_ln = store.add(f"{m}.post_attention_layernorm.weight", draw("ln", (h,), 0))
            mlp_in = f"{p}/post_attention_layernorm/output_0"
            mid_residual = f"{p}/post_attention_layernorm/output_3"
            node("SkipSimplifiedLayerNormalization", [o_out, residual, post_ln], [mlp_in, "", "", mid_residual],
                 f"{p}/post_attention_layernorm/SkipLayerNorm", domain=MS_DOMAIN, epsilon=shape.rms_norm_eps)
            residual = mid_residual
            gate = projection(f"{m}.mlp.gate_proj", mlp_in, h, inter)
            up = projection(f"{m}.mlp.up_proj", mlp_in, h, inter)
            node("Sigmoid", [gate], [f"{p}/mlp/act_fn/Sigmoid_output_0"], f"{p}/mlp/act_fn/Sigmoid")
            node("Mul", [gate, f"{p}/mlp/act_fn/Sigmoid_output_0"], [f"{p}/mlp/act_fn/Mul_output_0"],
                 f"{p}/mlp/act_fn/Mul")
            node("Mul", [f"{p}/mlp/act_fn/Mul_output_0", up], [f"{p}/mlp/Mul_output_0"], f"{p}/mlp/Mul")
            pending = projection(f"{m}.mlp.down_proj", f"{p}/mlp/Mul_output_0", inter, h)
            if progress is not None:
                progress(f"layer {i + 1}/{n_layers}")
        final_ln = store.add("model.norm.weight", draw("ln", (h,), 0))
        node("SkipSimplifiedLayerNormalization", [pending, residual, final_ln], ["/model/norm/output_0"],
             "/model/norm/SkipLayerNorm", domain=MS_DOMAIN, epsilon=shape.rms_norm_eps)
        projection("lm_head", "/model/norm/output_0", h, shape.vocab_size, output="logits")
    finally:
        store.close()

    kv_shape = ["batch_size", kv_heads, "past_sequence_length", hd]
    present_shape = ["batch_size", kv_heads, "total_sequence_length", hd]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", f16, ["batch_size", "sequence_length", shape.vocab_size])]
    for i in range(n_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f16, kv_shape))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f16, present_shape))
    graph = helper.make_graph(nodes, "llama_fused", inputs, outputs, small + store.tensors)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
        producer_name="wina-onnx fused_llama")
    model.ir_version = IR_VERSION
    if static_cache:
        make_static_cache(model)
    path = output_dir / "model.onnx"
    onnx.save_model(model, str(path))
    (output_dir / "config.json").write_text(json.dumps(shape.config_json(), indent=2) + "\n", encoding="utf-8")
    return path


def node_counts(model_path: str | Path) -> dict[str, int]:
    """Nodes of the model by op type, and their total under "total" (weights not loaded)."""
    model = onnx.load(str(model_path), load_external_data=False)
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    counts["total"] = len(model.graph.node)
    return counts


# The static-cache variant ---------------------------------------------------------------

_MASK_PREFIX = "/model/attn_mask_reformat/"
_MAX_LEN = "max_sequence_length"


def make_static_cache(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn a graph of this module (dense or after the WINA pass) into the static-cache variant, in place.

    The attention-mask subgraph goes; every GroupQueryAttention takes seqlens_k and
    total_seq_len straight from the graph inputs; attention_mask and position_ids are
    dropped; the KV inputs and outputs get the length axis "max_sequence_length". Weights,
    node names and metadata are untouched, so the WINA pass's records still apply.
    """
    graph = model.graph
    if any(i.name == SEQLENS_K for i in graph.input):
        return model  # already static
    gqa = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    if not gqa:
        raise ValueError("no GroupQueryAttention node: not a graph of wina_onnx.testing.fused_llama")
    dropped = {n.name for n in graph.node if n.name.startswith(_MASK_PREFIX)}
    kept = [n for n in graph.node if n.name not in dropped]
    for n in gqa:
        n.input[5], n.input[6] = SEQLENS_K, TOTAL_SEQ_LEN
    used = {name for n in kept for name in n.input}
    del graph.node[:]
    graph.node.extend(kept)
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)

    batch = "batch_size"
    inputs = []
    for value in graph.input:
        if value.name in ("attention_mask", "position_ids"):
            continue
        if value.name == "input_ids":
            batch_dim = value.type.tensor_type.shape.dim[0]
            batch = batch_dim.dim_param or batch
            inputs.append(value)
            inputs.append(helper.make_tensor_value_info(SEQLENS_K, TensorProto.INT32, [batch]))
            inputs.append(helper.make_tensor_value_info(TOTAL_SEQ_LEN, TensorProto.INT32, []))
            continue
        if value.name.startswith("past_key_values."):
            value.type.tensor_type.shape.dim[2].dim_param = _MAX_LEN
        inputs.append(value)
    del graph.input[:]
    graph.input.extend(inputs)
    for value in graph.output:
        if value.name.startswith("present."):
            value.type.tensor_type.shape.dim[2].dim_param = _MAX_LEN
    return model


def write_static_cache_model(model_path: str | Path, output_path: str | Path) -> Path:
    """Write the static-cache variant of `model_path` to `output_path` (same folder: the weights file is shared)."""
    model_path, output_path = Path(model_path), Path(output_path)
    if model_path.resolve().parent != output_path.resolve().parent:
        raise ValueError("write the static-cache model beside the original: it refers to the same weights file")
    model = onnx.load(str(model_path), load_external_data=False)
    make_static_cache(model)
    onnx.save_model(model, str(output_path))
    return output_path
