"""Drive any whetstone sharpener from PyTorch Lightning (optional extra ``lightning``).

    import lightning.pytorch as pl
    from whetstone.integrations.lightning import SharpenerCallback

    trainer = pl.Trainer(max_epochs=30, callbacks=[SharpenerCallback(ws.SimpleSharpener(5, steps=5))])
    trainer.fit(lit_module)          # stops once every spiking layer is at sharpness 1

The callback attaches to the LightningModule (whose spiking layers it sharpens), feeds the sharpener
the loss returned by ``training_step`` (averaged over processes under any distributed strategy, so
every rank sharpens alike), and saves the sharpener's state in Lightning checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..utils.checks import install_hint

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the older package name
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as error:
        raise ImportError(
            f"the Lightning callback needs lightning: {install_hint('lightning', 'lightning')}"
        ) from error

from ..nn.quantization_aware import QuantizationAware
from ..nn.sharpen import Sharpener

__all__ = ["SharpenerCallback"]


class SharpenerCallback(pl.Callback):
    """Lightning callback that runs ``sharpener``'s hooks and stops training once it is done.

    Args:
        sharpener: any :class:`~whetstone.nn.sharpen.Sharpener`.
        stop_when_done: set ``trainer.should_stop`` when every spiking layer reaches sharpness 1
            (further epochs cannot change a fully binary network: it passes no gradient). Pass False
            to train on with surrogate gradients (:func:`~whetstone.nn.sharpen.set_model_surrogate`).
        quantizer: a :class:`~whetstone.nn.quantization_aware.QuantizationAware`: train for a chip's integer
            weights from its ``start_epoch`` on (applied on every process).
    """

    def __init__(
        self, sharpener: Sharpener, stop_when_done: bool = True, quantizer: QuantizationAware | None = None
    ) -> None:
        if not isinstance(sharpener, Sharpener):
            raise TypeError(f"sharpener must be a whetstone Sharpener, got {type(sharpener).__name__}")
        if quantizer is not None and not isinstance(quantizer, QuantizationAware):
            raise TypeError(f"quantizer must be a whetstone QuantizationAware, got {type(quantizer).__name__}")
        self.sharpener, self.stop_when_done, self.quantizer = sharpener, stop_when_done, quantizer
        self._loss_sum, self._batches = 0.0, 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batches = trainer.num_training_batches
        finite = isinstance(batches, int) and batches > 0
        self.sharpener.on_train_begin(pl_module, batches_per_epoch=batches if finite else None)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._loss_sum, self._batches = 0.0, 0
        if self.quantizer is not None:
            self.quantizer.on_epoch_begin(pl_module, trainer.current_epoch)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is None:  # the step was skipped
            return
        value = float(trainer.strategy.reduce(loss.detach(), reduce_op="mean"))
        self.sharpener.on_batch_end(batch_idx, value)
        self._loss_sum += value
        self._batches += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = self._loss_sum / max(self._batches, 1)
        self.sharpener.on_epoch_end(trainer.current_epoch, loss)
        for index, layer in enumerate(self.sharpener.layers):
            pl_module.log(f"sharpness/{index}", layer.get_sharpness(), on_epoch=True, sync_dist=False)
        if self.stop_when_done and self.sharpener.done:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return self.sharpener.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sharpener.load_state_dict(state_dict)
