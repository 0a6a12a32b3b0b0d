"""One trial of a campaign as an executor runs it: the constraints, S at the target settings, then proxy training.

The order is the cost order (DESIGN.md, data flow): the parameter count P is known from the architecture, so a
candidate over ``max_params_ratio`` is PRUNED before anything runs; S/S0 is timed next (or read from the step-time
cache the plan carries), at the campaign's timing settings, against the baseline in interleaved windows, inside
the device's exclusive timing lock (:mod:`nas.timing`), so a candidate over ``max_step_time_ratio`` is PRUNED
before proxy training; only then is it proxy-trained for its accuracy A, without timing its proxy step again.
The baseline trial times itself alone at the same settings: that S is S0, and its ratio is 1 by definition.
With successive halving, the trainer is handed the plan's rungs and a judge that passes each rung's result, with
the S/S0 measured here, to the campaign's decision (:mod:`nas.halving`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from nas.campaign import TrialPlan
from nas.complexity import count_spec
from nas.data import ImageData
from nas.halving import Rungs
from nas.measure import benchmark_spec, describe_device, prepare_device, resolve_device
from nas.recipe import TrainConfig
from nas.records import STATUS_PRUNED, EvalResult
from nas.timing import DeviceLock, relative_step_time
from nas.train import failed_status, failure_reason
from search_spaces.spec import ArchSpec

Trainer = Callable[..., EvalResult]
"""What a trial calls to proxy-train a candidate, as ``trainer(spec, data, config, rungs=Rungs(...) or None)``:
:func:`nas.train.train_and_evaluate`, or a replacement with the same contract (it returns a failed EvalResult
rather than raising, and with ``rungs`` asks ``rungs.judge`` after each of ``rungs.epochs`` and returns a
``stopped`` result when told to stop). Ray's executor pickles it to its workers."""


def evaluate_candidate(
    spec: ArchSpec,
    data: ImageData,
    train: TrainConfig,
    plan: TrialPlan,
    trainer: Trainer,
    *,
    on_timed: Callable[[dict[str, Any]], None] | None = None,
    on_rung: Callable[[EvalResult], bool] | None = None,
) -> EvalResult:
    """The trial's result: PRUNED with the reason when over a constraint, FAILED when timing fails (out of memory
    at the target settings, say), else ``trainer``'s proxy-training result with the step-time measurement.

    ``on_timed`` receives a new S/S0 measurement (with the device and settings) as soon as it is taken, before
    proxy training: the campaign caches it then, so a trial interrupted while training is not timed again.
    With ``plan.rungs`` and ``on_rung``, the trainer asks ``on_rung`` at each rung, with the rung's result carrying
    this S/S0 as the final result does; its answer (True: train on) is the trainer's."""
    measured: dict[str, Any] = {}
    try:
        device = resolve_device(train.device)
        prepare_device(device, train.threads)  # first: the device's description names its threads
        measured["device"] = describe_device(device)
        # counted from the spec, exactly as the built network has them (nas.complexity): no build before training
        parameters = count_spec(spec, num_classes=data.num_classes, in_channels=data.in_channels).parameters
        measured["parameters"] = parameters
        reason = _over_params(parameters, plan)
        if reason is None:
            measured.update(_step_time(spec, data, train, plan, device))
            if on_timed is not None and not measured["timing_cached"]:
                on_timed(dict(measured))
            reason = _over_step_time(measured["step_time_ratio"], plan)
    except Exception as error:  # a failing candidate must never end the campaign; the machinery's fault may
        return EvalResult(status=failed_status(error), failure_reason=f"while timing: {failure_reason(error)}",
                          **measured)
    if reason is not None:
        return EvalResult(status=STATUS_PRUNED, failure_reason=reason, **measured)
    timing = {key: value for key, value in measured.items() if key != "parameters"}
    rungs = None
    if plan.rungs and on_rung is not None:
        rungs = Rungs(plan.rungs, lambda rung: on_rung(dataclasses.replace(rung, **timing)))
    result = trainer(spec, data, dataclasses.replace(train, measure_step_time=False), rungs=rungs)
    return dataclasses.replace(result, **timing)


def _over_params(parameters: int, plan: TrialPlan) -> str | None:
    if plan.max_params_ratio is None or plan.reference_parameters is None:
        return None
    ratio = parameters / plan.reference_parameters
    if ratio <= plan.max_params_ratio:
        return None
    return f"parameters {ratio:.3f}x the baseline's, over max_params_ratio {plan.max_params_ratio:g}"


def _over_step_time(ratio: float, plan: TrialPlan) -> str | None:
    if plan.max_step_time_ratio is None or ratio <= plan.max_step_time_ratio:
        return None
    return f"step time {ratio:.3f}x the baseline's, over max_step_time_ratio {plan.max_step_time_ratio:g}"


def _step_time(spec: ArchSpec, data: ImageData, train: TrainConfig, plan: TrialPlan, device: torch.device
               ) -> dict[str, Any]:
    """The EvalResult fields of S: the entry the campaign read from its step-time cache (the driver owns the cache
    and caches a new measurement through ``on_timed``), else timed against the reference, or (the baseline) timed
    alone, inside the device's timing lock."""
    settings = plan.timing
    common = {"timing": settings.to_dict()}
    if plan.cached is not None:
        return {**common, **plan.cached, "timing_cached": True}
    if plan.reference is not None:
        paired = relative_step_time(spec, plan.reference, settings, device=device, num_classes=data.num_classes,
                                    in_channels=data.in_channels, recipe=train)
        return {**common, **paired.measurement(), "timing_cached": False}
    with DeviceLock(device):
        alone = benchmark_spec(
            spec, device=str(device), batch_size=settings.batch_size, image_size=settings.image_size,
            in_channels=data.in_channels, num_classes=data.num_classes, amp=settings.amp,
            channels_last=settings.channels_last, compile=settings.compile, warmup=settings.warmup,
            repeats=settings.pairs, min_window_s=settings.window_s, threads=train.threads, recipe=train,
        )
    return {**common, "step_time_s": alone.step.median_s, "step_time_iqr_s": alone.step.iqr_s,
            "step_time_ratio": 1.0, "step_time_ratio_iqr": 0.0, "reference_step_time_s": alone.step.median_s,
            "timing_cached": False}
