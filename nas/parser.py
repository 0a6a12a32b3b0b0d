"""The ``nas`` command's flags: one parser per subcommand, built by a small function each.

The defaults are their owners' (:class:`~nas.recipe.TrainConfig`, :class:`~nas.progressive.ProgressiveConfig`, the
campaign's, read only when ``nas search --help`` prints them), so a default changes in one place. Building the
parser imports neither torch nor Optuna: ``nas --help`` and ``nas show`` stay fast. :mod:`nas.cli` maps each
subcommand to the library call that runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from typing import Any, NoReturn, Sequence

from nas.controller_names import CONTROLLERS  # not nas.controllers: building the parser imports no Optuna
from nas.halving import SCHEDULERS
from nas.outputs import REPORT_FILE, best_spec_path, default_storage_url, report_directory
from nas.progressive import ProgressiveConfig
from nas.recipe import AMP_CHOICES, AUGMENT_CHOICES, OPTIMIZERS, TimingConfig, TrainConfig
from nas.scaling import V2_MAX_IMAGE_SIZE
from nas.sources import DEFAULT_IMAGEFOLDER_SIZE
from nas.trials import FILTER_FIELDS, TABLE_COLUMNS
from search_spaces import presets

EXIT_USAGE = 2  # refused input: a one-line error, nothing done
IMAGENET_CLASSES = 1000  # the classifier --num-classes counts by default: the papers' parameter counts are ImageNet's

# TrainConfig fields that `nas train` takes as flags of the same name (the flag's dest; --lr sets learning_rate).
RECIPE_FLAGS = (
    "epochs", "image_size", "batch_size", "optimizer", "learning_rate", "warmup_steps", "weight_decay",
    "label_smoothing", "augment",
    "eval_image_size", "randaugment_magnitude", "mixup_alpha", "ema_decay", "amp", "channels_last", "compile", "seed",
    "threads", "device",
)
# Campaign settings that `nas search` takes as flags of the same name: a flag given overrides the --config file's.
SEARCH_OVERRIDES = (
    "space", "data", "trials", "epochs", "image_size", "batch_size", "controller", "storage", "study", "address",
    "workers", "gpus_per_trial", "cpus_per_trial", "seed", "scheduler", "min_epochs", "reduction_factor",
)
_STORAGE = default_storage_url("STUDY")  # where a study lives by default, as help shows it
_RESIZED = f"imagefolder's images are resized to {DEFAULT_IMAGEFOLDER_SIZE}px unless --image-size says otherwise"


class _HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default where it has one (not for flags that are off, nor options whose
    default is None, whose help says what happens without them) and its help does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "(default" in text or default is None or default is False
                or default is argparse.SUPPRESS or default == []):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (tuple, list)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class _SearchHelpFormatter(_HelpFormatter):
    """``nas search``'s help: a flag not given keeps the --config file's value, else the campaign's built-in
    default, which is read here, when help is printed, so that building the parser never imports the campaign."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = super()._get_help_string(action)
        if action.dest not in SEARCH_OVERRIDES or "(default" in text:
            return text
        from nas.campaign import SCHEDULER_OVERRIDES, CampaignConfig  # here: the campaign imports Optuna

        config = CampaignConfig()
        if action.dest in SCHEDULER_OVERRIDES:
            value = getattr(config.scheduler, SCHEDULER_OVERRIDES[action.dest])
        elif hasattr(config, action.dest):
            value = getattr(config, action.dest)
        else:
            value = getattr(config.train, action.dest)
        return f"{text} (default: the --config file's, else {value})"


class Parser(argparse.ArgumentParser):
    """argparse with this command's manners: a usage error is one line plus where the options are listed (the full
    usage only with --help), and a mistyped command, choice or flag gets the nearest valid one suggested."""

    def __init__(self, *args: Any, formatter_class: type[argparse.HelpFormatter] = _HelpFormatter,
                 **kwargs: Any) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}  # the subcommands' parsers, by name

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\nsee {self.prog} --help\n")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # argparse's check of a command or --choice value; a mistyped one is told the nearest choice.
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as error:
            close = difflib.get_close_matches(str(value), [str(choice) for choice in action.choices or ()], n=1)
            if not close:
                raise
            raise argparse.ArgumentError(action, f"{error.message}; did you mean {close[0]}?") from None

    def refuse_unknown(self, arguments: Sequence[str]) -> NoReturn:
        """Refuses arguments this command does not take, with the nearest option for each mistyped flag."""
        options = [option for action in self._actions for option in action.option_strings]
        guesses = {
            argument: close[0] for argument in arguments if argument.startswith("-")
            for close in [difflib.get_close_matches(argument.split("=", 1)[0], options, n=1)] if close
        }
        if len(guesses) == 1:
            hint = f"; did you mean {next(iter(guesses.values()))}?"
        elif guesses:
            hint = f"; did you mean {', '.join(f'{close} (for {typed})' for typed, close in guesses.items())}?"
        else:
            hint = ""
        self.error(f"unrecognized arguments: {' '.join(arguments)}{hint}")


DESCRIPTION = ("Training-aware neural architecture search (EfficientNetV2): inspect specs and search spaces, scale "
               "architectures, benchmark and proxy-train them, run a search and read, export and report its study. "
               "A spec is a preset name or a spec file; a space is a shipped space name or a space file.")


def build_parser() -> Parser:
    """The ``nas`` parser: ``--version`` and one subparser per command (``args.command`` names the one given);
    ``parser.commands`` holds the subparsers by name."""
    parser = Parser(prog="nas", description=DESCRIPTION, epilog="Run nas COMMAND --help for a command's options.")
    parser.add_argument("--version", action="version", version=f"nas {_version()}",
                        help="print the installed version of training-aware-nas and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.commands = commands.choices
    for add in (_add_show_parser, _add_scale_parser, _add_space_parser, _add_bench_parser, _add_train_parser,
                _add_search_parser, _add_trials_parser, _add_best_parser, _add_export_parser, _add_report_parser):
        add(commands)
    return parser


def _spec_help() -> str:
    return f"a spec file or a preset: {', '.join(presets.names())}"


def _add_show_parser(commands: argparse._SubParsersAction) -> None:
    show = commands.add_parser(
        "show", help="print a spec's stages, parameters and FLOPs",
        description="Print a spec's stages (block string, channels, layers and parameters of each), its parameter "
                    "count for --num-classes outputs (ImageNet's 1000 unless given) and its FLOPs (multiply-adds) at "
                    "its eval image size, counted from the spec without building the network.",
    )
    show.add_argument("spec", metavar="SPEC_OR_PRESET", help=_spec_help())
    show.add_argument("--num-classes", type=int, metavar="N",
                      help="classifier outputs the parameter count is for (default: the classes the spec was searched "
                           f"or trained on, else {IMAGENET_CLASSES}, ImageNet's, as in the papers; a search counts "
                           "for its data's classes, e.g. 10 for CIFAR-10)")
    show.add_argument("--json", action="store_true", help="machine-readable output")


def _add_scale_parser(commands: argparse._SubParsersAction) -> None:
    scale = commands.add_parser(
        "scale", help="scale a spec in width, depth and resolution",
        description="Scale a spec by explicit multipliers (--width/--depth) or by compound coefficient --phi; "
                    "--family N writes one spec per phi = 1..N, --search-coefficients first grid-searches alpha, "
                    "beta and gamma with the proxy trainer.",
    )
    scale.add_argument("spec", metavar="SPEC_OR_PRESET", help=_spec_help())
    scale.add_argument("--width", type=float, help="channel multiplier (default: 1 when --depth is given)")
    scale.add_argument("--depth", type=float, help="layer multiplier (default: 1 when --width is given)")
    scale.add_argument("--image-size", type=int,
                              help="new eval image size, with --width/--depth (default: the spec's)")
    scale.add_argument("--round-limit", type=float,
                              help="channel rounding guard: 0.9 EfficientNet, 0 V2 (default: the spec's)")
    scale.add_argument("--phi", type=float, help="compound coefficient: depth alpha^phi, width beta^phi, "
                                                        "resolution gamma^phi")
    scale.add_argument("--alpha", type=float, default=1.2, help="depth base")
    scale.add_argument("--beta", type=float, default=1.1, help="width base")
    scale.add_argument("--gamma", type=float, default=1.15, help="resolution base")
    scale.add_argument("--v2-rules", action="store_true",
                              help=f"EfficientNetV2 rules: image size capped at {V2_MAX_IMAGE_SIZE}, "
                                   "extra depth to later stages")
    scale.add_argument("--name", help="name of the new spec (default: the spec's, with the multipliers or phi)")
    scale.add_argument("-o", "--output", help="write the spec here (default: print YAML)")
    scale.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    scale.add_argument("--num-classes", type=int, default=IMAGENET_CLASSES, metavar="N",
                              help=f"classifier outputs the parameter count is for (default: {IMAGENET_CLASSES}, "
                                   "ImageNet's)")
    scale.add_argument("--family", type=int, metavar="N",
                              help="write one spec per phi = 1..N into the -o directory, with a table")
    scale.add_argument("--search-coefficients", action="store_true",
                              help="grid-search alpha, beta, gamma at phi = 1 with the proxy trainer (needs --data)")
    scale.add_argument("--data", default="synthetic", help="data for --search-coefficients")
    scale.add_argument("--epochs", type=int, default=3, help="proxy epochs per grid point")
    scale.add_argument("--batch-size", type=int, default=128, help="images per step of the proxy training")
    scale.add_argument("--grid-step", type=float, default=0.1, help="step of the coefficient grid")
    scale.add_argument("--seed", type=int, default=0, help="seed of the proxy training and its data split")
    scale.add_argument("--device", default="auto", help="device of the proxy training: auto, cpu, cuda, "
                                                               "cuda:N or mps")


def _add_space_parser(commands: argparse._SubParsersAction) -> None:
    space = commands.add_parser(
        "space", help="print a search space's choices and size, or samples from it",
        description="Print a search space's backbone, its per-stage choices (op, layers, kernel, expansion) and its "
                    "size; --sample N also prints N candidates drawn from it as block strings.",
    )
    space.add_argument("space", metavar="SPACE", help=f"a space file or one of: {', '.join(presets.space_names())}")
    space.add_argument("--sample", type=int, default=0, metavar="N", help="print N sampled candidates")
    space.add_argument("--seed", type=int, default=0, help="seed for --sample")
    space.add_argument("--json", action="store_true", help="machine-readable output")


def _add_bench_parser(commands: argparse._SubParsersAction) -> None:
    recipe = _defaults(TrainConfig)
    timing_defaults = TimingConfig()
    bench = commands.add_parser(
        "bench", help="measure a spec's training step time on a device",
        description="Time a spec's full training step (forward, backward, optimizer: nas train's default recipe) "
                    "on a device with the one timing protocol: warm-up steps excluded, the median of timed windows.",
    )
    bench.add_argument("spec", metavar="SPEC_OR_PRESET", help=_spec_help())
    _add_device_arguments(bench)
    bench.add_argument("--batch-size", type=int, default=32, help="images per step")
    bench.add_argument("--image-size", type=int, help="image size (default: the spec's train image size)")
    bench.add_argument("--in-channels", type=int, metavar="N",
                       help="input image channels, 1 grayscale or 3 RGB (default: 3, or the spec's in_channels)")
    bench.add_argument("--num-classes", type=int, default=IMAGENET_CLASSES, metavar="N",
                       help=f"classifier outputs (default: {IMAGENET_CLASSES}, ImageNet's)")
    bench.add_argument("--warmup", type=int, default=recipe["timing_warmup"], help="untimed steps before timing")
    bench.add_argument("--repeats", type=int, default=recipe["timing_repeats"],
                       help="timed windows; the median is reported")
    bench.add_argument("--inference", action="store_true", help="also time the forward pass alone (eval mode)")
    bench.add_argument("--relative-to", metavar="SPEC_OR_PRESET",
                       help="also estimate S/S0 against this reference (a campaign's baseline) from at least "
                            "--repeats interleaved pairs of windows, as a campaign's reward does, with its 95%% "
                            "interval")
    bench.add_argument("--precision", type=float, default=timing_defaults.precision, metavar="SHARE",
                       help="with --relative-to: time pairs until the interval's half-width is at most this share "
                            "of S/S0, leaving out pairs timed under CPU contention; 0: exactly --repeats pairs, "
                            "nothing left out (default %(default)s)")
    bench.add_argument("--max-timing-s", type=float, default=timing_defaults.max_seconds, metavar="SECONDS",
                       help="with --relative-to: stop there even if imprecise, and say so (default %(default)s)")
    bench.add_argument("--storage", metavar="URL",
                       help="with --relative-to: read S/S0 from, and add it to, the step-time cache of this Optuna "
                            f"storage (a campaign's, e.g. {_STORAGE}), keyed by both architectures, "
                            "the device and the settings")
    bench.add_argument("--json", action="store_true", help="machine-readable output")


def _add_train_parser(commands: argparse._SubParsersAction) -> None:
    recipe, table6 = _defaults(TrainConfig), _defaults(ProgressiveConfig)
    train = commands.add_parser(
        "train", help="proxy-train a spec and report accuracy, step time and size",
        description="Train a spec on a data source and report its accuracy (on a hold-out, or on --eval-data), "
                    "step time, parameters and FLOPs. "
                    "--checkpoint saves every epoch (an existing one needs --resume to continue it or --force to "
                    "start over), --save keeps the trained weights, --progressive trains in stages of growing "
                    "image size and regularization.",
    )
    train.add_argument("spec", metavar="SPEC_OR_PRESET", help=_spec_help())
    train.add_argument("--data", default="synthetic",
                       help=f"synthetic[:OPTIONS], cifar10:DIR, cifar100:DIR, npz:FILE or imagefolder:DIR ({_RESIZED}; "
                            "the others keep their own size)")
    train.add_argument("--epochs", type=int, default=recipe["epochs"], help="training epochs")
    train.add_argument("--image-size", type=int,
                       help=f"training image size (default: the data's own; {DEFAULT_IMAGEFOLDER_SIZE} for "
                            "imagefolder)")
    train.add_argument("--batch-size", type=int, default=recipe["batch_size"],
                       help="images per step (default: auto, the largest power of two from 16 to 128 that gives at "
                            "least 200 steps per epoch; README, Proxy training)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=recipe["optimizer"], help="optimizer")
    train.add_argument("--lr", dest="learning_rate", metavar="LR", type=float, default=recipe["learning_rate"],
                       help="peak learning rate (default: auto, 0.1 for sgd, 0.001 for adamw, 0.008 for rmsprop at "
                            "batch 128, scaled linearly with the batch)")
    train.add_argument("--warmup-steps", type=int, default=recipe["warmup_steps"],
                       help="optimizer steps over which the learning rate rises linearly (default: auto, 5%% of the "
                            "run's steps)")
    train.add_argument("--weight-decay", type=float, default=recipe["weight_decay"], help="weight decay")
    train.add_argument("--label-smoothing", type=float, default=recipe["label_smoothing"],
                       help="label smoothing of the loss")
    train.add_argument("--augment", choices=AUGMENT_CHOICES, default=recipe["augment"],
                       help="augmentation of the training images: auto is crop_flip where the data's mirror images "
                            "keep their labels (CIFAR, image folders, npz:FILE?flip=yes), else crop")
    train.add_argument("--eval-image-size", type=int, help="evaluation image size (default: the last training size)")
    train.add_argument("--randaugment", dest="randaugment_magnitude", type=float,
                       default=recipe["randaugment_magnitude"], metavar="M",
                       help="RandAugment magnitude 0-30 for a fixed-size run, 0 off")
    train.add_argument("--mixup", dest="mixup_alpha", type=float, default=recipe["mixup_alpha"], metavar="ALPHA",
                       help="mixup alpha, 0 off")
    progressive = train.add_argument_group(
        "progressive learning", "EfficientNetV2 Algorithm 1: M stages, image size and regularization growing "
                                "linearly from MIN to MAX (defaults: the paper's Table 6 for EfficientNetV2-S)")
    progressive.add_argument("--progressive", action="store_true", help="train in stages of growing size")
    progressive.add_argument("--stages", type=int, default=table6["num_stages"], help="number of stages M")
    for flag, name, kind, what in (("--image-size-range", "image_size", int, "image size"),
                                   ("--dropout-range", "dropout", float, "dropout rate"),
                                   ("--randaugment-range", "randaugment_magnitude", float, "RandAugment magnitude"),
                                   ("--mixup-range", "mixup_alpha", float, "mixup alpha")):
        progressive.add_argument(flag, type=kind, nargs=2, default=table6[name], metavar=("MIN", "MAX"),
                                 help=f"{what} of the first and the last stage")
    train.add_argument("--stream", action="store_true",
                       help="imagefolder: decode the images every epoch in DataLoader workers at each stage's size "
                            "instead of caching them once (automatic when the cache would not fit in memory)")
    train.add_argument("--loader-workers", type=int, metavar="N",
                       help="DataLoader worker processes of a streamed image folder (default: the CPU count shared "
                            "by this node's ranks, at most 8)")
    train.add_argument("--sync-bn", action="store_true",
                       help="under torchrun: batch-norm statistics of the global batch, not of each rank's share "
                            "(README, Training on many GPUs)")
    train.add_argument("--ema", dest="ema_decay", type=float, metavar="DECAY",
                       help="keep an exponential moving average of the weights (e.g. 0.999) and evaluate it")
    train.add_argument("--checkpoint", help="write the full training state here after every epoch; one run at a "
                                            "time owns it (a second is refused, naming the first's host and pid)")
    train.add_argument("--resume", action="store_true",
                       help="continue from --checkpoint, which must exist (same spec, recipe and data)")
    train.add_argument("--force", action="store_true",
                       help="start over: overwrite an existing --checkpoint instead of refusing")
    train.add_argument("--save", metavar="DIR", help="write weights.pt, spec.yaml and result.json into DIR")
    train.add_argument("--export-onnx", metavar="PATH", help="also write the trained network as ONNX (needs --save "
                                                              "and the onnx extra); checked against PyTorch")
    train.add_argument("--val-fraction", type=float, default=0.1,
                       help="share of the training data held out for accuracy (not with --eval-data)")
    train.add_argument("--eval-data", metavar="SOURCE",
                       help="train on all of --data and measure accuracy after every epoch and at the end on SOURCE "
                            "instead of a hold-out, e.g. a test split: 'npz:FILE?images=x_test&labels=y_test' (same "
                            "classes, channels and image size as --data)")
    train.add_argument("--seed", type=int, default=recipe["seed"],
                       help="seed of the hold-out split, the initial weights and the augmentation")
    _add_device_arguments(train)
    train.add_argument("--json", action="store_true", help="machine-readable output")


def _add_search_parser(commands: argparse._SubParsersAction) -> None:
    search = commands.add_parser(
        "search", help="run or resume a training-aware architecture search", formatter_class=_SearchHelpFormatter,
        description="Run (or resume) a search campaign. Settings come from --config (a campaign YAML) and any "
                    "flag given overrides its field; without --config the built-in defaults apply.",
    )
    search.add_argument("--config", help="campaign file, e.g. experiments/cpu-demo.yaml (default: none, the "
                                         "built-in settings)")
    search.add_argument("--space", help="space name or file")
    search.add_argument("--data", help=f"data source, as for nas train ({_RESIZED})")
    search.add_argument("--trials", type=int, help="finished trials wanted in the study (baseline included)")
    search.add_argument("--epochs", type=int, help="proxy-training epochs per candidate")
    search.add_argument("--image-size", type=int,
                        help="proxy image size (default: the --config file's, else the data's)")
    search.add_argument("--batch-size", type=int, help="images per proxy-training step (default: the --config file's, "
                                                       "else chosen from the data's size: README, \"Proxy training\")")
    search.add_argument("--controller", choices=CONTROLLERS, help="what proposes the candidates")
    search.add_argument("--storage", help=f"Optuna storage URL (default: the --config file's, else {_STORAGE})")
    search.add_argument("--study", help="study name")
    search.add_argument("--address", help="Ray cluster address, 'auto' or HOST:PORT (default: the --config file's, "
                                          "else start a local Ray)")
    search.add_argument("--workers", type=int, help="trials at once (default: the --config file's, else as many as the "
                                                    "cluster's CPUs and GPUs hold at --cpus-per-trial and "
                                                    "--gpus-per-trial; --executor local runs one at a time)")
    search.add_argument("--gpus-per-trial", type=float, help="GPUs per trial, a fraction shares one (default: the "
                                                             "--config file's, else 1 when there are GPUs, else 0)")
    search.add_argument("--cpus-per-trial", type=int, help="CPUs per trial")
    search.add_argument("--seed", type=int, help="seed of the controller")
    search.add_argument("--scheduler", choices=SCHEDULERS,
                        help="successive halving: asha judges each trial after --min-epochs, then every "
                             "--reduction-factor times as many epochs, and stops those behind; none trains every "
                             "trial for all its epochs")
    search.add_argument("--min-epochs", type=int, metavar="N", help="epochs before a trial's first rung (asha)")
    search.add_argument("--reduction-factor", type=int, metavar="N",
                        help="asha: the top 1/N of the rewards at a rung go on, and rungs are N times apart")
    search.add_argument("--export", help=f"where to write the best spec (default: {best_spec_path('STUDY')})")
    search.add_argument("--executor", choices=("ray", "local"), default="ray",
                        help="ray: trials as Ray Tune trials, --workers at a time, on this machine or the cluster of "
                             "--address; local: one trial at a time in this process, without Ray (for debugging)")


def _add_trials_parser(commands: argparse._SubParsersAction) -> None:
    trials = commands.add_parser(
        "trials", help="list a study's trials",
        description="List a study's trials. The table shows state, role, controller, reward, accuracy A, step time "
                    "as S/S0 (step_time_ratio) and parameters; --format csv or json gives every column (ms at the "
                    "timing settings beside the re-timed baseline's, MACs, architecture, ...). Reads the study only: "
                    "it creates and changes nothing.",
    )
    _add_study_arguments(trials)
    trials.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    _add_query_arguments(trials)


def _add_best_parser(commands: argparse._SubParsersAction) -> None:
    best = commands.add_parser(
        "best", help="the best trials by reward, or the Pareto front over A, S and P",
        description="List a study's best complete trials by reward, or with --pareto the trials no other beats on "
                    "accuracy, step time and parameters at once. Reads the study only.",
    )
    _add_study_arguments(best)
    best.add_argument("-k", type=int, default=5, help="how many")
    best.add_argument("--pareto", action="store_true", help="the trials no other beats on accuracy, step time "
                                                            "and parameters at once")
    best.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    _add_query_arguments(best, ranking=" (with -k: the best k among the trials kept; with --pareto: the front's "
                                       "trials that match)")


def _add_export_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export", help="write a trial's architecture as a spec file",
        description="Write a trial's architecture (the best complete trial unless --trial) as a spec file, print "
                    "it as YAML, or print timm's arch_def for it. Reads the study only.",
    )
    _add_study_arguments(export)
    export.add_argument("--trial", type=int, help="trial number (default: the best complete trial)")
    export.add_argument("-o", "--output", help="spec file to write (default: print YAML)")
    export.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    export.add_argument("--name", help="name of the exported spec (default: STUDY-trialN)")
    export.add_argument("--format", choices=("yaml", "timm"), default="yaml",
                        help="yaml: a spec file; timm: the equivalent timm arch_def block strings")


def _add_report_parser(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report", help="write an HTML report of a study, with figures",
        description=f"Write DIR/{REPORT_FILE} with PNG figures beside it (no network needed to view it): the "
                    "optimization history by controller, accuracy against step time and parameters with the Pareto "
                    "front, the top 10% of candidates' decisions per stage, the baseline and the winner, failures "
                    "by reason, and the campaign's settings and device.",
    )
    _add_study_arguments(report)
    report.add_argument("-o", "--output", metavar="DIR",
                        help=f"directory to write (default: {report_directory('STUDY')})")
    report.add_argument("--force", action="store_true", help="overwrite a report already in DIR")


def _add_study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, help="study name (the campaign's study setting)")
    parser.add_argument("--storage", help="Optuna storage URL: sqlite:///PATH, postgresql://..., or journal:PATH "
                                          f"(default: {_STORAGE}, relative to the working directory)")


def _version() -> str:
    """The installed distribution's version; a source tree that was never installed says so."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("training-aware-nas")
    except PackageNotFoundError:
        return "(not installed: run pip install -e .)"


def _defaults(config: type) -> dict[str, Any]:
    """The default of each field of a config dataclass: the CLI's defaults are its owners'."""
    return {field.name: field.default for field in dataclasses.fields(config)}


def _add_query_arguments(parser: argparse.ArgumentParser, ranking: str = "") -> None:
    fields = "; ".join(f"{name}: {', '.join(values)}" for name, values in FILTER_FIELDS.items())
    parser.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                        help=f"keep the trials whose FIELD is VALUE, in any case ({fields}); repeat it: filters on "
                             f"one field are alternatives, on different fields all must hold{ranking}")
    parser.add_argument("--sort", metavar="COLUMN", help="order the rows by COLUMN, smallest first, ties in the order "
                                                         f"shown without it; one of: {', '.join(TABLE_COLUMNS)}")
    parser.add_argument("--descending", action="store_true", help="with --sort: largest first (missing values "
                                                                  "stay last)")


def _add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--amp", choices=AMP_CHOICES, default="auto",
                        help="autocast precision (default: auto = bf16 on CUDA, none on CPU)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="channels_last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
