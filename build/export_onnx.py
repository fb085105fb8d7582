"""PyTorch classifier -> ONNX, with dynamic batch and sequence axes.

The graph takes `input_ids`, `attention_mask`, `token_type_ids` (int64, (B, T)) and, for tabular
models, `features` (float32, (B, k)); it returns `logits` (B, num_labels). These names are the
contract with the Triton model configs and the tokenizer model.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from contract.files import atomic_dir, atomic_write
from contract.names import DEFAULT_MAX_LENGTH, FEATURES, LOGITS, TEXT_INPUTS

OPSET = 17


class LogitsOnly(nn.Module):
    """Positional inputs in the contract's order, a plain tensor out (export needs no dataclass)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids, features=None):
        return self.model(input_ids, attention_mask, token_type_ids, features=features).logits


def input_names(model: nn.Module) -> list[str]:
    return list(TEXT_INPUTS) + ([FEATURES] if model.config.num_tabular_features else [])


def example_inputs(model: nn.Module, batch: int = 2, seq: int = 16) -> tuple[torch.Tensor, ...]:
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    lo, hi = (1000, 2000) if vocab > 2000 else (1, vocab)  # ordinary word ids; tiny test vocabularies too
    ids = torch.randint(lo, hi, (batch, seq), device=device)
    ids[:, 0] = 101 if vocab > 101 else 0  # [CLS] in BERT's uncased vocabulary
    inputs = [ids, torch.ones_like(ids), torch.zeros_like(ids)]
    if model.config.num_tabular_features:
        inputs.append(torch.zeros(batch, model.config.num_tabular_features, device=device))
    return tuple(inputs)


def export_onnx(model: nn.Module, out_path: str | Path, opset: int = OPSET, packed: bool = True) -> Path:
    """Export `model` as it is (fp32, fp16 after .half(), or with modelopt Q/DQ quantizers inserted).

    packed: the graph runs its dense layers on the real tokens only (training.model.Packing), same
    inputs and outputs. On the tweets this made ONNX Runtime fp32 ~20% faster per batch on CPU;
    padded graphs (packed=False) are the conservative choice for TensorRT.

    Uses the TorchScript exporter (dynamo=False): the dynamo exporter fails on fake-quant ops.
    Written to a temp file and renamed, so a failed export never leaves a half-written model.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    names = input_names(model)
    dynamic = {n: {0: "batch", 1: "sequence"} for n in TEXT_INPUTS}
    if FEATURES in names:
        dynamic[FEATURES] = {0: "batch"}
    dynamic[LOGITS] = {0: "batch"}
    wrapper = LogitsOnly(model).eval()
    was_packed, model.bert.packed = model.bert.packed, packed
    try:
        with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
            tmp_path = Path(tmp) / out_path.name
            with torch.no_grad():
                torch.onnx.export(wrapper, example_inputs(model), str(tmp_path), input_names=names,
                                  output_names=[LOGITS], dynamic_axes=dynamic, opset_version=opset,
                                  dynamo=False, do_constant_folding=True)
            tmp_path.replace(out_path)
    finally:
        model.bert.packed = was_packed
    return out_path


# ---- precision variants --------------------------------------------------------------------------
# int8dyn: ONNX Runtime's dynamic quantization of the fp32 graph (build/quantize_dynamic.py), the
# CPU's alternative to the QAT graph; which is faster depends on the CPU's INT8 instructions.
PRECISIONS = ("fp32", "fp16", "int8", "int8dyn")
# int8 stays padded: packed tensors are 3-D, so their Linears export as integer MatMuls (a 2-D
# packed Linear exports as a Gemm that ONNX Runtime leaves in float on dequantized weights), but a
# packed int8 graph runs no faster than the padded one served in length-sorted chunks, and the
# padded graph is the one TensorRT takes. int8dyn is quantized from a padded fp32 export for the
# same reason (build/quantize_dynamic.py).
PACKABLE = ("fp32", "fp16")

def onnx_filename(precision: str) -> str:
    return f"model_{precision}.onnx"


def convert_fp16(fp32_path: str | Path, out_path: str | Path) -> Path:
    """fp32 ONNX -> fp16 ONNX whose inputs and `logits` output keep their fp32/int64 types.

    Exporting a `.half()` model does not give a valid graph with this torch (the TorchScript
    exporter's scaled_dot_product_attention builds its mask in fp32, so a LayerNormalization gets
    fp32 and fp16 inputs), on CPU and GPU alike. So fp16 is a graph conversion of the verified fp32
    export, done by the float16 converter that ships inside onnxruntime
    (`onnxruntime.transformers.float16`, no extra package). Keeping the I/O types means every
    precision has the same signature, so Triton configs differ only in the model file.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    return atomic_write(out_path, lambda tmp: onnx.save(model, str(tmp)))


def export_variants(checkpoint: str | Path, out_dir: str | Path, precisions=("fp32", "int8"),
                    quantized_dir: str | Path | None = None, adapter: str | Path | None = None,
                    opset: int = OPSET, log=print, packed: bool = True,
                    reduce_range: str = "auto") -> tuple[dict[str, Path], dict]:
    """Write model_<precision>.onnx for each precision into `out_dir` (no verification here).

    fp32 and fp16 come from the checkpoint (LoRA merged when an adapter is given); int8 from the
    quantized model that `python -m build quantize` saved in `quantized_dir`; int8dyn from a padded
    fp32 export, quantized by ONNX Runtime (reduce_range: auto | on | off, see
    build/quantize_dynamic.py). Returns the paths and what the int8dyn quantization used.
    """
    from build.artifacts import BuildError, load_model

    out_dir = Path(out_dir)
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise BuildError(f"unknown precision {bad}: choose from {PRECISIONS}")
    if "int8" in precisions and quantized_dir is None:
        raise BuildError("int8 needs the quantized model: pass --quantized DIR (output of `python -m build quantize`)")
    paths: dict[str, Path] = {}
    settings: dict = {}
    model = None
    if "fp32" in precisions or "fp16" in precisions:
        t0 = time.time()
        model = load_model(checkpoint, adapter)
        paths["fp32"] = export_onnx(model, out_dir / onnx_filename("fp32"), opset, packed)
        log(f"exported fp32 -> {paths['fp32']} [{time.time() - t0:.0f}s]")
    if "fp16" in precisions:
        paths["fp16"] = convert_fp16(paths["fp32"], out_dir / onnx_filename("fp16"))
        log(f"converted fp16 -> {paths['fp16']}")
    if "int8dyn" in precisions:
        from build.quantize_dynamic import quantize_dynamic_graph, resolve_reduce_range

        t0 = time.time()
        source = paths.get("fp32") if not packed else None
        if source is None:   # the padded fp32 graph, exported for this alone
            source = export_onnx(model or load_model(checkpoint, adapter), out_dir / ".int8dyn-source.onnx", opset,
                                 packed=False)
        paths["int8dyn"] = out_dir / onnx_filename("int8dyn")
        settings = quantize_dynamic_graph(source, paths["int8dyn"], resolve_reduce_range(reduce_range))
        if source != paths.get("fp32"):
            source.unlink()
        log(f"quantized int8 dynamically -> {paths['int8dyn']} (reduce_range {settings['reduce_range']}) "
            f"[{time.time() - t0:.0f}s]")
    if "int8" in precisions:
        from build.quantize import load_quantized

        t0 = time.time()
        paths["int8"] = export_onnx(load_quantized(quantized_dir), out_dir / onnx_filename("int8"), opset,
                                    packed=packed and "int8" in PACKABLE)
        log(f"exported int8 QDQ -> {paths['int8']} [{time.time() - t0:.0f}s]")
    if "fp32" not in precisions and "fp32" in paths:  # exported only as the source of fp16
        paths.pop("fp32").unlink()
    return paths, settings


def build_onnx(checkpoint: str | Path, out_dir: str | Path, test, precisions=("fp32", "int8"),
               quantized_dir: str | Path | None = None, adapter: str | Path | None = None,
               max_length: int = DEFAULT_MAX_LENGTH, opset: int = OPSET, log=print, packed: bool = True,
               reduce_range: str = "auto") -> list:
    """The `onnx` stage: export, verify every file against PyTorch fp32 on `test`, then swap `out_dir` in.

    `out_dir` gets model_<precision>.onnx, the checkpoint's config/label/tokenizer files,
    build_report.{json,md} and reference.json (the held-out texts and PyTorch fp32's logits, for
    the TensorRT plans' check). A rejected build leaves `out_dir` as it was and writes its report
    to `<out_dir>.rejected/` for inspection.
    """
    import json
    import shutil

    from build.artifacts import copy_checkpoint_metadata
    from contract.cpu import cpu_info, describe
    from build.verify import ParityError, raise_on_failure, verify_artifacts, write_report

    out_dir = Path(out_dir)
    quant_report = None
    if "int8" in precisions and quantized_dir is not None and (Path(quantized_dir) / "quantize.json").exists():
        quant_report = json.loads((Path(quantized_dir) / "quantize.json").read_text())
    info = {"checkpoint": str(checkpoint), "adapter": str(adapter) if adapter else None,
            "quantized": str(quantized_dir) if quantized_dir else None, "opset": opset,
            "max_length": max_length, "held-out texts": len(test),
            "packed": ", ".join(p for p in precisions if packed and p in PACKABLE) or "none",
            "cpu": describe(cpu_info())}
    rejected = out_dir.with_name(out_dir.name + ".rejected")
    try:
        with atomic_dir(out_dir) as tmp:
            paths, dynamic = export_variants(checkpoint, tmp, precisions, quantized_dir, adapter, opset, log, packed,
                                             reduce_range)
            if dynamic:
                info["int8dyn"] = ", ".join(f"{k}: {v}" for k, v in dynamic.items())
            results = verify_artifacts(checkpoint, paths, test, max_length, adapter=adapter, log=log,
                                       reference_to=tmp)
            for r in results:
                r.path = str(out_dir / Path(r.path).name)
            copy_checkpoint_metadata(checkpoint, tmp)
            write_report(tmp, results, quant_report, info)
            if not all(r.passed for r in results):
                shutil.rmtree(rejected, ignore_errors=True)
                rejected.mkdir(parents=True)
                for name in ("build_report.json", "build_report.md"):
                    shutil.copy2(tmp / name, rejected / name)
            raise_on_failure(results)
    except ParityError as e:
        raise ParityError(f"{e} (nothing written to {out_dir}; report in {rejected})") from None
    shutil.rmtree(rejected, ignore_errors=True)
    return results


# ---- command line: python -m build onnx ----------------------------------------------------------
def add_arguments(p) -> None:
    from build.artifacts import add_data_arguments

    p.add_argument("--checkpoint", type=Path, required=True, help="fine-tuned checkpoint folder (the fp32 reference)")
    p.add_argument("--adapter", type=Path, default=None, help="LoRA adapter file to merge first")
    p.add_argument("--quantized", type=Path, default=None,
                   help="output of `python -m build quantize` (default: quantized/ beside the checkpoint folder)")
    p.add_argument("--precisions", default="fp32,int8", help=f"comma-separated, from {','.join(PRECISIONS)}")
    p.add_argument("--out", type=Path, required=True, help="output folder (replaced atomically once verified)")
    p.add_argument("--test-texts", type=int, default=None, help="verify on a random sample of N test texts (default: all)")
    p.add_argument("--opset", type=int, default=OPSET)
    p.add_argument("--padded", action="store_true",
                   help="export padded graphs (dense layers on every position) instead of packed ones: "
                        "the conservative input for TensorRT engines")
    p.add_argument("--reduce-range", choices=("auto", "on", "off"), default="auto",
                   help="int8dyn: 7-bit weights (ONNX Runtime's advice for CPUs without VNNI or AMX); auto: "
                        "on when the CPU running the build lacks both (default)")
    add_data_arguments(p)


def run(args) -> int:
    from build.artifacts import BuildError, examples_from_args

    precisions = tuple(p for p in args.precisions.split(",") if p)
    if args.opset < 17:
        raise BuildError(f"--opset {args.opset}: needs 17 or newer (LayerNormalization)")
    quantized = args.quantized or (args.checkpoint.parent / "quantized")
    test = examples_from_args(args, ["test"], args.test_texts)["test"]
    results = build_onnx(args.checkpoint, args.out, test, precisions, quantized if "int8" in precisions else None,
                         args.adapter, args.max_length, args.opset, packed=not args.padded,
                         reduce_range=args.reduce_range)
    print(f"wrote {args.out}: " + ", ".join(f"{r.precision} ok" for r in results) + f"; report {args.out / 'build_report.md'}")
    return 0
