"""The training recipe as plain data: :class:`TrainConfig` and the choices it offers.

A campaign stores its recipe in the study and ``nas train`` reads it from flags, so the recipe, its choices and
its limits live here, importing no torch: reading or checking a recipe must not start the workshop. The code that
carries a choice out (``nas.step`` for optimizers and precision, ``nas.data`` for augmentation) registers
exactly these names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from nas.progressive import RANDAUGMENT_MAX_MAGNITUDE, ProgressiveConfig
from search_spaces.checks import check_bool, check_choice, check_int, check_real
from search_spaces.spec import MAX_IMAGE_SIZE

OPTIMIZERS = ("sgd", "adamw", "rmsprop")
# Peak learning rates at batch BASE_BATCH_SIZE; an automatic learning rate scales them linearly with the batch
# (Goyal et al. 2017). SGD's 0.1 is the CIFAR/ImageNet ResNet standard, RMSprop's is EfficientNet's 0.256 at 4096,
# AdamW's the common 1e-3.
BASE_BATCH_SIZE = 128
BASE_LEARNING_RATES = {"sgd": 0.1, "adamw": 1e-3, "rmsprop": 0.008}
# The automatic batch: the largest power of two from MIN_AUTO_BATCH_SIZE to MAX_AUTO_BATCH_SIZE that still gives
# MIN_STEPS_PER_EPOCH optimizer steps per epoch, so a small training set is not under-trained in few steps.
MIN_AUTO_BATCH_SIZE = 16
MAX_AUTO_BATCH_SIZE = 128
MIN_STEPS_PER_EPOCH = 200
WARMUP_FRACTION = 0.05  # automatic warm-up: this share of the run's optimizer steps
AUTOMATIC_FIELDS = ("batch_size", "learning_rate", "warmup_steps")  # None: resolved for the data (resolve_recipe)

AMP_CHOICES = ("auto", "bf16", "fp16", "none")
AUGMENTATIONS = ("crop_flip", "crop", "resized_crop_flip", "resized_crop", "none")
# ``auto`` resolves to crop_flip where the data says mirror images keep their labels, else crop (ImageData.flips).
AUGMENT_CHOICES = ("auto", *AUGMENTATIONS)
MAX_BATCH_SIZE = 65_536  # images per step; far above what one accelerator holds at any useful image size
MAX_EPOCHS = 10_000
MAX_THREADS = 1024
MAX_SEED = 2**32 - 1
# (low, high) of the integer settings; the caps refuse absurd values (a typo, a hostile file) before any work.
_INTEGER_RANGES = {
    "epochs": (1, MAX_EPOCHS), "eval_batch_size": (1, MAX_BATCH_SIZE),
    "timing_warmup": (1, 1000), "timing_repeats": (1, 1000), "seed": (0, MAX_SEED),
    "bn_recalibration_batches": (0, 10_000),
}
_OPTIONAL_INTEGER_RANGES = {"image_size": (1, MAX_IMAGE_SIZE), "eval_image_size": (1, MAX_IMAGE_SIZE),
                            "threads": (1, MAX_THREADS), "batch_size": (1, MAX_BATCH_SIZE),
                            "warmup_steps": (0, 10**9)}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Proxy-training settings. Defaults follow the paper's search (about 10 epochs) with a CIFAR-style recipe that
    adapts to the data (:func:`resolve_recipe`): ``batch_size``, ``learning_rate`` and ``warmup_steps`` None and
    ``augment`` ``auto`` are filled in from the training-set size and the data's flips when a run starts.

    ``image_size`` None trains at the data's resolution; otherwise batches are resized on the device.
    ``amp`` ``auto`` is bfloat16 on CUDA and full precision on CPU. ``threads`` None leaves torch's default.
    ``randaugment_magnitude`` (0-30, 0 off) and ``mixup_alpha`` (0 off) regularize a fixed-size run;
    ``progressive`` instead grows image size, dropout, RandAugment and mixup together over its stages
    (EfficientNetV2 Algorithm 1). ``eval_image_size`` None evaluates at the last training image size.
    ``ema_decay`` (e.g. 0.999) keeps an exponential moving average of the weights, updated every step, and
    evaluates (and saves) it instead of the raw weights. ``measure_step_time`` False skips timing the proxy's own
    step (a campaign times S at its timing settings instead, :mod:`nas.evaluate`).
    ``bn_recalibration_batches``: before evaluation, batch-norm statistics are recomputed as a plain average over
    this many training batches ("precise BN"; 0 keeps the running averages). With the reference momentum (0.01) a
    few hundred proxy steps leave the running averages far from the trained network's statistics, which would
    make hold-out accuracy measure BN lag rather than the architecture.
    """

    epochs: int = 10
    image_size: int | None = None
    batch_size: int | None = None
    optimizer: str = "sgd"
    learning_rate: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int | None = None
    label_smoothing: float = 0.1
    augment: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    eval_batch_size: int = 512
    eval_image_size: int | None = None
    randaugment_magnitude: float = 0.0
    mixup_alpha: float = 0.0
    progressive: ProgressiveConfig | None = None
    ema_decay: float | None = None
    bn_recalibration_batches: int = 20
    timing_warmup: int = 5
    timing_repeats: int = 7
    measure_step_time: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.progressive, Mapping):
            object.__setattr__(self, "progressive", ProgressiveConfig.from_dict(self.progressive))
        if self.progressive is not None and not isinstance(self.progressive, ProgressiveConfig):
            raise ValueError(f"progressive must be a ProgressiveConfig, a mapping or None, got {self.progressive!r}")
        for field, (low, high) in _INTEGER_RANGES.items():
            check_int(field, getattr(self, field), low, high)
        for field, (low, high) in _OPTIONAL_INTEGER_RANGES.items():
            check_int(field, getattr(self, field), low, high, optional=True)
        for field in ("channels_last", "compile", "measure_step_time"):
            check_bool(field, getattr(self, field))
        check_real("learning_rate", self.learning_rate, 0.0, 1e6, low_open=True, optional=True)
        for field, low, high in (("momentum", 0.0, 1.0), ("weight_decay", 0.0, 1.0), ("label_smoothing", 0.0, 1.0),
                                 ("randaugment_magnitude", 0.0, RANDAUGMENT_MAX_MAGNITUDE), ("mixup_alpha", 0.0, 100.0)):
            check_real(field, getattr(self, field), low, high)
        check_real("ema_decay", self.ema_decay, 0, 1, low_open=True, high_open=True, optional=True)
        if self.progressive is not None and self.epochs < self.progressive.num_stages:
            raise ValueError(
                f"epochs ({self.epochs}) must be at least progressive.num_stages ({self.progressive.num_stages})"
            )
        for field, allowed in (("optimizer", OPTIMIZERS), ("augment", AUGMENT_CHOICES), ("amp", AMP_CHOICES)):
            check_choice(field, getattr(self, field), allowed)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["progressive"] = None if self.progressive is None else self.progressive.to_dict()
        return data

    @property
    def resolved(self) -> bool:
        """Whether every automatic setting is filled in (:func:`resolve_recipe`)."""
        return (self.batch_size is not None and self.learning_rate is not None and self.warmup_steps is not None
                and self.augment != "auto")


def auto_batch_size(train_images: int) -> int:
    """The automatic batch for a training set of ``train_images``: the largest power of two from
    MIN_AUTO_BATCH_SIZE to MAX_AUTO_BATCH_SIZE that gives at least MIN_STEPS_PER_EPOCH steps per epoch (the
    smallest when none does), never more than the training set."""
    batch_size = MAX_AUTO_BATCH_SIZE
    while batch_size > MIN_AUTO_BATCH_SIZE and train_images // batch_size < MIN_STEPS_PER_EPOCH:
        batch_size //= 2
    return max(1, min(batch_size, train_images))


def resolve_recipe(config: TrainConfig, *, train_images: int, flips: bool = True) -> TrainConfig:
    """``config`` with its automatic settings filled in for a training set of ``train_images`` images whose mirror
    images keep their labels when ``flips`` (README, "Proxy training"; settings given explicitly stay):

    - ``batch_size``: :func:`auto_batch_size`;
    - ``learning_rate``: the optimizer's BASE_LEARNING_RATES value scaled by batch_size / BASE_BATCH_SIZE;
    - ``warmup_steps``: WARMUP_FRACTION of the run's optimizer steps (epochs x full batches per epoch), at least 1;
    - ``augment`` ``auto``: ``crop_flip`` when ``flips``, else ``crop`` (digits, text, oriented patterns).
    """
    check_int("train_images", train_images, 1, 10**12)
    batch_size = config.batch_size if config.batch_size is not None else auto_batch_size(train_images)
    learning_rate = config.learning_rate
    if learning_rate is None:
        learning_rate = BASE_LEARNING_RATES[config.optimizer] * batch_size / BASE_BATCH_SIZE
    warmup_steps = config.warmup_steps
    if warmup_steps is None:
        total_steps = config.epochs * max(1, train_images // batch_size)
        warmup_steps = max(1, round(WARMUP_FRACTION * total_steps))
    augment = config.augment if config.augment != "auto" else ("crop_flip" if flips else "crop")
    return dataclasses.replace(config, batch_size=batch_size, learning_rate=learning_rate,
                               warmup_steps=warmup_steps, augment=augment)


#: The TimingConfig fields that say how precisely S/S0 is measured, not what is measured: a resumed campaign may
#: change them (nas.study.StudySettings.free).
TIMING_PROTOCOL_FIELDS = ("warmup", "pairs", "window_s", "precision", "max_seconds", "rebuild_every", "max_stall")


@dataclass(frozen=True, kw_only=True)
class TimingConfig:
    """The settings step time S is measured at: those of the user's real training, not the proxy's (DESIGN.md).

    ``image_size`` None is the architecture's own training image size (the space's backbone's, for a campaign),
    ``batch_size`` None the proxy recipe's when it sets one, else MAX_AUTO_BATCH_SIZE (the batch the automatic
    recipe gives a data set large enough, and a common one for real training). ``amp``, ``channels_last`` and
    ``compile`` are the precision, memory format and compilation of the timed step.

    S/S0 is estimated from interleaved windows of the candidate and the reference in quads A B B A
    (:func:`nas.timing.paired_ratio`), after ``warmup`` untimed steps of each; each window runs enough steps to
    last at least ``window_s`` seconds, so that timer and launch noise stay small beside it. At least ``pairs``
    pairs are timed; with ``precision`` (a share of the ratio) pairs go on until the 95% interval's half-width is
    at most that, or until ``max_seconds`` have passed (the measurement is then recorded as imprecise); ``precision``
    None times exactly ``pairs`` (within the same cap). Both networks are built afresh every ``rebuild_every``
    pairs. Pairs timed while some task waited for a CPU for more than ``max_stall`` of the time (Linux's CPU
    pressure) are left out; ``max_stall`` None does not look.
    """

    image_size: int | None = None
    batch_size: int | None = None
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    warmup: int = 5
    pairs: int = 12
    window_s: float = 0.25
    precision: float | None = 0.02
    max_seconds: float = 30.0
    rebuild_every: int = 8
    max_stall: float | None = 0.1

    def __post_init__(self) -> None:
        check_int("image_size", self.image_size, 1, MAX_IMAGE_SIZE, optional=True)
        check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE, optional=True)
        check_choice("amp", self.amp, AMP_CHOICES)
        for field in ("channels_last", "compile"):
            check_bool(field, getattr(self, field))
        check_int("warmup", self.warmup, 1, 1000)
        check_int("pairs", self.pairs, 1, 1000)
        check_real("window_s", self.window_s, 0, 60, low_open=True)
        check_real("precision", self.precision, 0, 1, low_open=True, high_open=True, optional=True)
        check_real("max_seconds", self.max_seconds, 0, 3600, low_open=True)
        check_int("rebuild_every", self.rebuild_every, 2, 1000)
        check_real("max_stall", self.max_stall, 0, 1, low_open=True, optional=True)

    def resolved(self, *, image_size: int, batch_size: int) -> TimingConfig:
        """These settings with the defaults filled in: ``image_size`` and ``batch_size`` where they are None."""
        return dataclasses.replace(self, image_size=self.image_size or image_size,
                                   batch_size=self.batch_size or batch_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
