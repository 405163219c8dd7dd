"""Train the gated encoder on a GSV-Cities-format folder with the MultiSimilarity loss.

One batch is ``batch_places`` places x ``img_per_place`` images (GSV-Cities practice). Loss and
miner follow the VPR training repos (pytorch-metric-learning)::

    MultiSimilarityLoss(alpha=1.0, beta=50, base=0.0, distance=DotProductSimilarity())
    MultiSimilarityMiner(epsilon=0.1, distance=CosineSimilarity())

AdamW with a linear decay of the learning rate to ``lr_end_factor`` over ``lr_decay_iters``
iterations (published: lr 6e-5, wd 9.5e-9, to 0.2 over 4000). After every epoch: Recall@1/5/10 on a
downloader-format validation folder, ``last.safetensors`` + ``train_state.pt`` (optimizer, scheduler,
step; read back with ``torch.load(weights_only=True)``), ``best.safetensors``, ``metrics.json`` and
``curves.png``. ``--resume`` continues from the last finished epoch and gives the same weights as an
uninterrupted run: every epoch re-seeds torch and draws its batches from ``(seed, epoch)`` alone.

A semantic gate can be trained on top of the published DINOv2-SALAD weights alone (``--init-from``
the released checkpoint, ``--gate-only``): backbone, SALAD and the CLIP tower stay frozen (and in
eval mode), the gate starts fully open, so epoch 0 is the imported model.

Example (the shipped ``tiny`` preset on synthetic towns, CPU)::

    clino-vpr train --data data/gsv --val data/val/synth0900_cross --out runs/tiny --preset tiny \\
        --epochs 40 --batch-places 24 --lr 1e-3 --lr-decay-iters 720 --augment --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clino_vpr_ros.atomic import atomic_write
from clino_vpr_ros.datasets import GSVCities, load_model_inputs, read_downloader_set
from clino_vpr_ros.evaluate import DEFAULT_KS, evaluate_folder, write_json_atomic

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STATE_FILE = "train_state.pt"
LAST_FILE = "last.safetensors"
BEST_FILE = "best.safetensors"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"
AMP_MODES = ("none", "bf16", "fp16")
#: TrainConfig fields that may differ between a run and its resumption (they do not change results)
_RESUME_FREE_FIELDS = ("epochs", "resume", "progress", "workers", "device", "threads", "val_batch_size",
                       "keep_epochs")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Defaults are the published GSV-Cities recipe.

    ``iters_per_epoch=None`` visits every place once per epoch; a number samples that many batches
    (``iters_per_epoch * batch_places`` places) per epoch. ``dinov2``/``clip``: local folders with
    pretrained HF weights for presets that start from them (``large``, ``small``).
    ``init_from``: a released DINOv2-SALAD checkpoint (:mod:`clino_vpr_ros.import_salad`) with a
    semantic gate added on top: its CLIP tower has the shape of preset ``gate_clip``'s (weights from
    ``clip``; random without), the input is ``image_size`` (default 322x322), ``num_heads`` as in the
    import. ``gate_only``: train the gate alone, everything else frozen and in eval mode.
    ``keep_epochs``: also keep every epoch's checkpoint (``epoch_NNN.safetensors``), so an epoch can be
    chosen afterwards on a larger validation set than ``val``.
    """

    data: Path
    out: Path
    preset: str = "tiny"
    val: Path | None = None
    cities: tuple[str, ...] | None = None
    epochs: int = 4
    iters_per_epoch: int | None = None
    batch_places: int = 60
    img_per_place: int = 4
    lr: float = 6e-5
    weight_decay: float = 9.5e-9
    lr_end_factor: float = 0.2
    lr_decay_iters: int = 4000
    use_gate: bool = True
    augment: bool = False
    seed: int = 0
    threads: int = 1
    workers: int = 0
    device: str = "auto"
    amp: str = "none"
    val_radius_m: float = 25.0
    val_batch_size: int = 64
    dinov2: Path | None = None
    clip: Path | None = None
    init: Path | None = None
    init_from: Path | None = None
    gate_only: bool = False
    gate_clip: str = "large"
    image_size: tuple[int, int] | None = None
    num_heads: int | None = None
    resume: bool = False
    progress: bool = True
    keep_epochs: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_places < 2 or self.img_per_place < 2:
            raise ValueError(
                f"need epochs >= 1, batch_places >= 2 and img_per_place >= 2 (positives and negatives), got "
                f"{self.epochs}, {self.batch_places}, {self.img_per_place}"
            )
        if self.iters_per_epoch is not None and self.iters_per_epoch < 1:
            raise ValueError(f"iters_per_epoch must be >= 1 or None, got {self.iters_per_epoch}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 < self.lr_end_factor <= 1 or self.lr_decay_iters < 1:
            raise ValueError("need lr > 0, weight_decay >= 0, 0 < lr_end_factor <= 1, lr_decay_iters >= 1")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp {self.amp!r} unknown; valid: {', '.join(AMP_MODES)}")
        if self.threads < 1 or self.workers < 0:
            raise ValueError(f"threads must be >= 1 and workers >= 0, got {self.threads}, {self.workers}")
        if self.init is not None and self.init_from is not None:
            raise ValueError("--init (our checkpoint) and --init-from (a SALAD checkpoint) exclude each other")
        if self.init_from is not None and not self.use_gate:
            raise ValueError("--init-from adds a semantic gate on top of the SALAD weights: drop --no-gate")
        if self.gate_only and not self.use_gate:
            raise ValueError("--gate-only trains the gate: it cannot be combined with --no-gate")
        if (self.image_size is not None or self.num_heads is not None) and self.init_from is None:
            raise ValueError("--image-size and --num-heads apply to --init-from only (presets fix them)")

    def to_dict(self) -> dict[str, Any]:
        """JSON/torch-safe dict (paths as strings, tuples as lists)."""
        out = {}
        for k, v in dataclasses.asdict(self).items():
            out[k] = str(v) if isinstance(v, Path) else (list(v) if isinstance(v, tuple) else v)
        return out


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`. history: one dict per epoch (epoch 0 = before training)."""

    best_checkpoint: Path
    last_checkpoint: Path
    metrics_json: Path
    curves_png: Path
    history: tuple[dict[str, Any], ...]


# ---------------------------------------------------------------------------------------- batches


class _PlaceBatches(torch.utils.data.Dataset):
    """Item i = batch i of one epoch: (uint8 (P*K, H, W, 3), int64 labels (P*K,)).

    The places of every batch and the images of every place derive from (seed, epoch, i) only, so the
    run is reproducible whatever the number of loader workers and across resumptions.
    ``cache`` maps an image path to its decoded, resized uint8 (H, W, 3) array and is shared across
    epochs: in process (``workers=0``) each file is decoded once per run. Loader workers fill their own
    copies, which end with the epoch.
    """

    def __init__(self, data: GSVCities, batches: np.ndarray, image_size: tuple[int, int], seed: int,
                 epoch: int, augment: bool, cache: dict[Path, np.ndarray], resize: str = "area") -> None:
        self.data, self.batches, self.image_size, self.resize = data, batches, image_size, resize
        self.seed, self.epoch, self.augment, self.cache = seed, epoch, augment, cache

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, i, 1])
        paths, labels = [], []
        for place in self.batches[i]:
            paths += self.data.sample_paths(int(place), rng)
            labels += [self.data.places[int(place)].label] * self.data.img_per_place
        missing = [p for p in dict.fromkeys(paths) if p not in self.cache]
        self.cache.update(zip(missing, load_model_inputs(missing, self.image_size, self.resize)))
        images = np.stack([self.cache[p] for p in paths])
        if self.augment:
            images = photometric_jitter(images, rng)
        return torch.from_numpy(images), torch.as_tensor(labels, dtype=torch.int64)


def epoch_batches(n_places: int, batch_places: int, iters: int | None, seed: int, epoch: int) -> np.ndarray:
    """Place indices of every batch of one epoch: int64 (iters, batch_places), distinct within a batch.

    Walks random permutations of all places; ``iters=None`` = one pass (``n_places // batch_places``).
    """
    if batch_places > n_places:
        raise ValueError(f"batch_places {batch_places} exceeds the {n_places} places of the dataset")
    rng = np.random.default_rng([seed, epoch, 0])
    per_perm = n_places // batch_places
    n = per_perm if iters is None else iters
    batches = []
    while len(batches) < n:
        perm = rng.permutation(n_places)
        batches += [perm[j * batch_places : (j + 1) * batch_places] for j in range(per_perm)]
    return np.stack(batches[:n]).astype(np.int64)


def photometric_jitter(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random brightness/contrast/saturation per image (uint8 (B, H, W, 3) -> same); no geometry change,
    so the place label stays valid."""
    x = images.astype(np.float32)
    b = len(x)
    brightness = rng.uniform(-25, 25, (b, 1, 1, 1))
    contrast = rng.uniform(0.75, 1.25, (b, 1, 1, 1))
    saturation = rng.uniform(0.7, 1.3, (b, 1, 1, 1))
    gray = x.mean(axis=3, keepdims=True)
    x = gray + (x - gray) * saturation
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * contrast + mean + brightness
    return np.clip(x, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------- train


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but CUDA is not available")
    return dev


def _build_model(cfg: TrainConfig) -> tuple[torch.nn.Module, Any]:
    from clino_vpr_ros.config import get_model_config
    from clino_vpr_ros.model import build_encoder

    if cfg.init_from is not None:
        return _build_from_salad(cfg)
    if cfg.init is not None:
        from clino_vpr_ros.checkpoint import load_encoder

        model = load_encoder(cfg.init)
        model_cfg = _model_cfg_of(model)
        if model_cfg.gate.use_gate != cfg.use_gate:
            raise ValueError(f"--init {cfg.init} has use_gate={model_cfg.gate.use_gate}, but use_gate={cfg.use_gate}")
        return model, model_cfg
    model_cfg = get_model_config(cfg.preset)
    if not cfg.use_gate:
        model_cfg = model_cfg.replace(gate=dataclasses.replace(model_cfg.gate, use_gate=False))
    if model_cfg.backbone.trainable_blocks != -1 and cfg.dinov2 is None:
        logger.warning("preset %s fine-tunes a pretrained DINOv2 but no --dinov2 weights were given: "
                       "training from random weights", cfg.preset)
    if model_cfg.gate.use_gate and not model_cfg.clip.trainable and cfg.clip is None:
        logger.warning("preset %s uses a frozen CLIP tower but no --clip weights were given: the gate "
                       "will see random features", cfg.preset)
    kwargs = {}
    if cfg.dinov2 is not None:
        kwargs["dinov2"] = cfg.dinov2
    if cfg.clip is not None:
        kwargs["clip"] = cfg.clip
    return build_encoder(model_cfg, **kwargs), model_cfg


def _build_from_salad(cfg: TrainConfig) -> tuple[torch.nn.Module, Any]:
    from clino_vpr_ros.config import get_model_config
    from clino_vpr_ros.import_salad import load_salad_encoder

    gate_preset = get_model_config(cfg.gate_clip)
    if cfg.clip is None:
        logger.warning("no --clip weights: the gate's frozen CLIP tower (%s shape) is randomly initialised",
                       cfg.gate_clip)
    model = load_salad_encoder(cfg.init_from, cfg.image_size or (322, 322), cfg.num_heads,
                               gate_clip=gate_preset.clip, gate_hidden=gate_preset.gate.hidden_dim,
                               clip_weights=cfg.clip)
    return model, model.config


def freeze_all_but_gate(model: torch.nn.Module) -> None:
    """Only ``model.gate`` keeps trainable parameters (gate-only training)."""
    if getattr(model, "gate", None) is None:
        raise ValueError("--gate-only needs a model with a semantic gate")
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("gate."))


def _model_cfg_of(model: torch.nn.Module) -> Any:
    for name in ("cfg", "config"):
        if hasattr(model, name):
            return getattr(model, name)
    raise ValueError(f"{type(model).__name__} carries no model config")


def _frozen_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict minus frozen parameters (they come back from the pretrained weights on resume)."""
    frozen = _frozen_names(model)
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in frozen}


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def _save_checkpoint(path: Path, model: torch.nn.Module, extra: dict[str, Any]) -> None:
    from clino_vpr_ros.checkpoint import save_checkpoint

    save_checkpoint(path, model, extra=extra)


def _loss_and_miner() -> tuple[Any, Any]:
    from pytorch_metric_learning import losses, miners
    from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity

    loss = losses.MultiSimilarityLoss(alpha=1.0, beta=50, base=0.0, distance=DotProductSimilarity())
    miner = miners.MultiSimilarityMiner(epsilon=0.1, distance=CosineSimilarity())
    return loss, miner


def _better(recall: dict[str, float] | None, best: dict[str, float] | None) -> bool:
    if recall is None:
        return True  # no validation: the latest weights are the best we know
    if best is None:
        return True
    key = lambda r: tuple(r.get(str(k), 0.0) for k in DEFAULT_KS)  # noqa: E731  R@1, then R@5, R@10
    return key(recall) > key(best)


@dataclass
class _Progress:
    """Mutable run state carried across epochs and stored in ``train_state.pt``."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    iter_losses: list[float] = dataclasses.field(default_factory=list)
    best: dict[str, Any] | None = None


@dataclass
class _Optim:
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None


def train(cfg: TrainConfig) -> TrainResult:
    """Train (or resume) and return the best checkpoint and the per-epoch history."""
    torch.set_num_threads(cfg.threads)
    device = _resolve_device(cfg.device)
    data = GSVCities(cfg.data, cities=cfg.cities, img_per_place=cfg.img_per_place)
    val = read_downloader_set(cfg.val) if cfg.val is not None else None
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model, model_cfg = _build_model(cfg)
    if cfg.gate_only:
        freeze_all_but_gate(model)
    model.to(device)
    image_size = tuple(model_cfg.image_size)
    opt = _make_optim(cfg, model, device)
    loss_fn, miner = _loss_and_miner()
    logger.info("model %s (gate %s): %.2fM trainable parameters; %d places; device %s", model_cfg.preset,
                model_cfg.gate.use_gate, sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
                len(data), device)
    prog = _load_progress(out / STATE_FILE, cfg, model, opt) if cfg.resume else _Progress()
    if val is not None and not prog.history:
        recall = _validate(model, val, cfg, image_size)
        prog.history.append({"epoch": 0, "step": 0, "loss": None, "lr": cfg.lr, "recall": recall, "seconds": 0.0})
        logger.info("before training: %s", _fmt_recall(recall))
    image_cache: dict[Path, np.ndarray] = {}
    for epoch in range(prog.epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        # re-seeding per epoch makes dropout identical whether or not the run was resumed
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)
        batches = epoch_batches(len(data), cfg.batch_places, cfg.iters_per_epoch, cfg.seed, epoch)
        loader = torch.utils.data.DataLoader(
            _PlaceBatches(data, batches, image_size, cfg.seed, epoch, cfg.augment, image_cache, model_cfg.resize),
            batch_size=None, shuffle=False, num_workers=cfg.workers, pin_memory=device.type == "cuda",
        )
        losses = _train_epoch(model, loader, opt, loss_fn, miner, device, f"epoch {epoch}/{cfg.epochs}", cfg.progress,
                              frozen_eval=cfg.gate_only)
        seconds = time.perf_counter() - t0
        recall = _validate(model, val, cfg, image_size) if val is not None else None
        prog.epoch, prog.step = epoch, prog.step + len(losses)
        prog.iter_losses += losses
        prog.history.append({"epoch": epoch, "step": prog.step, "loss": float(np.mean(losses)),
                             "lr": opt.scheduler.get_last_lr()[0], "recall": recall, "seconds": seconds,
                             "it_per_s": len(losses) / seconds})
        _save_epoch(out, cfg, model, opt, prog)
        logger.info("epoch %d: loss %.4f, %.2f it/s, %s", epoch, prog.history[-1]["loss"],
                    prog.history[-1]["it_per_s"], _fmt_recall(recall) if recall else "no validation set")
    if prog.best is None:
        raise ValueError(f"{out} holds no finished epoch (epochs={cfg.epochs})")
    return TrainResult(out / BEST_FILE, out / LAST_FILE, out / METRICS_FILE, out / CURVES_FILE, tuple(prog.history))


def _make_optim(cfg: TrainConfig, model: torch.nn.Module, device: torch.device) -> _Optim:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"preset {cfg.preset} has no trainable parameter")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1.0, end_factor=cfg.lr_end_factor, total_iters=cfg.lr_decay_iters
    )
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    if amp_dtype is not None and device.type != "cuda":
        logger.warning("mixed precision %s needs CUDA; training in float32 on %s", cfg.amp, device)
        amp_dtype = None
    # fp16 needs loss scaling against gradient underflow; bf16 has float32's exponent range
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    return _Optim(optimizer, scheduler, scaler, amp_dtype)


def _load_progress(path: Path, cfg: TrainConfig, model: torch.nn.Module, opt: _Optim) -> _Progress:
    """Restore model, optimizer, scheduler and scaler from ``train_state.pt``; fresh progress if absent."""
    if not path.is_file():
        logger.warning("--resume: no %s, starting from scratch", path)
        return _Progress()
    state = torch.load(path, map_location="cpu", weights_only=True)
    _check_resumable(state, cfg)
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if unexpected or set(missing) - _frozen_names(model):
        raise ValueError(f"{path} does not match the model (missing {missing}, unexpected {unexpected})")
    opt.optimizer.load_state_dict(state["optimizer"])
    opt.scheduler.load_state_dict(state["scheduler"])
    opt.scaler.load_state_dict(state["scaler"])
    prog = _Progress(int(state["epoch"]), int(state["step"]), list(state["history"]), list(state["iter_losses"]),
                     state["best"])
    logger.info("resuming %s after epoch %d (step %d)", path.parent, prog.epoch, prog.step)
    return prog


def _save_epoch(out: Path, cfg: TrainConfig, model: torch.nn.Module, opt: _Optim, prog: _Progress) -> None:
    """last/best checkpoints, the resumable state, metrics.json and curves.png after one epoch."""
    recall = prog.history[-1]["recall"]
    extra = {"epoch": prog.epoch, "step": prog.step, "recall": recall, "train_config": cfg.to_dict()}
    _save_checkpoint(out / LAST_FILE, model, extra)
    if cfg.keep_epochs:
        _save_checkpoint(out / f"epoch_{prog.epoch:03d}.safetensors", model, extra)
    if _better(recall, prog.best["recall"] if prog.best else None):
        prog.best = {"epoch": prog.epoch, "recall": recall}
        _save_checkpoint(out / BEST_FILE, model, extra)
    _atomic_torch_save({
        "schema_version": SCHEMA_VERSION, "config": cfg.to_dict(), "epoch": prog.epoch, "step": prog.step,
        "model": _trainable_state(model), "optimizer": opt.optimizer.state_dict(),
        "scheduler": opt.scheduler.state_dict(), "scaler": opt.scaler.state_dict(),
        "history": prog.history, "iter_losses": prog.iter_losses, "best": prog.best,
    }, out / STATE_FILE)
    _write_reports(out, cfg, prog.history, prog.iter_losses, prog.best)


def _train_epoch(model: torch.nn.Module, loader, opt: _Optim, loss_fn, miner, device: torch.device, desc: str,
                 progress: bool, frozen_eval: bool = False) -> list[float]:
    """One pass over ``loader``; returns the loss of every iteration.

    ``frozen_eval``: the whole model stays in eval mode (gate-only training: no dropout in the frozen
    SALAD heads; the gate itself has no dropout or BatchNorm).
    """
    from tqdm import tqdm

    model.train(not frozen_eval)
    losses: list[float] = []
    bar = tqdm(loader, desc=desc, unit="it", disable=not progress, dynamic_ncols=True)
    for images, labels in bar:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=opt.amp_dtype or torch.float32, enabled=opt.amp_dtype is not None):
            desc_, _ = model(images)
        desc_ = desc_.float()  # the loss exponentiates similarities x 50: keep it in float32
        pairs = miner(desc_, labels)
        loss = loss_fn(desc_, labels, pairs)
        opt.optimizer.zero_grad(set_to_none=True)
        opt.scaler.scale(loss).backward()
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
        opt.scheduler.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{opt.scheduler.get_last_lr()[0]:.2e}")
    if not losses:
        raise ValueError("the epoch had no batch: fewer places than batch_places?")
    return losses


def _validate(model, val, cfg: TrainConfig, image_size) -> dict[str, float]:
    res = evaluate_folder(model, val, radius_m=cfg.val_radius_m, batch_size=cfg.val_batch_size,
                          image_size=image_size, progress=cfg.progress)
    return {str(k): v for k, v in res["recall"].items()}


def _fmt_recall(recall: dict[str, float]) -> str:
    return "  ".join(f"R@{k} {100 * v:.1f}" for k, v in recall.items())


def _check_resumable(state: dict[str, Any], cfg: TrainConfig) -> None:
    if state.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"training state schema {state.get('schema_version')} != {SCHEMA_VERSION}: cannot resume")
    old, new = state["config"], cfg.to_dict()
    diff = {k: (old.get(k), v) for k, v in new.items() if k not in _RESUME_FREE_FIELDS and old.get(k) != v}
    if diff:
        raise ValueError(f"cannot resume with a different configuration: {diff} (saved, requested)")


def _write_reports(out: Path, cfg: TrainConfig, history, iter_losses, best) -> None:
    write_json_atomic({"schema_version": SCHEMA_VERSION, "config": cfg.to_dict(), "history": history,
                       "best": best}, out / METRICS_FILE)
    from clino_vpr_ros.evaluate import pyplot_agg, save_figure

    plt = pyplot_agg()
    fig, (ax_l, ax_r) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    if iter_losses:
        x = np.arange(1, len(iter_losses) + 1)
        ax_l.plot(x, iter_losses, lw=0.6, alpha=0.4, label="per iteration")
        w = max(1, len(iter_losses) // 50)
        smooth = np.convolve(iter_losses, np.ones(w) / w, mode="valid")
        ax_l.plot(x[w - 1 :], smooth, lw=1.5, label=f"mean of {w}")
    ax_l.set(xlabel="iteration", ylabel="MultiSimilarity loss", title="training loss")
    ax_l.legend(fontsize=8)
    ax_l.grid(alpha=0.3)
    with_recall = [h for h in history if h.get("recall")]
    for k in DEFAULT_KS:
        if with_recall:
            ax_r.plot([h["epoch"] for h in with_recall], [100 * h["recall"][str(k)] for h in with_recall],
                      marker="o", label=f"R@{k}")
    ax_r.set(xlabel="epoch (0 = before training)", ylabel="recall [%]", ylim=(0, 100),
             title=f"validation ({cfg.val_radius_m:g} m)" if cfg.val else "no validation set")
    ax_r.grid(alpha=0.3)
    if with_recall:
        ax_r.legend(fontsize=8)
    save_figure(fig, out / CURVES_FILE)


# --------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig(data=Path("."), out=Path("."))
    p = argparse.ArgumentParser(prog="clino-vpr train", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="GSV-Cities-format folder (Dataframes/, Images/)")
    p.add_argument("--out", required=True, type=Path, help="run folder: checkpoints, metrics.json, curves.png")
    p.add_argument("--val", type=Path, default=None, help="downloader-format folder for Recall@K after each epoch")
    p.add_argument("--preset", default=d.preset, help="model preset: tiny, small, large")
    p.add_argument("--cities", nargs="+", default=None, help="train on these Dataframes/<City>.csv only")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--iters-per-epoch", type=int, default=None, help="batches per epoch (default: every place once)")
    p.add_argument("--batch-places", type=int, default=d.batch_places, help="places per batch")
    p.add_argument("--img-per-place", "-K", type=int, default=d.img_per_place, help="images per place (K)")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate (from-scratch presets: 1e-3..3e-4)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--lr-end-factor", type=float, default=d.lr_end_factor, help="final lr = lr x this")
    p.add_argument("--lr-decay-iters", type=int, default=d.lr_decay_iters, help="iterations of the linear decay")
    p.add_argument("--no-gate", action="store_true", help="ablation: mask fixed to 1, no CLIP tower")
    p.add_argument("--augment", action="store_true", help="photometric jitter (brightness/contrast/saturation)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--workers", type=int, default=d.workers, help="data-loader processes (0 = in process)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--amp", default=d.amp, choices=AMP_MODES, help="mixed precision on CUDA")
    p.add_argument("--val-radius", type=float, default=d.val_radius_m, help="validation positive radius (m)")
    p.add_argument("--val-batch-size", type=int, default=d.val_batch_size)
    p.add_argument("--dinov2", type=Path, default=None, help="local folder with pretrained HF DINOv2 weights")
    p.add_argument("--clip", type=Path, default=None, help="local folder with pretrained HF CLIP weights")
    p.add_argument("--init", type=Path, default=None, help="start from this .safetensors checkpoint")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from a released DINOv2-SALAD checkpoint (dino_salad.ckpt) with a gate on top")
    p.add_argument("--gate-only", action="store_true",
                   help="train the semantic gate alone (backbone, SALAD, CLIP frozen)")
    p.add_argument("--gate-clip", default=d.gate_clip,
                   help="with --init-from: preset whose CLIP tower shape and gate size are used")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="with --init-from: input size (default 322 322, the SALAD authors' evaluation size)")
    p.add_argument("--num-heads", type=int, default=None,
                   help="with --init-from: ViT attention heads (default width / 64)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/train_state.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--keep-epochs", action="store_true",
                   help="also keep every epoch's checkpoint (<out>/epoch_NNN.safetensors) to choose one afterwards")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=args.data, out=args.out, preset=args.preset, val=args.val,
        cities=tuple(args.cities) if args.cities else None, epochs=args.epochs,
        iters_per_epoch=args.iters_per_epoch, batch_places=args.batch_places, img_per_place=args.img_per_place,
        lr=args.lr, weight_decay=args.weight_decay, lr_end_factor=args.lr_end_factor,
        lr_decay_iters=args.lr_decay_iters, use_gate=not args.no_gate, augment=args.augment, seed=args.seed,
        threads=args.threads, workers=args.workers, device=args.device, amp=args.amp,
        val_radius_m=args.val_radius, val_batch_size=args.val_batch_size, dinov2=args.dinov2, clip=args.clip,
        init=args.init, init_from=args.init_from, gate_only=args.gate_only, gate_clip=args.gate_clip,
        image_size=tuple(args.image_size) if args.image_size else None, num_heads=args.num_heads,
        resume=args.resume, progress=not args.no_progress, keep_epochs=args.keep_epochs,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = train(config_from_args(args))
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"clino-vpr train: error: {err}\n")
    last = result.history[-1] if result.history else {}
    if last.get("recall"):
        print(f"final: {_fmt_recall(last['recall'])}")
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"metrics: {result.metrics_json}  curves: {result.curves_png}")
    return 0
