"""`optimize --quantize int4`: a float model's projections as ONNX Runtime's 4-bit `MatMulNBits`.

The quantization is ONNX Runtime's own (`MatMulNBitsQuantizer`, its default round-to-nearest
block quantizer, as the ONNX Runtime GenAI model builder uses it); wina-onnx only picks
which MatMuls it quantizes: the decoder projections the WINA pass gates (passes.candidates),
never the LM head or the embeddings. The defaults are the builder's for its CPU models:
blocks of 32 input features, symmetric codes (no zero points) and accuracy_level 4
(the CPU kernel may quantize the activations to int8 per block). The pass then gates the
MatMulNBits nodes like any int4 model's (passes.nbits).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from ..errors import ConfigError
from ..progress import stage

QUANTIZE_CHOICES = ("int4",)
DEFAULT_BLOCK_SIZE = 32
DEFAULT_ACCURACY_LEVEL = 4
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class QuantizeConfig:
    """How `optimize --quantize int4` quantizes (MatMulNBitsQuantizer's options)."""

    bits: int = 4
    block_size: int = DEFAULT_BLOCK_SIZE
    symmetric: bool = True
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL

    def validate(self) -> None:
        """Raise ConfigError for options MatMulNBits does not accept."""
        if self.bits != 4:
            raise ConfigError(f"only 4-bit quantization is supported, got {self.bits} bits")
        if self.block_size < 16 or self.block_size > 256 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"--block-size must be a power of two from 16 to 256, got {self.block_size}")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise ConfigError(f"--accuracy-level must be one of {', '.join(map(str, ACCURACY_LEVELS))}, "
                              f"got {self.accuracy_level}")

    def to_json(self) -> dict:
        """The settings, as recorded in the optimized model's metadata."""
        return asdict(self)


def quantize_projections(model: onnx.ModelProto, config: QuantizeConfig, *, include: list[str] | None = None,
                         exclude: list[str] | None = None) -> list[str]:
    """Replace the model's gateable float projections by 4-bit MatMulNBits, in place.

    Returns the names of the new MatMulNBits nodes (MatMulNBitsQuantizer names them
    `<MatMul name>_Q4`). Other MatMuls (LM head, attention products) stay as they are.
    """
    config.validate()
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
        from onnxruntime.quantization.matmul_nbits_quantizer import logger as quantizer_logger
    except ImportError as exc:
        raise ConfigError(f"--quantize needs ONNX Runtime's quantization tools, which cannot be imported: {exc} "
                          "(pip install onnx-ir)") from None
    from ..passes.candidates import find_candidates, node_display_name

    # The quantizer selects nodes by name: give unnamed MatMuls the name the pass shows for them.
    for node in model.graph.node:
        if node.op_type == "MatMul" and not node.name:
            node.name = node_display_name(node)
    candidates, _ = find_candidates(model.graph, include=include, exclude=exclude)
    chosen = {c.node_name for c in candidates if c.quantized is None}
    if not chosen:
        raise ConfigError("--quantize int4: the model has no float projection MatMul to quantize "
                          "(4-bit MatMulNBits models are gated without --quantize)")
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in chosen]
    quantizer_logger.setLevel(logging.WARNING)  # it logs a line per node at INFO
    quantizer = MatMulNBitsQuantizer(
        model, bits=config.bits, block_size=config.block_size, is_symmetric=config.symmetric,
        accuracy_level=config.accuracy_level, nodes_to_exclude=others, op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    quantized = quantizer.model.model
    if quantized is not model:
        model.CopyFrom(quantized)
    suffix = f"_Q{config.bits}"
    return [n.name for n in model.graph.node if n.op_type == "MatMulNBits" and n.name.removesuffix(suffix) in chosen]


def quantize_model_file(input_path: str | Path, output_path: str | Path, config: QuantizeConfig, *,
                        include: list[str] | None = None, exclude: list[str] | None = None) -> list[str]:
    """quantize_projections on the model file `input_path`, written to `output_path`
    (its weights inline under 2 GiB, else in one external file)."""
    from ..modelio import load_model, save_model_atomic

    model = load_model(Path(input_path))
    names = quantize_projections(model, config, include=include, exclude=exclude)
    save_model_atomic(model, Path(output_path))
    return names


def add_quantize_options(parser) -> None:
    """The `--quantize` options of `optimize` (an argparse parser)."""
    group = parser.add_argument_group("4-bit weights")
    group.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=None,
                       help="first quantize the float projections with ONNX Runtime's MatMulNBitsQuantizer "
                            "(4-bit blocks, MatMulNBits), then calibrate and gate the 4-bit model "
                            "(WinaSparseMatMulNBits); a model that already has MatMulNBits projections (e.g. "
                            "from the ONNX Runtime GenAI model builder) is gated without this option "
                            "(default: none, the weights stay as they are)")
    group.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE,
                       help=f"--quantize: input features per scale, a power of two from 16 to 256 "
                            f"(default: {DEFAULT_BLOCK_SIZE}, as the GenAI builder)")
    group.add_argument("--accuracy-level", type=int, choices=ACCURACY_LEVELS, default=DEFAULT_ACCURACY_LEVEL,
                       help="--quantize: MatMulNBits' accuracy_level, the lowest activation precision the kernel "
                            "may use (0 float, 4 int8); default: 4, as the GenAI builder's CPU models")
    group.add_argument("--asymmetric", action="store_true",
                       help="--quantize: a zero point per block (uint8) instead of symmetric codes "
                            "(the GenAI builder's default is symmetric)")


def quantize_config_from_args(args) -> QuantizeConfig:
    """The QuantizeConfig of parsed `optimize --quantize` options (ConfigError when they conflict)."""
    if getattr(args, "transform", False):
        raise ConfigError("--transform cannot be combined with --quantize: the rotation works on float weights "
                          "only; optimize the float model with --transform, or quantize without it")
    config = QuantizeConfig(block_size=args.block_size, symmetric=not args.asymmetric,
                            accuracy_level=args.accuracy_level)
    config.validate()
    return config


class QuantizedCopy:
    """A temporary folder beside `output` holding the 4-bit copy of `model` and its tokenizer and
    config files, so the copy can be calibrated and gated like any model; removed on exit."""

    def __init__(self, model: str | Path, output: str | Path, config: QuantizeConfig, *,
                 include: list[str] | None = None, exclude: list[str] | None = None, progress: bool = True) -> None:
        self.model, self.output, self.config = Path(model), Path(output), config
        self.progress = progress
        self.include, self.exclude = include, exclude
        self.folder: Path | None = None
        self.quantized: list[str] = []

    def __enter__(self) -> Path:
        self.config.validate()
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=".wina-int4-", dir=self.output.parent))
        try:
            for pattern in ("*.json", "*.jinja", "*.txt"):
                for file in self.model.parent.glob(pattern):
                    shutil.copy2(file, self.folder / file.name)
            path = self.folder / "model.onnx"
            stage("optimize", f"quantizing the projections to 4 bits (block {self.config.block_size}, "
                  f"{'symmetric' if self.config.symmetric else 'asymmetric'}, accuracy_level "
                  f"{self.config.accuracy_level}) with ONNX Runtime's MatMulNBitsQuantizer", enabled=self.progress)
            self.quantized = quantize_model_file(self.model, path, self.config, include=self.include,
                                                 exclude=self.exclude)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        return path

    def __exit__(self, *exc) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
