"""Local re-ranking (EffoVPR idea): token selection, mutual nearest neighbours, the exported outputs
against PyTorch, a model without them, maps with and without tokens, and the engine's use of it."""

from __future__ import annotations

import dataclasses
import logging
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from clino_vpr_ros.candidates import CandidateConfig
from clino_vpr_ros.config import get_model_config
from clino_vpr_ros.engine import EngineConfig, FrameInput, LoopClosureEngine
from clino_vpr_ros.export import add_local_outputs_to_file, export_onnx, local_parity
from clino_vpr_ros.model import build_encoder
from clino_vpr_ros.pipeline import LoopClosurePipeline
from clino_vpr_ros.rerank import RerankConfig, mutual_matches, rerank, select_tokens
from clino_vpr_ros.runtime import LOCAL_OUTPUT_NAMES, RuntimeEncoder, parity_images
from clino_vpr_ros.session_map import SessionMap, SessionMapBuilder

from _engine_scene import Room, base_pose

torch.set_num_threads(1)


def _unit(rng: np.random.Generator, n: int, c: int = 32) -> np.ndarray:
    v = rng.normal(size=(n, c)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# ------------------------------------------------------------------ the re-ranking logic itself
def test_select_tokens_keeps_the_attended_patches_normalised_fp16() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(64, 24)).astype(np.float32) * 5
    attention = np.full(64, 0.5 / 64, np.float32)
    attention[[3, 10, 40]] = [0.2, 0.1, 0.05]  # three patches well above the uniform share 1/64
    tokens = select_tokens(values, attention, RerankConfig(min_attention=1.0, max_tokens=16))
    assert tokens.dtype == np.float16 and tokens.shape == (3, 24)
    want = values[[3, 10, 40]] / np.linalg.norm(values[[3, 10, 40]], axis=1, keepdims=True)
    np.testing.assert_allclose(tokens.astype(np.float32), want, atol=2e-3)  # highest attention first
    assert len(select_tokens(values, attention, RerankConfig(min_attention=1.0, max_tokens=2))) == 2
    # no patch above the threshold: the most attended one stands for the image
    np.testing.assert_allclose(select_tokens(values, attention, RerankConfig(min_attention=100.0)).astype(np.float32),
                               want[:1], atol=2e-3)
    with pytest.raises(ValueError, match="disagree"):
        select_tokens(values, attention[:10], RerankConfig())


def test_mutual_nearest_neighbours_count_only_mutual_pairs_above_t2() -> None:
    rng = np.random.default_rng(1)
    q = _unit(rng, 6)
    # b: noisy copies of q's tokens 0..3 (each the other's nearest), then two far tokens
    b = np.vstack([q[:4] + 0.1 * _unit(rng, 4), _unit(rng, 2)])
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    assert mutual_matches(q, b, 0.8) == 4
    # every token of c is a copy of q[0]: q[0] is nearest to all of them, but only one pair is mutual
    c = np.repeat(q[:1], 5, axis=0) + 0.05 * _unit(rng, 5)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    assert mutual_matches(q, c, 0.8) == 1
    assert mutual_matches(q, b, 0.999) == 0  # T2 above every similarity: nothing counts
    assert mutual_matches(q, np.zeros((0, 32), np.float16), 0.5) == 0


def test_rerank_puts_the_true_place_first_where_the_descriptor_does_not() -> None:
    rng = np.random.default_rng(2)
    query = _unit(rng, 12)
    true_place = query[:8] + 0.15 * _unit(rng, 8)  # 8 of the query's tokens seen again
    aliased = np.repeat(query[:1], 12, axis=0) + 0.05 * _unit(rng, 12)  # one repeated structure
    unrelated = _unit(rng, 12)
    cands = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in (aliased, unrelated, true_place)]
    scores = [0.82, 0.70, 0.78]  # the descriptor ranks the aliased place first
    order, counts = rerank(query, cands, scores, 0.6)
    assert order[0] == 2 and counts[2] == 8 and counts[0] <= 1
    # equal counts: the descriptor decides
    order, _ = rerank(query, [cands[2], cands[2]], [0.5, 0.9], 0.6)
    assert list(order) == [1, 0]


# ------------------------------------------------------------------ the exported outputs
@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(5)
    model = build_encoder(get_model_config("tiny")).eval()
    with torch.no_grad():  # as after training: no two tensors equal (the exporter merges equal initializers)
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def model_with_local(tiny_model, tmp_path_factory) -> Path:
    return export_onnx(tiny_model, tmp_path_factory.mktemp("rr") / "local.onnx", local_layer=1)


@pytest.fixture(scope="module")
def model_without_local(tiny_model, tmp_path_factory) -> Path:
    return export_onnx(tiny_model, tmp_path_factory.mktemp("rr") / "plain.onnx", local_layer=None)


def test_exported_local_outputs_match_pytorch(model_with_local, tiny_model) -> None:
    enc = RuntimeEncoder(model_with_local, providers=["cpu"])
    assert enc.has_local_outputs and enc.metadata.local_layer == 1
    images = parity_images((112, 112), n=3, seed=11)
    out = enc.encode(list(images))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    cfg = tiny_model.config
    mean, std = torch.tensor(cfg.backbone.mean).reshape(1, 3, 1, 1), torch.tensor(cfg.backbone.std).reshape(1, 3, 1, 1)
    with torch.no_grad():
        values, attention = tiny_model.backbone.local_tokens((x - mean) / std, 1)
    assert out.local_values.shape == (3, 64, 192) and out.local_attention.shape == (3, 64)
    np.testing.assert_allclose(out.local_values, values.numpy(), atol=1e-4)
    np.testing.assert_allclose(out.local_attention, attention.numpy(), atol=1e-6)
    # the CLS query's attention over the 64 patches plus itself sums to 1
    assert np.all(out.local_attention.sum(axis=1) < 1.0) and np.all(out.local_attention.sum(axis=1) > 0.2)


def test_adding_local_outputs_to_an_exported_model_keeps_its_descriptor_and_fingerprint(
        model_without_local, tmp_path) -> None:
    out = tmp_path / "added.onnx"
    stats = add_local_outputs_to_file(model_without_local, out, layer=3)
    assert stats["max_descriptor_diff"] <= 1e-6 and stats["max_local_diff"] < 1e-4
    old, new = RuntimeEncoder(model_without_local, providers=["cpu"]), RuntimeEncoder(out, providers=["cpu"])
    assert new.metadata.fingerprint == old.metadata.fingerprint and new.metadata.local_layer == 3
    frames = list(parity_images((240, 320), n=2, seed=3))
    np.testing.assert_allclose(new.encode(frames).descriptors, old.encode(frames).descriptors, atol=1e-6)
    with pytest.raises(ValueError, match="must differ"):
        add_local_outputs_to_file(out, out)
    # another block replaces the outputs of the first
    again = tmp_path / "again.onnx"
    add_local_outputs_to_file(out, again, layer=0)
    enc = RuntimeEncoder(again, providers=["cpu"])
    assert enc.metadata.local_layer == 0 and [o.name for o in onnx.load(str(again)).graph.output].count("local_values") == 1
    np.testing.assert_allclose(enc.encode(frames).descriptors, old.encode(frames).descriptors, atol=1e-6)


def test_the_shipped_model_has_local_outputs_that_match_its_own_backbone(shipped_model) -> None:
    from clino_vpr_ros.config import ModelConfig
    from clino_vpr_ros.export import backbone_from_onnx

    enc = RuntimeEncoder(shipped_model, providers=["cpu"])
    assert enc.has_local_outputs, "models/clino-vpr-tiny.onnx should carry the local re-ranking outputs"
    proto = onnx.load(str(shipped_model))
    cfg = ModelConfig.from_dict(enc.metadata.config)
    import onnxruntime as ort

    session = ort.InferenceSession(str(shipped_model), providers=["CPUExecutionProvider"])
    diff = local_parity(backbone_from_onnx(proto, cfg), cfg, session, parity_images((112, 112), n=2), enc.metadata.local_layer)
    assert diff < 1e-4


# ------------------------------------------------------------------ a model without the outputs, maps without tokens
def _room_frames(n: int = 4):
    room = Room(seed=3)
    for i in range(n):
        T = base_pose(-2.0 + 0.6 * i, 0.0, 10.0 * i)
        rgb, depth = room.render(T)
        yield float(i), rgb, T


def test_a_model_without_local_outputs_still_runs_with_reranking_on(model_without_local, caplog) -> None:
    cfg = EngineConfig(rerank=RerankConfig(enabled=True))
    with caplog.at_level(logging.INFO):
        pipe = LoopClosurePipeline.from_files(model_without_local, cfg, "s1")
    assert not pipe.encoder.has_local_outputs
    assert any("no local outputs" in r.getMessage() and "re-ranking off" in r.getMessage() for r in caplog.records)
    keyframes = 0
    for stamp, rgb, T in _room_frames():
        r = pipe.process(stamp, rgb, "rgb8", K=Room(seed=3).K, odom_T_base=T)
        keyframes += r.frame_result.is_keyframe
        assert "encode" in r.stages
    snap = pipe.engine.snapshot()
    assert keyframes == len(snap) > 0 and all(snap.tokens(i) is None for i in range(len(snap)))


def _strip_tokens(src: Path, dst: Path) -> None:
    """Write ``src`` as a map written before re-ranking: without the token arrays."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            if item.filename not in ("token_offsets.npy", "rerank_tokens.npy"):
                zout.writestr(item, zin.read(item.filename))


def test_tokens_are_stored_on_disk_and_an_old_map_without_them_loads(model_with_local, tmp_path) -> None:
    pipe = LoopClosurePipeline.from_files(model_with_local, EngineConfig(), "s1")
    room = Room(seed=3)
    for stamp, rgb, T in _room_frames():
        pipe.process(stamp, rgb, "rgb8", K=room.K, odom_T_base=T)
    path = pipe.engine.save_map(tmp_path / "s1.npz")
    smap = SessionMap.load(path, expected_fingerprint=pipe.encoder.metadata.fingerprint)
    assert isinstance(smap.rerank_tokens, np.memmap)  # on disk, like the verification features
    tokens = smap.tokens(0)
    assert tokens is not None and tokens.dtype == np.float16 and tokens.shape[1] == 192 and 0 < len(tokens) <= 16
    np.testing.assert_allclose(np.linalg.norm(tokens.astype(np.float32), axis=1), 1.0, atol=2e-3)

    old = tmp_path / "old.npz"
    _strip_tokens(path, old)
    with zipfile.ZipFile(old) as z:
        assert "rerank_tokens.npy" not in z.namelist()
    old_map = SessionMap.load(old, expected_fingerprint=pipe.encoder.metadata.fingerprint)
    assert len(old_map) == len(smap) and all(old_map.tokens(i) is None for i in range(len(old_map)))
    np.testing.assert_array_equal(old_map.descriptors, smap.descriptors)
    # a session with re-ranking on queries the old map (descriptor order for its keyframes) and saves
    # a map of its own, with tokens
    cfg = EngineConfig(rerank=RerankConfig(enabled=True), candidates=CandidateConfig(min_consecutive=1))
    pipe2 = LoopClosurePipeline.from_files(model_with_local, cfg, "s2", prior_maps=[old])
    for stamp, rgb, T in _room_frames():
        pipe2.process(stamp + 100.0, rgb, "rgb8", K=room.K, odom_T_base=T)
    assert pipe2.engine.stats()["reranked"] == 0 and pipe2.engine.snapshot().tokens(0) is not None


# ------------------------------------------------------------------ a generated town where re-ranking corrects the descriptor
@pytest.fixture(scope="module")
def town_case(shipped_model):
    """Validation town 961 (never a held-out town): session 2 (dusk) frame 201 and two session-1 (day)
    keyframes: frame 234, about 75 m away, which the descriptor prefers, and frame 105, 2.5 m away,
    the true place (ground truth). Real renders, real encoder outputs."""
    from clino_vpr_ros.synth.cli import two_sessions

    s1, s2 = two_sessions(961)
    render = lambda s, i: s.renderer.render(s.world_T_camera(i), s.condition, s.frames[i].stamp).rgb  # noqa: E731
    frames = [(s2, 201), (s1, 234), (s1, 105)]
    images = [render(s, i) for s, i in frames]
    enc = RuntimeEncoder(shipped_model, providers=["cpu"])
    return s1, s2, frames, images, enc, enc.encode(images)


def test_reranking_puts_the_true_place_first_on_a_generated_town(town_case) -> None:
    s1, s2, frames, _, _, out = town_case
    where = [s.frames[i].world_T_base[:2, 3] for s, i in frames]
    assert np.linalg.norm(where[2] - where[0]) < 8.0 < np.linalg.norm(where[1] - where[0])  # 105 is the place
    cfg = RerankConfig()  # the shipped settings
    tokens = [select_tokens(out.local_values[k], out.local_attention[k], cfg) for k in range(3)]
    scores = out.descriptors[1:] @ out.descriptors[0]
    assert scores[0] > scores[1]  # the descriptor alone ranks the wrong place first
    order, counts = rerank(tokens[0], tokens[1:], scores, cfg.min_similarity, cfg.match_weight)
    assert list(order) == [1, 0] and counts[1] > counts[0]


def test_engine_verifies_the_reranked_best_only(town_case) -> None:
    """The same case through the engine: one verification per query; the candidate it verifies (and,
    with publish_unverified, publishes as unverified) is the descriptor's best without re-ranking and
    the true place with it. (Dusk against day at cosine 0.36: neither passes SIFT verification.)"""
    from clino_vpr_ros.verify import VerifyConfig, extract_features, to_gray

    s1, s2, frames, images, enc, out = town_case
    rcfg = RerankConfig()
    builder = SessionMapBuilder("s1", enc.metadata.fingerprint, 512, base_T_camera=s1.base_T_camera, feature="sift")
    for k in (1, 2):
        i = frames[k][1]
        builder.append(i, s1.frames[i].stamp, out.descriptors[k], s1.frames[i].odom_T_base, s1.K,
                       extract_features(to_gray(images[k]), VerifyConfig()),
                       select_tokens(out.local_values[k], out.local_attention[k], rcfg))
    prior = builder.snapshot()
    q = frames[0][1]

    def verified_match(rerank_on: bool) -> tuple[list[int], dict, LoopClosureEngine]:
        cfg = EngineConfig(candidates=CandidateConfig(min_consecutive=1, max_verifications=1, min_score=0.3,
                                                      min_normalized_score=0.0),
                           rerank=dataclasses.replace(rcfg, enabled=rerank_on), publish_unverified=True)
        engine = LoopClosureEngine(cfg, 512, enc.metadata.fingerprint, "s2", s2.base_T_camera)
        engine.add_prior_map(prior)
        res = engine.process(FrameInput(s2.frames[q].stamp, out.descriptors[0], images[0], s2.K, s2.frames[q].odom_T_base,
                                        local_values=out.local_values[0], local_attention=out.local_attention[0]))
        return [c.match_id for c in res.closures], engine.stats(), engine

    plain, stats, _ = verified_match(False)
    assert plain == [234] and stats["reranked"] == 0
    reranked, stats, engine = verified_match(True)
    assert reranked == [105] and stats["reranked"] == 1 and stats["rejected"] + stats["verified"] == 1
    assert {"features", "retrieval", "rerank", "verification"} <= set(engine.stage_ms)
