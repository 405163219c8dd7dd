"""Export the gated encoder to ONNX, with metadata and a parity check against PyTorch.

The graph: input ``images`` uint8 (B,H,W,3) RGB (dynamic batch, fixed H,W); outputs
``descriptor`` float32 (B,D) L2-normalised and ``gate_mask`` float32 (B,1,h,w). Casting and
normalisation are inside. The DINOv2 position embedding is baked at the fixed size when the model
is built (no bicubic interpolation in the graph); attention is plain SDPA/eager (MatMul+Softmax).

``fp16=True``: the DINOv2 and CLIP towers (where the FLOPs are) run in fp16; every LayerNorm, the
input normalisation, the gate, SALAD (Sinkhorn in log domain) and the L2 normalisations stay fp32,
since fp16 LayerNorm/L2-norm overflow (reference-facts: a plain fp16 ViT build fell to cosine 0.14).

Every export ends with a parity check (onnxruntime CPU vs the PyTorch fp32 model on a few
deterministic images); a failure raises :class:`ExportParityError` and nothing is written.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import torch
from torch import nn

from clino_vpr_ros import __version__
from clino_vpr_ros.checkpoint import load_encoder, weights_fingerprint
from clino_vpr_ros.config import MODEL_PRESETS, get_model_config
from clino_vpr_ros.model import GatedEncoder, build_encoder
from clino_vpr_ros.runtime import INPUT_NAME, OUTPUT_NAMES, ModelMetadata, parity_images

LOG = logging.getLogger(__name__)

#: minimum per-image cosine(onnx, torch fp32) accepted after export
PARITY_MIN_COSINE = {False: 0.9999, True: 0.999}
#: maximum absolute gate-mask difference accepted after export
PARITY_MAX_MASK_DIFF = {False: 1e-3, True: 1e-2}
#: protobuf cannot hold more than 2 GiB: above this, weights go to ``<file>.data`` next to the model
_EXTERNAL_DATA_BYTES = 1_800_000_000


class ExportParityError(RuntimeError):
    """The exported graph does not reproduce the PyTorch model."""


class _Fp32LayerNorm(nn.Module):
    """LayerNorm computed in fp32 inside an fp16 network (fp16 LayerNorm overflows)."""

    def __init__(self, ln: nn.LayerNorm) -> None:
        super().__init__()
        self.ln = ln.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x.float()).to(x.dtype)


def export_onnx(model: GatedEncoder, out: Path, fp16: bool = False, opset: int = 18, check: bool = True) -> Path:
    """Export ``model`` to ``out`` (atomic), write metadata, check parity.

    Args:
        model: the encoder (not modified; an eval-mode copy is exported).
        out: destination .onnx file. Models above ~1.8 GB keep their weights in ``<out>.data``.
        fp16: fp16 towers with fp32 LayerNorm/normalisation (see module docstring).
        opset: ONNX opset (>= 17 for the LayerNormalization op).
        check: run the parity check (always on from the CLI).
    Returns:
        ``out``.
    Raises:
        ExportParityError: onnxruntime output differs from PyTorch beyond the thresholds.
        ValueError: opset < 17 or a model that is not a GatedEncoder.
    """
    if not isinstance(model, GatedEncoder):
        raise ValueError(f"export_onnx expects a GatedEncoder, got {type(model).__name__}")
    if opset < 17:
        raise ValueError(f"opset {opset} < 17: LayerNormalization (kept fp32 for TensorRT) needs opset 17+")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    reference = copy.deepcopy(model).cpu().float().eval()
    graph_model = _to_fp16(reference) if fp16 else reference
    metadata = ModelMetadata(
        input_size=tuple(model.config.image_size),
        descriptor_dim=model.descriptor_dim,
        mask_size=tuple(model.mask_size),
        preset=model.config.preset,
        fingerprint=weights_fingerprint(reference),
        fp16=fp16,
        package_version=__version__,
        config_json=_config_json(model),
        resize=model.config.resize,
    )
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        tmp_dir = Path(tmp)
        raw = tmp_dir / "raw" / out.name
        raw.parent.mkdir()
        _torch_export(graph_model, raw, opset, model.config.image_size)
        staged = tmp_dir / out.name
        _write_with_metadata(raw, staged, metadata)
        if check:
            check_parity(reference, staged, fp16)
        data, out_data = staged.with_name(staged.name + ".data"), out.with_name(out.name + ".data")
        if data.exists():
            os.chmod(data, 0o644)  # the external-data writer creates it 0600
            os.replace(data, out_data)
        elif out_data.exists():
            out_data.unlink()  # left by an earlier, larger export to the same name
        os.chmod(staged, 0o644)
        os.replace(staged, out)
    LOG.info("exported %s (%s, %s, D=%d)", out, metadata.preset, "fp16" if fp16 else "fp32", metadata.descriptor_dim)
    return out


def _to_fp16(model: GatedEncoder) -> GatedEncoder:
    fp16 = copy.deepcopy(model)
    towers = [fp16.backbone.model] + ([fp16.clip.model] if fp16.clip is not None else [])
    for tower in towers:
        tower.half()
        for parent in list(tower.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.LayerNorm):
                    setattr(parent, name, _Fp32LayerNorm(child))
    return fp16


def _torch_export(model: nn.Module, path: Path, opset: int, image_size: tuple[int, int]) -> None:
    example = torch.zeros((2, *image_size, 3), dtype=torch.uint8)
    batch = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about every Python-level shape check; shapes are fixed except the batch
        warnings.simplefilter("ignore")
        # TorchScript-based exporter: handles this graph with no extra dependency (onnxscript)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: batch, OUTPUT_NAMES[0]: batch, OUTPUT_NAMES[1]: batch},
            opset_version=opset,
            do_constant_folding=True,
        )


def _write_with_metadata(raw: Path, out: Path, metadata: ModelMetadata) -> None:
    proto = onnx.load(str(raw))  # pulls in external tensors the exporter may have written
    del proto.metadata_props[:]
    for key, value in metadata.to_props().items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    proto.producer_name = "clino_vpr_ros"
    proto.producer_version = __version__
    # ByteSize() itself fails above 2 GiB: count the tensor bytes instead
    external = _weight_bytes(proto) > _EXTERNAL_DATA_BYTES
    onnx.save_model(
        proto,
        str(out),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=out.name + ".data",
    )
    shutil.rmtree(raw.parent)
    onnx.checker.check_model(str(out))


def _weight_bytes(proto: onnx.ModelProto) -> int:
    tensors = list(proto.graph.initializer) + [
        a.t for n in proto.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"
    ]
    return sum(len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes for t in tensors)


def check_parity(reference: GatedEncoder, onnx_path: Path, fp16: bool) -> dict[str, float]:
    """Compare onnxruntime (CPU) with the PyTorch fp32 ``reference`` on :func:`parity_images`.

    Returns {"min_cosine", "max_mask_diff"}; raises :class:`ExportParityError` below thresholds.
    """
    import onnxruntime as ort

    images = parity_images(tuple(reference.config.image_size))
    with torch.no_grad():
        ref_desc, ref_mask = (t.numpy() for t in reference.eval()(torch.from_numpy(images)))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    desc, mask = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
    desc = desc.astype(np.float32)
    cos = np.sum(desc * ref_desc, axis=1) / (np.linalg.norm(desc, axis=1) * np.linalg.norm(ref_desc, axis=1))
    stats = {"min_cosine": float(cos.min()), "max_mask_diff": float(np.abs(mask - ref_mask).max())}
    ok = stats["min_cosine"] >= PARITY_MIN_COSINE[fp16] and stats["max_mask_diff"] <= PARITY_MAX_MASK_DIFF[fp16]
    LOG.info("parity %s: min cosine %.6f, max mask diff %.2e", "fp16" if fp16 else "fp32", *stats.values())
    if not ok:
        raise ExportParityError(
            f"exported {'fp16' if fp16 else 'fp32'} ONNX does not match PyTorch: min cosine "
            f"{stats['min_cosine']:.6f} (need >= {PARITY_MIN_COSINE[fp16]}), max gate-mask diff "
            f"{stats['max_mask_diff']:.2e} (need <= {PARITY_MAX_MASK_DIFF[fp16]}); nothing was written"
        )
    return stats


def _config_json(model: GatedEncoder) -> str:
    return json.dumps(model.config.to_dict(), separators=(",", ":"))


def main(argv: list[str] | None = None) -> int:
    """``clino-vpr export (--checkpoint CKPT | --preset NAME [--dinov2 DIR] [--clip DIR]) --out FILE.onnx [--fp16]``."""
    parser = argparse.ArgumentParser(prog="clino-vpr export", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="safetensors checkpoint from training")
    source.add_argument("--preset", choices=sorted(MODEL_PRESETS), help="build a preset (pretrained towers or random)")
    parser.add_argument("--dinov2", help="DINOv2 HF folder or cached hub id (with --preset; default: random init)")
    parser.add_argument("--clip", help="CLIP HF folder or cached hub id (with --preset; default: random init)")
    parser.add_argument("--out", type=Path, required=True, help="output .onnx file")
    parser.add_argument("--fp16", action="store_true", help="fp16 towers, fp32 LayerNorm/normalisation")
    parser.add_argument("--opset", type=int, default=18)
    args = parser.parse_args(argv)
    if args.checkpoint is not None and (args.dinov2 or args.clip):
        parser.error("--dinov2/--clip only apply with --preset (a checkpoint holds all weights)")
    if args.checkpoint is not None:
        model = load_encoder(args.checkpoint)
    else:
        if not (args.dinov2 and args.clip):
            LOG.warning("preset %s: towers without weights are randomly initialised", args.preset)
        model = build_encoder(get_model_config(args.preset), dinov2=args.dinov2, clip=args.clip)
    path = export_onnx(model.eval(), args.out, fp16=args.fp16, opset=args.opset, check=True)
    print(f"wrote {path} ({'fp16' if args.fp16 else 'fp32'}, descriptor {model.descriptor_dim}-d, parity checked)")
    return 0
