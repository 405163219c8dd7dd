"""Export the gated encoder to ONNX, with metadata and a parity check against PyTorch.

The graph: input ``images`` uint8 (B,H,W,3) RGB (dynamic batch, fixed H,W); outputs
``descriptor`` float32 (B,D) L2-normalised and ``gate_mask`` float32 (B,1,h,w), then, for local
re-ranking (:mod:`clino_vpr_ros.rerank`), ``local_values`` float32 (B,P,C) and ``local_attention``
float32 (B,P) of one intermediate backbone block (:func:`add_local_outputs`). Casting and
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
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx.numpy_helper
import torch
from torch import nn

from clino_vpr_ros import __version__
from clino_vpr_ros.checkpoint import load_encoder, weights_fingerprint
from clino_vpr_ros.config import MODEL_PRESETS, ModelConfig, get_model_config
from clino_vpr_ros.model import GatedEncoder, build_encoder
from clino_vpr_ros.runtime import INPUT_NAME, LOCAL_OUTPUT_NAMES, OUTPUT_NAMES, ModelMetadata, parity_images

if TYPE_CHECKING:
    import onnxruntime as ort

LOG = logging.getLogger(__name__)

#: minimum per-image cosine(onnx, torch fp32) accepted after export
PARITY_MIN_COSINE = {False: 0.9999, True: 0.999}
#: maximum absolute gate-mask difference accepted after export
PARITY_MAX_MASK_DIFF = {False: 1e-3, True: 1e-2}
#: maximum absolute difference of the local re-ranking outputs (values, attention) accepted after export
PARITY_MAX_LOCAL_DIFF = {False: 1e-3, True: 5e-2}
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


def default_local_layer(num_layers: int) -> int:
    """The backbone block whose tokens feed local re-ranking, by default: the 2nd of the tiny model's 4
    (0-based 1, chosen on validation towns 961/962, models/README.md), i.e. the block before the middle."""
    return max(0, num_layers // 2 - 1)


def export_onnx(model: GatedEncoder, out: Path, fp16: bool = False, opset: int = 18, check: bool = True,
                local_layer: int | None = -1) -> Path:
    """Export ``model`` to ``out`` (atomic), write metadata, check parity.

    Args:
        model: the encoder (not modified; an eval-mode copy is exported).
        out: destination .onnx file. Models above ~1.8 GB keep their weights in ``<out>.data``.
        fp16: fp16 towers with fp32 LayerNorm/normalisation (see module docstring).
        opset: ONNX opset (>= 17 for the LayerNormalization op).
        check: run the parity check (always on from the CLI).
        local_layer: backbone block (0-based) of the local re-ranking outputs; -1 =
            :func:`default_local_layer`; None = no such outputs (a model as exported before re-ranking).
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
    if local_layer == -1:
        local_layer = default_local_layer(model.config.backbone.num_layers)
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
        local_layer=local_layer,
    )
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        tmp_dir = Path(tmp)
        raw = tmp_dir / "raw" / out.name
        raw.parent.mkdir()
        _torch_export(graph_model, raw, opset, model.config.image_size)
        staged = tmp_dir / out.name
        _write_with_metadata(raw, staged, metadata, local_layer)
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


def _write_with_metadata(raw: Path, out: Path, metadata: ModelMetadata, local_layer: int | None = None) -> None:
    proto = onnx.load(str(raw))  # pulls in external tensors the exporter may have written
    if local_layer is not None:
        add_local_outputs(proto, local_layer)
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
    outputs = [o.name for o in session.get_outputs()]
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
    if LOCAL_OUTPUT_NAMES[0] in outputs:
        layer = int(dict((p.key, p.value) for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props)["local_layer"])
        stats["max_local_diff"] = local_parity(reference.backbone, reference.config, session, images, layer)
        if stats["max_local_diff"] > PARITY_MAX_LOCAL_DIFF[fp16]:
            raise ExportParityError(
                f"exported local re-ranking outputs do not match PyTorch: max abs difference "
                f"{stats['max_local_diff']:.2e} (need <= {PARITY_MAX_LOCAL_DIFF[fp16]}); nothing was written")
    return stats


def local_parity(backbone: nn.Module, cfg: ModelConfig, session: ort.InferenceSession, images: np.ndarray,
                 layer: int) -> float:
    """Max abs difference between the graph's ``local_values`` / ``local_attention`` and
    :meth:`DinoV2Backbone.local_tokens` on ``images`` uint8 (n,H,W,3); values are compared
    relative to their largest magnitude (attention is already in [0, 1])."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(cfg.backbone.mean).reshape(1, 3, 1, 1)
    std = torch.tensor(cfg.backbone.std).reshape(1, 3, 1, 1)
    with torch.no_grad():
        ref_v, ref_a = (t.numpy() for t in backbone.eval().local_tokens((x - mean) / std, layer))
    got_v, got_a = session.run(list(LOCAL_OUTPUT_NAMES), {INPUT_NAME: images})
    scale = max(float(np.abs(ref_v).max()), 1e-6)
    diff = max(float(np.abs(got_v - ref_v).max()) / scale, float(np.abs(got_a - ref_a).max()))
    LOG.info("parity of the local outputs (block %d): max difference %.2e", layer, diff)
    return diff


def _node_output(proto: onnx.ModelProto, prefix: str, suffixes: tuple[str, ...]) -> str:
    """The output name of the node ``prefix + suffix`` (first suffix that exists)."""
    names = {n.name: n for n in proto.graph.node}
    for suffix in suffixes:
        if prefix + suffix in names:
            return names[prefix + suffix].output[0]
    raise ValueError(f"the graph has no node {prefix}{{{'|'.join(suffixes)}}}: not a graph exported by this "
                     "package's DINOv2 backbone, so the local re-ranking outputs cannot be added")


def _remove_local_outputs(proto: onnx.ModelProto) -> None:
    """Drop the nodes, initializers and outputs :func:`add_local_outputs` added (none: no change)."""
    keep_out = [o for o in proto.graph.output if o.name not in LOCAL_OUTPUT_NAMES]
    keep_nodes = [n for n in proto.graph.node if not n.name.startswith("/local/")]
    keep_init = [i for i in proto.graph.initializer if not i.name.startswith("local_")]
    for field, kept in ((proto.graph.output, keep_out), (proto.graph.node, keep_nodes), (proto.graph.initializer, keep_init)):
        if len(kept) != len(field):
            del field[:]
            field.extend(kept)


def add_local_outputs(proto: onnx.ModelProto, layer: int) -> onnx.ModelProto:
    """Add the :data:`~clino_vpr_ros.runtime.LOCAL_OUTPUT_NAMES` outputs to an exported graph, in place.

    They tap tensors the graph already computes in backbone block ``layer``: the value projection
    (B,P+1,C) and the attention softmax (B,heads,P+1,P+1). The new nodes only read them, so the
    descriptor and the mask are computed exactly as before (same weights, same fingerprint).
    Outputs added before (of any block) are replaced. Returns ``proto``. ValueError: no such block.
    """
    from onnx import TensorProto, helper

    _remove_local_outputs(proto)
    prefix = f"/backbone/layer.{layer}/attention/"
    softmax = _node_output(proto, prefix, ("Softmax",))
    values = _node_output(proto, prefix, ("v_proj/Add", "attention/value/Add", "value/Add"))
    big = np.iinfo(np.int64).max

    def const(name: str, value: list[int]) -> str:
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value, np.int64), f"local_{name}"))
        return f"local_{name}"

    nodes = [
        # the CLS query's row of the attention, patch keys only: (B,heads,1,P)
        helper.make_node("Slice", [softmax, const("att_start", [0, 1]), const("att_end", [1, big]), const("att_axes", [2, 3])],
                         ["local_att_slice"], name="/local/attention/Slice"),
        helper.make_node("ReduceMean", ["local_att_slice", const("att_reduce", [1, 2])], ["local_att_mean"],
                         name="/local/attention/ReduceMean", keepdims=0),
        helper.make_node("Cast", ["local_att_mean"], [LOCAL_OUTPUT_NAMES[1]], name="/local/attention/Cast", to=TensorProto.FLOAT),
        # the patch tokens' value vectors (the CLS token's dropped): (B,P,C)
        helper.make_node("Slice", [values, const("val_start", [1]), const("val_end", [big]), const("val_axes", [1])],
                         ["local_val_slice"], name="/local/values/Slice"),
        helper.make_node("Cast", ["local_val_slice"], [LOCAL_OUTPUT_NAMES[0]], name="/local/values/Cast", to=TensorProto.FLOAT),
    ]
    proto.graph.node.extend(nodes)
    proto.graph.output.extend([
        helper.make_tensor_value_info(LOCAL_OUTPUT_NAMES[0], TensorProto.FLOAT, ["batch", None, None]),
        helper.make_tensor_value_info(LOCAL_OUTPUT_NAMES[1], TensorProto.FLOAT, ["batch", None]),
    ])
    return proto


def backbone_from_onnx(proto: onnx.ModelProto, cfg: ModelConfig) -> nn.Module:
    """The DINOv2 backbone of an exported graph as a PyTorch module, its weights read from the
    initializers (the torch reference for :func:`local_parity` when only the ONNX file exists).

    Named initializers keep their parameter names; a Linear weight is stored transposed under an
    anonymous name and is found through the Add node that adds its (named) bias.
    ValueError when a parameter is missing: another graph layout, or an untrained model, whose
    equal tensors (zero biases, unit norms) the exporter merged into one initializer.
    """
    from clino_vpr_ros.model.backbone import DinoV2Backbone

    inits = {i.name: i for i in proto.graph.initializer}
    arr = lambda name: torch.from_numpy(onnx.numpy_helper.to_array(inits[name]).astype(np.float32).copy())  # noqa: E731
    prefix = "backbone."
    state = {k[len(prefix):]: arr(k) for k in inits if k.startswith(prefix + "model.")}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node)
    for node in proto.graph.node:
        if node.op_type != "MatMul" or not node.name.startswith("/backbone/"):
            continue
        weight = [x for x in node.input if x in inits]
        bias = [x for c in consumers.get(node.output[0], []) if c.op_type == "Add" for x in c.input
                if x.startswith(prefix) and x.endswith(".bias")]
        if weight and bias:
            state[bias[0][len(prefix):-len(".bias")] + ".weight"] = arr(weight[0]).T.contiguous()  # y = x W^T + b
    # a reference module is never trained: every block frozen
    backbone = DinoV2Backbone(dataclasses.replace(cfg.backbone, trainable_blocks=0), tuple(cfg.image_size))
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("mask_token")]
    if missing or unexpected:
        raise ValueError(f"the graph's backbone does not match the preset: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return backbone.eval()


def add_local_outputs_to_file(src: Path, out: Path, layer: int | None = None, check: bool = True) -> dict[str, float]:
    """Write ``src`` with the local re-ranking outputs added (block ``layer``, None =
    :func:`default_local_layer`; outputs of another block it has are replaced) to ``out`` (atomic;
    ``src`` is never modified).

    The weights and the descriptor stay as they were, so the metadata, the weights fingerprint
    included, is kept and session maps built with ``src`` stay valid with ``out``. Checks: the
    descriptor and the mask equal ``src``'s (onnxruntime CPU, max abs difference <= 1e-5) and the new
    outputs equal the PyTorch reference computed with the backbone read back from the initializers.
    Returns {"max_descriptor_diff", "max_mask_diff", "max_local_diff"}.
    """
    import onnxruntime as ort

    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve():
        raise ValueError(f"--out must differ from the source model {src} (the source is never modified)")
    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    meta = ModelMetadata.from_props(props, source=str(src))
    cfg = ModelConfig.from_dict(meta.config)
    layer = default_local_layer(cfg.backbone.num_layers) if layer is None else int(layer)
    add_local_outputs(proto, layer)
    kept = [p for p in proto.metadata_props if p.key != "local_layer"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    prop = proto.metadata_props.add()
    prop.key, prop.value = "local_layer", str(layer)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        onnx.save_model(proto, str(staged))
        onnx.checker.check_model(str(staged))
        stats: dict[str, float] = {}
        if check:
            images = parity_images(tuple(cfg.image_size))
            old = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(list(OUTPUT_NAMES), {INPUT_NAME: images})
            session = ort.InferenceSession(str(staged), providers=["CPUExecutionProvider"])
            new = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
            stats["max_descriptor_diff"] = float(np.abs(new[0] - old[0]).max())
            stats["max_mask_diff"] = float(np.abs(new[1] - old[1]).max())
            stats["max_local_diff"] = local_parity(backbone_from_onnx(proto, cfg), cfg, session, images, layer)
            if max(stats["max_descriptor_diff"], stats["max_mask_diff"]) > 1e-5 or stats["max_local_diff"] > PARITY_MAX_LOCAL_DIFF[meta.fp16]:
                raise ExportParityError(f"adding the local outputs changed the model or they do not match PyTorch: {stats}; "
                                        "nothing was written")
        os.chmod(staged, 0o644)
        os.replace(staged, out)
    LOG.info("wrote %s: %s plus local re-ranking outputs of block %d (%s)", out, src.name, layer, stats)
    return stats


def _config_json(model: GatedEncoder) -> str:
    return json.dumps(model.config.to_dict(), separators=(",", ":"))


def main(argv: list[str] | None = None) -> int:
    """``clino-vpr export (--checkpoint CKPT | --preset NAME [--dinov2 DIR] [--clip DIR] | --add-local-outputs MODEL.onnx)
    --out FILE.onnx [--fp16] [--local-layer N | --no-local-outputs]``."""
    parser = argparse.ArgumentParser(prog="clino-vpr export", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="safetensors checkpoint from training")
    source.add_argument("--preset", choices=sorted(MODEL_PRESETS), help="build a preset (pretrained towers or random)")
    source.add_argument("--add-local-outputs", type=Path, metavar="MODEL",
                        help="an exported model: write it to --out with the local re-ranking outputs added "
                             "(same weights, descriptor and fingerprint: its maps stay valid)")
    parser.add_argument("--local-layer", type=int, default=None,
                        help="backbone block (0-based) of the local re-ranking outputs (default: the block before the middle)")
    parser.add_argument("--no-local-outputs", action="store_true", help="export without the local re-ranking outputs")
    parser.add_argument("--dinov2", help="DINOv2 HF folder or cached hub id (with --preset; default: random init)")
    parser.add_argument("--clip", help="CLIP HF folder or cached hub id (with --preset; default: random init)")
    parser.add_argument("--out", type=Path, required=True, help="output .onnx file")
    parser.add_argument("--fp16", action="store_true", help="fp16 towers, fp32 LayerNorm/normalisation")
    parser.add_argument("--opset", type=int, default=18)
    args = parser.parse_args(argv)
    if args.add_local_outputs is not None:
        if args.fp16 or args.no_local_outputs or args.dinov2 or args.clip:
            parser.error("--add-local-outputs keeps the model as it is: no --fp16/--no-local-outputs/--dinov2/--clip")
        stats = add_local_outputs_to_file(args.add_local_outputs, args.out, args.local_layer)
        print(f"wrote {args.out} (local re-ranking outputs added; descriptor unchanged, max diff "
              f"{stats['max_descriptor_diff']:.1e}; local outputs vs PyTorch {stats['max_local_diff']:.1e})")
        return 0
    if args.checkpoint is not None and (args.dinov2 or args.clip):
        parser.error("--dinov2/--clip only apply with --preset (a checkpoint holds all weights)")
    if args.checkpoint is not None:
        model = load_encoder(args.checkpoint)
    else:
        if not (args.dinov2 and args.clip):
            LOG.warning("preset %s: towers without weights are randomly initialised", args.preset)
        model = build_encoder(get_model_config(args.preset), dinov2=args.dinov2, clip=args.clip)
    layer = None if args.no_local_outputs else (-1 if args.local_layer is None else args.local_layer)
    path = export_onnx(model.eval(), args.out, fp16=args.fp16, opset=args.opset, check=True, local_layer=layer)
    print(f"wrote {path} ({'fp16' if args.fp16 else 'fp32'}, descriptor {model.descriptor_dim}-d, parity checked)")
    return 0
