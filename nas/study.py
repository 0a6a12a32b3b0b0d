"""The Optuna study of a campaign: the single source of truth of what was searched and measured.

Trial params are the space's flat decisions (``stage3.op``, ...); trial user attributes hold the spec, the
measurements (A, S, P, FLOPs), the normalized S and P, the reward, the device and any failure reason; the study's
user attributes hold the space (and its fingerprint), the campaign settings, the proxy settings, the data's classes
and input channels (which the exported specs carry: :func:`exported_spec`) and the baseline's measurements
(:mod:`nas.records` names them all). Everything is JSON, so Optuna's own CLI and optuna-dashboard read
a study unchanged.

With successive halving, a trial stopped at a rung is recorded PRUNED (:func:`record_stopped`) with that rung's
measurements and reward (:func:`training_reward`, the same formula as a finished trial's); Optuna's intermediate
values hold every rung's reward.

Resume rules: a trial left RUNNING by a dead driver is marked FAIL with ``interrupted`` set and its params are
enqueued once more; finished trials are never re-run; the budget counts finished trials (COMPLETE, and FAIL that
the candidate itself caused); a different space or proxy setting is refused with a message saying what differs.

This module, with :mod:`nas.storage`, is the only code that writes to a study or touches Optuna's private API (the
campaign asks the small ``record_*``/``enqueue_*`` functions here); it takes plain settings (:class:`StudySettings`,
:class:`RewardExponents`), never a campaign's config, since the campaign sits above it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import optuna

from nas import records
from nas.records import EvalResult
from nas.states import finished_states, is_baseline, is_interrupted
from nas.step_cache import CACHE_STUDY, StepTimeCache
from nas.storage import (
    DRIVER_LOCK_SUFFIX,
    StudyError,
    make_storage,
    mask_url,
    missing_study,
    open_storage_readonly,
    storage_errors,
    storage_problem,
)
from rewards import PARAMS_EXPONENT, STEP_TIME_EXPONENT, training_aware_reward
from search_spaces.space import SearchSpace
from search_spaces.spec import ArchSpec


@dataclass(frozen=True, kw_only=True)
class RewardExponents:
    """The exponents of ``reward = A * (S / S_ref)^step_time * (P / P_ref)^params`` (EfficientNetV2's w and v)."""

    step_time: float = STEP_TIME_EXPONENT
    params: float = PARAMS_EXPONENT


@dataclass(frozen=True, kw_only=True)
class StudySettings:
    """What the study needs to know of a campaign, as plain data (the campaign builds it:
    :meth:`nas.campaign.CampaignConfig.study_settings`).

    ``proxy`` is what a trial's numbers depend on: a resumed study must have been made with the same, except for
    the settings named in ``free`` (dotted, ``timing.pairs``): those say how precisely a trial measures, not what,
    so a resume may change them (each trial records the settings it was timed with; the study keeps its first
    run's). ``campaign`` is the whole campaign's settings, recorded as the last run's. ``exponents`` weigh S and P
    in the reward.
    """

    study: str
    storage_url: str
    proxy: Mapping[str, Any]
    campaign: Mapping[str, Any]
    exponents: RewardExponents
    free: frozenset[str] = frozenset()


optuna.logging.set_verbosity(optuna.logging.WARNING)


def open_study(
    settings: StudySettings,
    space: SearchSpace,
    sampler: optuna.samplers.BaseSampler,
    *,
    storage: optuna.storages.BaseStorage | None = None,
) -> optuna.Study:
    """Creates the campaign's study or loads it, refusing a study made with another space or proxy setting."""
    storage = storage if storage is not None else make_storage(settings.storage_url)
    try:
        study = optuna.create_study(
            storage=storage, study_name=settings.study, sampler=sampler, direction="maximize", load_if_exists=True
        )
    except Exception as error:
        raise StudyError(
            f"cannot open study {settings.study!r} in {mask_url(settings.storage_url)}: {storage_problem(error)}"
        ) from None
    attributes = study.user_attrs
    if records.SPACE_FINGERPRINT not in attributes:
        study.set_user_attr(records.FORMAT_VERSION_KEY, records.FORMAT_VERSION)
        study.set_user_attr(records.SPACE, space.to_dict())
        study.set_user_attr(records.SPACE_NAME, space.name)
        study.set_user_attr(records.SPACE_FINGERPRINT, space.fingerprint())
        study.set_user_attr(records.PROXY, dict(settings.proxy))
        study.set_user_attr(records.CAMPAIGN, dict(settings.campaign))
        return study
    differences = settings_differences(attributes, space, settings)
    if differences:
        raise StudyError(
            f"study {settings.study!r} in {mask_url(settings.storage_url)} was made with other settings; "
            f"resume it with the same ones or use another --study: {'; '.join(differences)}"
        )
    study.set_user_attr(records.CAMPAIGN, dict(settings.campaign))
    return study


def settings_differences(attributes: Mapping[str, Any], space: SearchSpace, settings: StudySettings) -> list[str]:
    """How a study's recorded space and proxy settings (its user attributes) differ from ``settings``, one line
    per field naming both values; empty when the study's trials are comparable with the settings'.

    A setting that holds a mapping in both (the ``train``, ``timing`` and ``scheduler`` blocks, and any later
    one) is compared key by key, so a line names the field that differs, ``timing.batch_size: study 32, now 64``,
    rather than printing both whole blocks. The settings in ``settings.free`` may differ, and may be missing
    from a study made before they existed.
    """

    def mapping_differences(prefix: str, stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
        """The lines for one level of settings, its keys written after ``prefix`` (``"timing."``)."""
        lines = []
        for key in sorted(set(stored) | set(current)):
            old, new = stored.get(key), current.get(key)
            if f"{prefix}{key}" in settings.free:
                continue
            if isinstance(old, Mapping) and isinstance(new, Mapping):
                lines.extend(mapping_differences(f"{prefix}{key}.", old, new))
            elif old != new:
                lines.append(f"{prefix}{key}: study {old!r}, now {new!r}")
        return lines

    differences = []
    if attributes.get(records.SPACE_FINGERPRINT) != space.fingerprint():
        differences.append(
            f"space: the study has {attributes.get(records.SPACE_NAME)!r} "
            f"({attributes.get(records.SPACE_FINGERPRINT)}), "
            f"this campaign {space.name!r} ({space.fingerprint()})"
        )
    return differences + mapping_differences("", attributes.get(records.PROXY, {}), settings.proxy)


def load_study(storage_url: str, study_name: str) -> optuna.Study:
    """An existing study, for inspection and export: opened read-only, so a mistyped name or path creates no
    file, directory or table; a missing one is a clear error listing the studies that do exist there and the
    nearest names (:func:`~nas.storage.missing_study`)."""
    storage = open_storage_readonly(storage_url, study_name)
    with storage_errors(storage_url, "read"):
        try:
            return optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            names = [
                summary.study_name for summary in optuna.get_all_study_summaries(storage)
                if not summary.study_name.endswith(DRIVER_LOCK_SUFFIX) and summary.study_name != CACHE_STUDY
            ]
    raise StudyError(missing_study(storage_url, study_name, names))


def step_time_cache(study: optuna.Study) -> StepTimeCache:
    """The step-time cache of the storage ``study`` lives in, shared by every campaign there."""
    return StepTimeCache(study._storage)  # Optuna has no public call for a study's storage


def current_trial(study: optuna.Study, trial: optuna.trial.Trial) -> optuna.trial.FrozenTrial:
    """``trial`` as the storage holds it now (another driver may have ended it), read alone, not with the whole
    study."""
    return study._storage.get_trial(trial._trial_id)  # Optuna has no public call to read one trial by id


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count toward the budget: complete ones and those that failed by themselves (not interrupted)."""
    return [trial for trial in study.get_trials(deepcopy=False, states=finished_states())
            if not is_interrupted(trial)]


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Marks trials a dead driver left RUNNING as interrupted failures; returns their numbers.

    Their re-runs are not enqueued here but asked for by the campaign when it has room (:func:`pending_reruns`),
    so a stopped campaign leaves no WAITING trial behind.
    """
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        mark_interrupted(study, trial)
        recovered.append(trial.number)
    return recovered


def mark_interrupted(study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str = "driver stopped") -> None:
    """Ends a RUNNING trial as an interrupted FAIL: not the candidate's fault, not counted, run once more."""
    storage = study._storage  # Optuna has no public call to set an attribute on another process's trial
    storage.set_trial_user_attr(trial._trial_id, records.INTERRUPTED, True)
    storage.set_trial_user_attr(trial._trial_id, records.FAILURE_REASON, f"interrupted: {reason}")
    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def pending_reruns(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Interrupted candidate trials still owed their one re-run, oldest first.

    A trial is re-run exactly once, whatever stopped it (SIGKILL, SIGTERM, Ctrl-C, a dead worker): only if it had
    been handed to a worker (its spec recorded; one the driver died while asking for may hold half its params),
    if it is not itself a re-run (so a candidate that kills its driver cannot loop forever) and if no trial is
    its re-run yet. The baseline is not among them: the campaign asks for it until it is measured.
    """
    trials = study.get_trials(deepcopy=False)
    rerun = {trial.user_attrs.get(records.REQUEUED_FROM) for trial in trials}
    return [trial for trial in trials if may_rerun(trial) and trial.number not in rerun]


def may_rerun(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether an interrupted trial may be re-run (see :func:`pending_reruns`): handed to a worker, neither a
    re-run itself nor the baseline."""
    attributes = trial.user_attrs
    return (is_interrupted(trial) and records.SPEC in attributes and records.REQUEUED_FROM not in attributes
            and not is_baseline(attributes))


def enqueue_baseline(study: optuna.Study, params: Mapping[str, Any]) -> None:
    """Puts the baseline's params (the space's ``to_params`` of its backbone) first in line, with the baseline's
    role; the caller asks for it at once."""
    study.enqueue_trial(dict(params), user_attrs={records.ROLE: records.ROLE_BASELINE})


def enqueue_rerun(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Puts ``trial``'s params first in line, marked as its re-run; the caller asks for it at once."""
    study.enqueue_trial(
        dict(trial.params),
        user_attrs={records.REQUEUED_FROM: trial.number, records.ROLE: records.ROLE_CANDIDATE},
        skip_if_exists=False,
    )


def record_recipe(study: optuna.Study, recipe: Mapping[str, Any]) -> None:
    """Records the proxy recipe as it resolved for the campaign's data (the study's ``recipe`` attribute)."""
    study.set_user_attr(records.RECIPE, dict(recipe))


def record_start(trial: optuna.trial.Trial, role: str, spec: ArchSpec, controller: str) -> None:
    """Records a trial as handed to a worker: its role, the architecture it evaluates and the controller that
    proposed it (:func:`nas.records.started_attributes`)."""
    for key, value in records.started_attributes(role, spec, controller).items():
        trial.set_user_attr(key, value)


def record_node(trial: optuna.trial.Trial, node: str) -> None:
    """Records the executor's name for where ``trial`` ran (a Ray node's id)."""
    trial.set_user_attr(records.RAY_NODE, node)


def record_rung(trial: optuna.trial.Trial, epoch: int, reward: float, rungs: list[dict[str, Any]]) -> None:
    """Records a successive-halving rung: ``reward`` as Optuna's intermediate value at ``epoch`` (any Optuna client
    sees the learning curve) and ``rungs``, every rung the trial reached so far, as its ``rungs`` attribute."""
    trial.report(reward, step=epoch)
    trial.set_user_attr(records.RUNGS, rungs)


def baseline(study: optuna.Study) -> records.Baseline | None:
    """The baseline's measurements once its trial has completed."""
    return records.study_baseline(study.user_attrs)


def record_result(
    study: optuna.Study,
    trial: optuna.trial.Trial,
    spec: ArchSpec,
    result: EvalResult,
    exponents: RewardExponents,
) -> float | None:
    """Writes a finished evaluation to its trial and tells the study; returns the reward (None when it failed or
    was pruned by a constraint).

    The baseline trial's measurements become the study's reference S and P; every reward is
    ``A * (S / S_ref)^w * (P / P_ref)^v``, so the baseline scores exactly its accuracy. S/S_ref is the trial's
    paired ratio to the baseline (``result.step_time_ratio``) when it has one, else the ratio of the medians.
    """
    for key, value in records.result_attributes(result).items():
        trial.set_user_attr(key, value)
    if result.status == records.STATUS_PRUNED:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return None
    if not result.ok:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return None
    if is_baseline(trial.user_attrs):
        measured = records.Baseline(
            trial=trial.number, step_time_s=result.step_time_s, parameters=result.parameters,
            accuracy=result.accuracy, macs=result.macs, device=result.device, block_strings=spec.block_strings,
        )
        study.set_user_attr(records.BASELINE, measured.to_dict())
    reference = baseline(study)
    if reference is None:
        raise StudyError("a candidate finished before the baseline; the baseline must complete first")
    normalized_step_time, normalized_parameters, reward = training_reward(
        result, reference_step_time_s=reference.step_time_s, reference_parameters=reference.parameters,
        exponents=exponents,
    )
    trial.set_user_attr(records.NORMALIZED_STEP_TIME, normalized_step_time)
    trial.set_user_attr(records.NORMALIZED_PARAMETERS, normalized_parameters)
    trial.set_user_attr(records.REWARD, reward)
    study.tell(trial, reward)
    return reward


def record_stopped(
    study: optuna.Study,
    trial: optuna.trial.Trial,
    result: EvalResult,
    *,
    normalized_step_time: float,
    normalized_parameters: float,
    reward: float,
) -> None:
    """Records a trial successive halving stopped at a rung, as PRUNED: ``result`` (its status ``stopped``, its
    ``epochs_completed`` the rung) with the rung's normalized S and P and reward. Optuna gives a PRUNED trial its
    last intermediate value as its value: the rung reward the caller reported."""
    for key, value in records.result_attributes(result).items():
        trial.set_user_attr(key, value)
    trial.set_user_attr(records.NORMALIZED_STEP_TIME, normalized_step_time)
    trial.set_user_attr(records.NORMALIZED_PARAMETERS, normalized_parameters)
    trial.set_user_attr(records.REWARD, reward)
    trial.set_user_attr(records.STOPPED_AT_EPOCH, result.epochs_completed)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)


def training_reward(
    result: EvalResult, *, reference_step_time_s: float, reference_parameters: int, exponents: RewardExponents
) -> tuple[float, float, float]:
    """``(S/S_ref, P/P_ref, reward)`` of an ok ``result``: the one formula of a trial's reward, at its end
    (:func:`record_result`) and at a successive-halving rung (:meth:`nas.campaign.Campaign.judge`).

    S/S_ref is the paired ratio to the baseline (``result.step_time_ratio``) when the result has one, else the
    ratio of the medians; the reward is ``A * (S / S_ref)^w * (P / P_ref)^v``.
    """
    normalized_step_time = result.step_time_ratio
    if normalized_step_time is None:
        normalized_step_time = result.step_time_s / reference_step_time_s
    reward = training_aware_reward(
        result.accuracy,
        normalized_step_time,
        result.parameters,
        step_time_ref=1.0,
        params_ref=reference_parameters,
        w=exponents.step_time,
        v=exponents.params,
    )
    return normalized_step_time, result.parameters / reference_parameters, reward


def record_export(storage_url: str, study_name: str, path: Path, best_trial: int | None) -> bool:
    """Records ``path``, made absolute, as the study's :data:`~nas.records.EXPORTED_SPEC` (the report shows where
    the winner's spec is) and returns whether ``best_trial`` is the baseline, which no candidate then beat: by the
    study's recorded baseline, else by the trial's role.

    The study is opened again, for writing, after the campaign released it. Raises :class:`StudyError` when the
    storage refuses.
    """
    with storage_errors(storage_url, "write to"):
        study = optuna.load_study(study_name=study_name, storage=make_storage(storage_url))
        study.set_user_attr(records.EXPORTED_SPEC, str(path.resolve()))
        reference = baseline(study)
        if reference is not None:
            return best_trial == reference.trial
        trial = next((trial for trial in study.get_trials(deepcopy=False) if trial.number == best_trial), None)
        return trial is not None and is_baseline(trial)


def trial_spec(trial: optuna.trial.FrozenTrial) -> ArchSpec:
    """The architecture a trial evaluated."""
    return ArchSpec.from_dict(trial.user_attrs[records.SPEC])


def record_network_io(study: optuna.Study, *, num_classes: int, in_channels: int) -> None:
    """Records the classes and input channels of the campaign's data (its networks' head and stem) as the study's
    :data:`~nas.records.NETWORK_IO`, so that the specs it exports say what they were searched for
    (:func:`exported_spec`)."""
    study.set_user_attr(records.NETWORK_IO, {"num_classes": num_classes, "in_channels": in_channels})


def exported_spec(study: optuna.Study, trial: optuna.trial.FrozenTrial, *, name: str) -> ArchSpec:
    """``trial``'s architecture as ``nas search`` and ``nas export`` write it: named ``name``, with the classes
    (and the input channels, unless RGB's 3) of the data the study searched on
    (:meth:`~search_spaces.spec.ArchSpec.for_data`), so that ``nas show`` counts the network that was searched.
    A study made before that was recorded (:func:`record_network_io`) exports the trial's spec as it was."""
    spec = dataclasses.replace(trial_spec(trial), name=name)
    searched = study.user_attrs.get(records.NETWORK_IO)
    if searched is None:
        return spec
    return spec.for_data(num_classes=searched["num_classes"], in_channels=searched["in_channels"])


def record_holdout(study: optuna.Study, holdout_images: int) -> None:
    """Records how many hold-out images every trial's accuracy is counted on (:data:`~nas.records.HOLDOUT_IMAGES`):
    the accuracy noise the report weighs leads against."""
    study.set_user_attr(records.HOLDOUT_IMAGES, holdout_images)
