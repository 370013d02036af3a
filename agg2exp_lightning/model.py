"""The segmentation LightningModule: MONAI Swin-UNETR, DiceCE loss, AdamW + cosine, sliding-window validation."""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from agg2exp_lightning.labels import THORAX_CLASSES
from agg2exp_lightning.segmentation_metrics import dice_per_class, mean_dice_per_class
from agg2exp_lightning.utils import plain_tensor
from agg2exp_lightning.utils.cpu_conv import onednn_conv3d

log = logging.getLogger(__name__)


def build_swin_unetr(
    in_channels: int = 1,
    num_classes: int = 17,
    feature_size: int = 48,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    norm_name: str | tuple = "instance",
    use_v2: bool = False,
    use_checkpoint: bool = False,
    window_size: int = 7,
) -> nn.Module:
    """MONAI's Swin-UNETR with arguments checked up front (feature_size divisible by 12)."""
    from monai.networks.nets import SwinUNETR

    if feature_size % 12 != 0 or feature_size <= 0:
        raise ValueError(f"Expected argument `feature_size` to be a positive multiple of 12, but got {feature_size}")
    if len(depths) != 4 or len(num_heads) != 4:
        raise ValueError(f"Expected four `depths` and four `num_heads`, got {tuple(depths)} and {tuple(num_heads)}")
    if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1:
        raise ValueError(f"Expected argument `window_size` to be a positive integer, but got {window_size!r}")
    if isinstance(norm_name, list):
        norm_name = (norm_name[0], dict(norm_name[1])) if len(norm_name) == 2 else tuple(norm_name)
    return SwinUNETR(
        in_channels=in_channels,
        out_channels=num_classes,
        feature_size=feature_size,
        depths=tuple(depths),
        num_heads=tuple(num_heads),
        norm_name=norm_name,
        use_v2=use_v2,
        use_checkpoint=use_checkpoint,
        window_size=window_size,
        spatial_dims=3,
    )


class SegmentationModule(pl.LightningModule):
    """Swin-UNETR trained on 17 thorax labels.

    Args:
        num_classes: output classes (17 thorax labels by default).
        in_channels: input channels (1 for CT).
        feature_size, depths, num_heads, norm_name, use_v2, use_checkpoint, window_size: Swin-UNETR settings
            (``use_checkpoint`` is gradient checkpointing; ``window_size`` the attention window, 7 as in MONAI).
        class_weights: per-class weights of the DiceCE loss: ``None`` (uniform, as published), a list
            of ``num_classes`` numbers, or ``"inverse_sqrt_frequency"`` / ``"inverse_frequency"``:
            computed when fitting starts from the label voxel counts of the data module's training
            scans (:mod:`agg2exp_lightning.class_weights`).
        lr, weight_decay: AdamW settings.
        warmup_fraction: share of the optimisation steps with a linear warm-up before the cosine decay.
        roi_size, sw_batch_size, sw_overlap, sw_mode: sliding-window inference for validation.
        class_names: label names, for logging.

    Example:
        >>> module = SegmentationModule(feature_size=12, depths=(1, 1, 1, 1), roi_size=(64, 64, 64))
    """

    def __init__(
        self,
        num_classes: int = 17,
        in_channels: int = 1,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        norm_name: str | list = "instance",
        use_v2: bool = False,
        use_checkpoint: bool = False,
        window_size: int = 7,
        class_weights: str | Sequence[float] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 1e-5,
        warmup_fraction: float = 0.02,
        roi_size: Sequence[int] = (96, 96, 96),
        sw_batch_size: int = 2,
        sw_overlap: float = 0.25,
        sw_mode: str = "gaussian",
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if class_names is None:
            class_names = THORAX_CLASSES if num_classes == len(THORAX_CLASSES) else [f"class_{i}" for i in range(num_classes)]
        if len(class_names) != num_classes:
            raise ValueError(f"Expected {num_classes} `class_names`, got {len(class_names)}")
        if any(int(s) % 32 for s in roi_size):
            raise ValueError(f"Expected every side of `roi_size` divisible by 32 (Swin-UNETR), got {tuple(roi_size)}")
        self.save_hyperparameters(ignore=["class_names"])
        self.hparams["class_names"] = list(class_names)
        self.class_names = list(class_names)
        self.net = build_swin_unetr(
            in_channels, num_classes, feature_size, depths, num_heads, norm_name, use_v2, use_checkpoint, window_size
        )
        from monai.losses import DiceCELoss

        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, weight=_fixed_class_weights(class_weights, num_classes))
        #: Per-scan Dice of the last validation epoch, every rank's scans: subject id -> [C] (NaN: class absent
        #: from both). Complete before the epoch-end hooks (see :meth:`_record_scan_dice`).
        self.last_val_dice: dict[str, Tensor] = {}
        #: The same for the last test epoch.
        self.last_test_dice: dict[str, Tensor] = {}
        #: Training steps skipped because their loss or gradients were NaN or infinite (saved in checkpoints).
        self.nonfinite_loss_steps = 0
        #: Whether the network trains in ``torch.channels_last_3d`` (chosen by the hardware when fitting starts,
        #: :func:`~agg2exp_lightning.utils.hardware.choose_memory_format`).
        self.channels_last = False

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the network; the batch-one CPU convolutions through oneDNN (:func:`onednn_conv3d`)."""
        with onednn_conv3d():
            return self.net(x)

    # -- training -----------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        from agg2exp_lightning.utils.hardware import choose_memory_format

        self.channels_last, why = choose_memory_format(self.trainer.precision, self.device)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last_3d)
        log.info("memory format: %s", why)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        image = plain_tensor(batch["image"])
        if self.channels_last and image.dim() == 5:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        logits = self(image)
        label = plain_tensor(batch["label"])
        loss = self.loss(logits, label)
        if not torch.isfinite(loss):
            self.nonfinite_loss_steps += 1
            ids = batch.get("subject_id") if isinstance(batch, dict) else None
            log.warning(
                "non-finite training loss (%s) at global step %d (epoch %d, batch %d, subjects %s); skipping this "
                "batch (%d such steps so far)", float(loss), self.global_step, self.current_epoch, batch_idx, ids,
                self.nonfinite_loss_steps,
            )
            return None  # Lightning skips backward and the optimiser's update; the run goes on
        self.log("train/loss", loss, prog_bar=True, batch_size=label.shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """A finite loss can still give non-finite gradients (e.g. an overflow in reduced precision): such a step
        updates nothing (every gradient dropped, so AdamW skips every parameter) and is counted with the skipped
        losses, instead of turning the weights into NaN for the rest of the run."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            return
        self.nonfinite_loss_steps += 1
        log.warning("non-finite gradients at global step %d (epoch %d); skipping this update (%d such steps so far)",
                    self.global_step, self.current_epoch, self.nonfinite_loss_steps)
        for p in self.parameters():
            p.grad = None

    def on_train_epoch_end(self) -> None:
        # a running total over the run (restored from checkpoints), logged once per epoch
        self.log("train/nonfinite_loss_steps", float(self.nonfinite_loss_steps), on_step=False, on_epoch=True)

    def on_train_end(self) -> None:
        if self.nonfinite_loss_steps:
            log.warning(
                "%d training step(s) had a non-finite loss or non-finite gradients and were skipped (see the warnings naming "
                "each step)",
                self.nonfinite_loss_steps,
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nonfinite_loss_steps"] = int(self.nonfinite_loss_steps)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite_loss_steps = int(checkpoint.get("nonfinite_loss_steps", 0))
        # Class weights computed from the training labels (class_weights="inverse_...") are buffers of the loss
        # set when fitting starts; a module built to validate, test or predict from such a checkpoint takes them
        # from it, so that the checkpoint loads strictly.
        weight = (checkpoint.get("state_dict") or {}).get("loss.cross_entropy.weight")
        if weight is not None and self.loss.cross_entropy.weight is None:
            from monai.losses import DiceCELoss

            self.loss = DiceCELoss(to_onehot_y=True, softmax=True, weight=torch.as_tensor(weight).to(self.device))

    # -- inference ----------------------------------------------------------------------------
    def predict_logits(self, image: Tensor) -> Tensor:
        """Logits ``[B, C, *S]`` for whole volumes by sliding-window inference."""
        from monai.inferers import sliding_window_inference

        hp = self.hparams
        image = plain_tensor(image)
        return sliding_window_inference(
            image, tuple(hp.roi_size), hp.sw_batch_size, self, overlap=hp.sw_overlap, mode=hp.sw_mode
        )

    def on_validation_epoch_start(self) -> None:
        self.last_val_dice = {}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return self._record_scan_dice(batch, self.last_val_dice, stage="val")

    def on_validation_epoch_end(self) -> None:
        self._log_mean_dice("val", self.last_val_dice)

    def on_test_epoch_start(self) -> None:
        self.last_test_dice = {}

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return self._record_scan_dice(batch, self.last_test_dice, stage="test")

    def on_test_epoch_end(self) -> None:
        self._log_mean_dice("test", self.last_test_dice)

    def _record_scan_dice(self, batch: dict[str, Any], records: dict[str, Tensor], *, stage: str) -> dict[str, Tensor]:
        """Per-scan Dice of ``batch`` into ``records``, with every rank's scans of this step; ``{stage}/loss``
        (the training loss on the whole volumes, averaged over the epoch's scans) beside it.

        Under distributed evaluation each step gathers all ranks' records, so ``records`` holds every
        scan seen so far on every rank before any epoch-end hook (the monitors' included) runs. A scan
        that ``DistributedSampler`` repeats to even out the ranks is kept once.
        """
        from agg2exp_lightning.utils.distributed import gather_objects

        logits = self.predict_logits(batch["image"])
        pred = logits.argmax(1)
        label = plain_tensor(batch["label"])[:, 0].long()
        loss = self.loss(logits, label[:, None])
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=label.shape[0], sync_dist=True)
        mine = [
            (str(batch["subject_id"][i]), dice_per_class(pred[i], label[i], self.hparams.num_classes).cpu())
            for i in range(pred.shape[0])
        ]
        for sid, dice in (record for rank in gather_objects(mine) for record in rank):
            records.setdefault(sid, dice)
        return dict(mine)

    def _log_mean_dice(self, stage: str, records: dict[str, Tensor]) -> None:
        """``{stage}/dice/<class>`` and ``{stage}/mean_dice_fg`` over every scan (identical on every rank)."""
        mean = mean_dice_per_class(records, self.hparams.num_classes).float()  # NaN: class absent from every scan
        for name, value in zip(self.class_names, mean):
            if not math.isnan(value):
                self.log(f"{stage}/dice/{name}", value, sync_dist=False)
        fg = mean[1:][~torch.isnan(mean[1:])]
        self.log(f"{stage}/mean_dice_fg", fg.mean() if fg.numel() else torch.tensor(0.0), prog_bar=True, sync_dist=False)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Label maps ``[B, *S]`` (uint8 up to 256 classes) on the preprocessed grid, with what maps them back to the scan's grid.

        Returns:
            ``subject_id``, ``prediction``, ``affine`` (``[B, 4, 4]`` of the preprocessed grid) and, when the
            data recorded them (MONAI's ``original_affine`` / ``spatial_shape`` meta keys), the original
            image's ``original_affine`` and ``spatial_shape``.
        """
        image = batch["image"]
        logits = self.predict_logits(image)
        label_dtype = torch.uint8 if self.hparams.num_classes <= 256 else torch.int32
        out: dict[str, Any] = {"subject_id": list(batch["subject_id"]), "prediction": logits.argmax(1).to(label_dtype).cpu()}
        meta = getattr(image, "meta", {}) or {}
        if hasattr(image, "affine"):
            out["affine"] = torch.as_tensor(image.affine, dtype=torch.float64).reshape(-1, 4, 4).cpu()
        for key, tail in (("original_affine", (4, 4)), ("spatial_shape", (-1,))):
            if key in meta:
                out[key] = torch.as_tensor(meta[key]).reshape(image.shape[0], *tail).cpu()
        return out

    # -- optimisation -------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        scheme = self.hparams.class_weights
        if stage != "fit" or not isinstance(scheme, str) or self.loss.cross_entropy.weight is not None:
            return
        from monai.losses import DiceCELoss

        from agg2exp_lightning.class_weights import class_weights

        datamodule = getattr(self.trainer, "datamodule", None)
        if not callable(getattr(datamodule, "label_voxel_counts", None)):
            raise ValueError(
                f"Expected a data module with `label_voxel_counts()` (e.g. ThoraxDataModule) to count training labels "
                f"for `class_weights={scheme!r}`, but the trainer has {type(datamodule).__name__}: pass the weights as a list instead"
            )
        weights = class_weights(datamodule.label_voxel_counts("train", num_classes=self.hparams.num_classes), scheme)
        log.info("DiceCE class weights (%s): %s", scheme, dict(zip(self.class_names, [round(float(w), 3) for w in weights])))
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, weight=weights.to(self.device))

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(hp.warmup_fraction * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _fixed_class_weights(class_weights: str | Sequence[float] | None, num_classes: int) -> Tensor | None:
    """The loss weights known at construction (a list), ``None`` for uniform or data-derived ones."""
    from agg2exp_lightning.class_weights import SCHEMES

    if class_weights is None:
        return None
    if isinstance(class_weights, str):
        if class_weights not in SCHEMES:
            raise ValueError(f"Expected argument `class_weights` to be None, a list of {num_classes} weights or one of {SCHEMES}, but got {class_weights!r}")
        return None
    w = torch.as_tensor(list(class_weights), dtype=torch.float32)
    if w.shape != (num_classes,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not bool((w > 0).any()):
        raise ValueError(f"Expected argument `class_weights` to hold {num_classes} non-negative finite weights, but got {list(class_weights)!r}")
    return w
