"""The callbacks a fit may have (early stopping, a best-epoch checkpoint, a plateau's lower learning rate), and
validation rows held out of the training rows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    Field,
    StringConstraints,
)

from service.spec.base import (
    Strict,
    plain_text,
)

# --- callbacks --------------------------------------------------------------------------------------------------

Monitor = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100),
    AfterValidator(plain_text),
    Field(
        description="What is watched: 'loss', a metric name, or either with 'val_' before it.", examples=["val_loss"]
    ),
]
Mode = Annotated[
    Literal["auto", "min", "max"],
    Field(description="Whether the monitored value should fall or rise; 'auto' as Keras decides from its name."),
]
Epochs = Annotated[int, Field(ge=0, le=100_000)]


class CallbackSpec(Strict):
    monitor: Monitor = "val_loss"
    mode: Mode = "auto"

    # The class in keras.callbacks that build() makes (see LayerSpec.keras_class). Keras callbacks have no
    # get_config(): the client reads a callback's options from its attributes, named as its constructor's
    # arguments but where ``keras_attributes`` says otherwise.
    keras_class: ClassVar[str]
    keras_attributes: ClassVar[Mapping[str, str]] = {}
    # Constructor arguments that mean nothing to a job: what the callback prints, and where a script saves files.
    keras_unchecked: ClassVar[frozenset[str]] = frozenset({"verbose"})


class EarlyStoppingCallback(CallbackSpec):
    """Stops training when the monitored value has stopped improving (keras.callbacks.EarlyStopping). The job
    records the epoch it stopped at and its best epoch."""

    keras_class = "EarlyStopping"

    type: Literal["early_stopping"]
    min_delta: float = Field(default=0.0, ge=0.0, description="A smaller change is not an improvement.")
    patience: Epochs = Field(default=0, description="Epochs without improvement before stopping.")
    baseline: float | None = Field(default=None, description="Stop if the value does not beat this.")
    restore_best_weights: bool = Field(default=False, description="When it stops, go back to the best epoch's weights.")
    start_from_epoch: Epochs = Field(default=0, description="Epochs of warm-up before improvement is looked for.")

    def build(self) -> Any:
        from keras import callbacks

        return callbacks.EarlyStopping(**self.model_dump(exclude={"type"}))


class CheckpointCallback(CallbackSpec):
    """Keeps the weights of the best epoch by the monitored value, as ModelCheckpoint(save_best_only=True) does:
    the published model is that epoch's, and the job says which epoch it is."""

    keras_class = "ModelCheckpoint"
    # ModelCheckpoint keeps its threshold as the best value so far; the job keeps its own file.
    keras_attributes: ClassVar[Mapping[str, str]] = {"initial_value_threshold": "best"}
    keras_unchecked = frozenset({"verbose", "filepath", "save_weights_only"})

    type: Literal["checkpoint"]
    initial_value_threshold: float | None = Field(
        default=None, description="Only an epoch that beats this value is kept."
    )

    def build(self, filepath: str) -> Any:
        from keras import callbacks

        return callbacks.ModelCheckpoint(
            filepath,
            monitor=self.monitor,
            mode=self.mode,
            save_best_only=True,
            save_weights_only=True,
            initial_value_threshold=self.initial_value_threshold,
        )


class ReduceLROnPlateauCallback(CallbackSpec):
    """Multiplies the learning rate by ``factor`` when the monitored value has stopped improving
    (keras.callbacks.ReduceLROnPlateau)."""

    keras_class = "ReduceLROnPlateau"

    type: Literal["reduce_lr_on_plateau"]
    factor: float = Field(default=0.1, gt=0.0, lt=1.0)
    patience: Epochs = 10
    min_delta: float = Field(default=0.0001, ge=0.0)
    cooldown: Epochs = Field(default=0, description="Epochs to wait after a reduction before watching again.")
    min_lr: float = Field(default=0.0, ge=0.0, le=10.0)

    def build(self) -> Any:
        from keras import callbacks

        return callbacks.ReduceLROnPlateau(**self.model_dump(exclude={"type"}))


CALLBACK_TYPES: tuple[type[CallbackSpec], ...] = (EarlyStoppingCallback, CheckpointCallback, ReduceLROnPlateauCallback)
Callback = Annotated[
    EarlyStoppingCallback | CheckpointCallback | ReduceLROnPlateauCallback, Field(discriminator="type")
]


class HeldOutValidation(Strict):
    """Validation rows held out of the training rows, as ``train_test_split`` makes them."""

    size: float = Field(gt=0.0, lt=1.0, description="The fraction of the training rows to validate on.")
    random_state: int | None = Field(default=None, description="Seed of the split.")
    stratify: bool = Field(default=False, description="Keep each class's share in both parts.")
