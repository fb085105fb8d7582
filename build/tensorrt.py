"""TensorRT plans (GPU only): fp16 from the fp32 ONNX, int8 by explicit quantization from the QDQ ONNX.

Each plan has one optimization profile over batch (1 .. max) and sequence length (min/opt/max) for
the three text inputs. It is built with the TensorRT Python API when `import tensorrt` works, else
with `trtexec` from PATH (or /usr/src/tensorrt/bin, where NVIDIA's containers keep it). Without
either, nothing is written and the stage fails with a message saying where TensorRT runs.

Plans are built from padded graphs only (`python -m build onnx --padded`): a packed graph (dense
layers on the real tokens only: NonZero, CumSum and data-dependent shapes) has never been tried in
TensorRT, so it is refused before anything is built unless --allow-packed asks to try. A timing
cache beside the plan folder (trt-timing.cache) keeps TensorRT's kernel timings, so a rebuild on
the same GPU and TensorRT skips most of the tuning. New plans are checked on the `onnx` stage's
held-out texts with the ONNX gates (build/verify_plans.py) before they replace the old ones; a
plan that fails is kept in <out>.rejected/ with its report, and the old plans stay.

A plan only runs on the TensorRT version (and GPU family) that built it: build inside the same
release as the Triton server (Triton 24.10 <-> TensorRT 10.5), e.g. in `nvcr.io/nvidia/tensorrt:24.10-py3`.

This module imports nothing beyond the standard library at load time, so `python -m build engines`
runs in NVIDIA's TensorRT container with its own Python.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from contract.errors import UserError

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
TRTEXEC_FALLBACKS = ("/usr/src/tensorrt/bin/trtexec",)
ENGINE_PRECISIONS = ("fp16", "int8")
# which ONNX each plan is built from (out of the `onnx` stage's folder)
SOURCE_ONNX = {"fp16": "model_fp32.onnx", "int8": "model_int8.onnx"}


# ONNX ops that training.model.Packing exports to and a padded BERT graph never has
PACKING_OPS = ("NonZero", "CumSum")
TIMING_CACHE = "trt-timing.cache"


class TensorRTUnavailable(UserError, RuntimeError):
    pass


class PlanError(UserError):
    """A plan that cannot be built, loaded or run from what was given; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Profile:
    """Shapes of the optimization profile: batch 1..max_batch, sequence min_seq..max_seq."""
    max_batch: int = 64
    opt_batch: int = 32
    min_seq: int = 1
    opt_seq: int = 64
    max_seq: int = 128

    def __post_init__(self):
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need 1 <= opt_batch ({self.opt_batch}) <= max_batch ({self.max_batch})")
        if not 1 <= self.min_seq <= self.opt_seq <= self.max_seq:
            raise ValueError(f"need 1 <= min_seq ({self.min_seq}) <= opt_seq ({self.opt_seq}) <= max_seq ({self.max_seq})")

    def shapes(self) -> dict[str, tuple[int, int]]:
        return {"min": (1, self.min_seq), "opt": (self.opt_batch, self.opt_seq), "max": (self.max_batch, self.max_seq)}


def precision_flags(precision: str) -> list[str]:
    """fp16: TensorRT may pick fp16 kernels. int8: the Q/DQ nodes fix where INT8 runs (explicit
    quantization; the INT8 flag lets TensorRT 10.5 honour them); what they leave in float may use fp16."""
    if precision == "fp16":
        return ["--fp16"]
    if precision == "int8":
        return ["--int8", "--fp16"]
    raise ValueError(f"unknown engine precision {precision!r}: choose from {ENGINE_PRECISIONS}")


def packing_ops(onnx_path: str | Path, ops=PACKING_OPS, block: int = 1 << 24) -> list[str]:
    """Which of `ops` the graph has as a node's op_type, read from the file's bytes.

    A node's op_type is field 4 of ONNX's NodeProto: the byte 0x22, the name's length, the name.
    Reading that pattern needs no `onnx` package (the builder image has none); the file is read in
    blocks, so a graph near ONNX's 2 GB limit costs no more memory than a small one.
    """
    patterns = {op: b"\x22" + bytes([len(op)]) + op.encode() for op in ops}
    found, tail = set(), b""
    with open(onnx_path, "rb") as f:
        while chunk := f.read(block):
            data = tail + chunk
            found |= {op for op, pat in patterns.items() if pat in data}
            tail = data[-(max(map(len, patterns.values())) - 1):]
    return [op for op in ops if op in found]


def trtexec_command(onnx_path: str | Path, plan_path: str | Path, precision: str, profile: Profile = Profile(),
                    tabular_features: int = 0, workspace_mib: int = 4096, trtexec: str = "trtexec",
                    timing_cache: str | Path | None = None) -> list[str]:
    """The exact trtexec command line for one plan (a tabular model's `features` input is (B, k))."""
    def spec(kind):
        b, t = profile.shapes()[kind]
        dims = [f"{name}:{b}x{t}" for name in TEXT_INPUTS]
        return ",".join(dims + ([f"features:{b}x{tabular_features}"] if tabular_features else []))

    return [trtexec, f"--onnx={onnx_path}", f"--saveEngine={plan_path}",
            f"--minShapes={spec('min')}", f"--optShapes={spec('opt')}", f"--maxShapes={spec('max')}",
            *precision_flags(precision), f"--memPoolSize=workspace:{workspace_mib}M", "--skipInference",
            *([f"--timingCacheFile={timing_cache}"] if timing_cache else [])]


def find_backend() -> tuple[str, str] | None:
    """("python", tensorrt version) or ("trtexec", path), or None when TensorRT is absent."""
    try:
        import tensorrt as trt
        return "python", trt.__version__
    except Exception:
        pass
    exe = shutil.which("trtexec") or next((p for p in TRTEXEC_FALLBACKS if os.access(p, os.X_OK)), None)
    return ("trtexec", exe) if exe else None


def build_with_python_api(onnx_path: Path, plan_path: Path, precision: str, profile: Profile,
                          workspace_mib: int = 4096, timing_cache: Path | None = None, log=print) -> None:
    import tensorrt as trt

    from contract.files import atomic_write_bytes

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # needed before TensorRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT could not parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    opt = builder.create_optimization_profile()
    shapes = profile.shapes()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name in TEXT_INPUTS:
            opt.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
        else:  # tabular `features` (B, k): k is fixed by the export
            k = network.get_input(i).shape[1]
            opt.set_shape(name, (1, k), (profile.opt_batch, k), (profile.max_batch, k))
    config.add_optimization_profile(opt)
    if timing_cache is not None:
        known = timing_cache.read_bytes() if timing_cache.is_file() else b""
        if not config.set_timing_cache(config.create_timing_cache(known), ignore_mismatch=False):
            log(f"{timing_cache}: made by another GPU or TensorRT version; starting a new timing cache")
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise PlanError(f"{onnx_path}: TensorRT failed to build the {precision} engine (see its log above)")
    plan_path.write_bytes(bytes(plan))
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))


def tabular_features(onnx_dir: Path) -> int:
    """k of a tabular model's `features` input, from the config.json the `onnx` stage copies beside it."""
    cfg = onnx_dir / "config.json"
    return int(json.loads(cfg.read_text()).get("num_tabular_features", 0)) if cfg.exists() else 0


def check_sources(onnx_dir: Path, precisions, allow_packed: bool = False) -> dict[str, Path]:
    """The ONNX file each plan is built from; refuses missing files and packed graphs (unless allowed)."""
    bad = [p for p in precisions if p not in ENGINE_PRECISIONS]
    if bad:
        raise ValueError(f"unknown engine precision {bad}: choose from {ENGINE_PRECISIONS}")
    sources = {p: onnx_dir / SOURCE_ONNX[p] for p in precisions}
    missing = [str(s) for s in sources.values() if not s.exists()]
    if missing:
        raise FileNotFoundError(f"missing ONNX input(s) {missing}: run `python -m build onnx --padded "
                                "--precisions fp32,fp16,int8` (make onnx PRECISIONS=fp32,fp16,int8 ONNX_ARGS=--padded) first")
    packed = {str(s): ops for s in set(sources.values()) if (ops := packing_ops(s))}
    if packed and not allow_packed:
        raise PlanError(f"{', '.join(sorted(packed))}: a packed graph ({', '.join(sorted({o for v in packed.values() for o in v}))}); "
                        "TensorRT plans are built from padded graphs: re-export with `make onnx "
                        "PRECISIONS=fp32,fp16,int8 ONNX_ARGS=--padded`, or pass --allow-packed to try this one anyway")
    return sources


def build_engines(onnx_dir: str | Path, out_dir: str | Path, precisions=ENGINE_PRECISIONS,
                  profile: Profile = Profile(), workspace_mib: int = 4096, log=print, allow_packed: bool = False,
                  timing_cache: str | Path | None = "default") -> dict[str, Path]:
    """Build model_<precision>.plan for each precision from the `onnx` stage's folder into `out_dir`.

    Refuses missing or packed inputs, then raises TensorRTUnavailable where TensorRT is absent,
    both before writing anything. timing_cache: a file path, None for none, "default" for
    trt-timing.cache beside `out_dir`.
    """
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    sources = check_sources(onnx_dir, precisions, allow_packed)
    backend = find_backend()
    if backend is None:
        raise TensorRTUnavailable(
            "TensorRT is not installed here (no `import tensorrt`, no trtexec): engines are built on a GPU "
            "machine inside NVIDIA's TensorRT/Triton containers (docs/gpu.md: docker compose run --rm builder "
            "engines); nothing was written")
    cache = out_dir.parent / TIMING_CACHE if timing_cache == "default" else timing_cache and Path(timing_cache)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp.", dir=out_dir.parent))
    tmp.chmod(0o755)  # readable by a Triton container running as another user
    built, record = {}, {"backend": backend[0], "tensorrt": backend[1], "profile": dataclasses.asdict(profile),
                         "timing_cache": str(cache) if cache else None, "plans": {}}
    try:
        for precision, src in sources.items():
            plan = tmp / f"model_{precision}.plan"
            if backend[0] == "python":
                log(f"building {plan.name} from {src.name} with the TensorRT {backend[1]} Python API")
                build_with_python_api(src, plan, precision, profile, workspace_mib, cache, log)
                record["plans"][precision] = {"onnx": str(src)}
            else:
                cmd = trtexec_command(src, plan, precision, profile, tabular_features(onnx_dir), workspace_mib,
                                      backend[1], cache)
                log("running: " + " ".join(cmd))
                subprocess.run(cmd, check=True)
                record["plans"][precision] = {"onnx": str(src), "command": cmd}
            built[precision] = out_dir / plan.name
        results = _verify(onnx_dir, tmp, record, log)
        (tmp / "engines.json").write_text(json.dumps(record, indent=2) + "\n")
        if results is not None and not all(r.passed for r in results):
            _reject(tmp, out_dir, onnx_dir, results)
        if out_dir.exists():  # swap: readers see the old plans or the new ones, never half
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out_dir.with_name(f"{out_dir.name}.rejected"), ignore_errors=True)
    if results is not None:
        from build.verify_plans import report_plans
        report_plans(results, onnx_dir, onnx_dir, out_dir)
    return built


def _verify(onnx_dir: Path, plans_dir: Path, record: dict, log):
    """The new plans on the held-out texts (build/verify_plans.py), or None with the reason recorded."""
    from build.reference import REFERENCE_FILE

    why = None
    if not (onnx_dir / REFERENCE_FILE).is_file():
        why = f"no {REFERENCE_FILE} in {onnx_dir} (ONNX files not made by `python -m build onnx`)"
    else:
        try:
            import tensorrt  # noqa: F401
        except Exception:
            why = "TensorRT's Python API is not importable here (plans built with trtexec)"
    if why:
        log(f"plans NOT verified: {why}")
        record["verification"] = {"verified": False, "reason": why}
        return None
    from build.verify_plans import plan_files, verify_plans
    log(f"verifying the plans on the held-out texts of {onnx_dir / REFERENCE_FILE}")
    results = verify_plans(onnx_dir, plan_files(plans_dir), log=log)
    record["verification"] = {"verified": all(r.passed for r in results),
                              "parity": {r.precision: "PASS" if r.passed else r.reason for r in results}}
    return results


def _reject(tmp: Path, out_dir: Path, onnx_dir: Path, results) -> None:
    """Failed plans go to <out>.rejected/ with their report; the plans in `out_dir` stay."""
    from build.verify import raise_on_failure
    from build.verify_plans import report_plans

    rejected = out_dir.with_name(f"{out_dir.name}.rejected")
    shutil.rmtree(rejected, ignore_errors=True)
    tmp.rename(rejected)
    report_plans(results, onnx_dir, rejected, rejected)
    try:
        raise_on_failure(results)
    except Exception as e:
        raise PlanError(f"{e} (plans and report kept in {rejected}; {out_dir} unchanged)") from None


# ---- command line: python -m build engines -------------------------------------------------------
def add_arguments(p) -> None:
    d = Profile()
    p.add_argument("--onnx", type=Path, required=True, help="output folder of `python -m build onnx --padded`")
    p.add_argument("--out", type=Path, required=True, help="folder for model_<precision>.plan (replaced atomically)")
    p.add_argument("--precisions", default="fp16,int8", help="comma-separated, from fp16,int8")
    p.add_argument("--max-batch", type=int, default=d.max_batch)
    p.add_argument("--opt-batch", type=int, default=d.opt_batch)
    p.add_argument("--min-seq", type=int, default=d.min_seq)
    p.add_argument("--opt-seq", type=int, default=d.opt_seq)
    p.add_argument("--max-seq", type=int, default=d.max_seq)
    p.add_argument("--workspace-mib", type=int, default=4096)
    p.add_argument("--timing-cache", default="default",
                   help=f"TensorRT timing cache file (default: {TIMING_CACHE} beside --out; 'none' for none)")
    p.add_argument("--allow-packed", action="store_true",
                   help="build from a packed graph (NonZero, CumSum) too; untried in TensorRT")
    p.add_argument("--print-commands", action="store_true",
                   help="only print the trtexec command lines (works without TensorRT)")


def run(args) -> int:
    profile = Profile(args.max_batch, args.opt_batch, args.min_seq, args.opt_seq, args.max_seq)
    precisions = tuple(p for p in args.precisions.split(",") if p)
    cache = {"default": args.out.parent / TIMING_CACHE, "none": None}.get(args.timing_cache, args.timing_cache)
    if args.print_commands:
        for p in precisions:
            print(" ".join(trtexec_command(args.onnx / SOURCE_ONNX[p], args.out / f"model_{p}.plan", p, profile,
                                           tabular_features(args.onnx), args.workspace_mib, timing_cache=cache)))
        return 0
    built = build_engines(args.onnx, args.out, precisions, profile, args.workspace_mib,
                          allow_packed=args.allow_packed, timing_cache=cache)
    print("wrote " + ", ".join(str(p) for p in built.values()))
    return 0
