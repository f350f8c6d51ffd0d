"""Glue between PathSeqSAM and MONAI/Ignite engines (batch preparation, handlers, writers, datalist, resume)."""

from __future__ import annotations

from pathseqsam.engine.budget import WallTimeBudget
from pathseqsam.engine.datalist_setup import InferenceInputs, inference_inputs, prepare_datalist
from pathseqsam.engine.distributed import ShardRecorder, handlers_for_rank
from pathseqsam.engine.handlers import (
    AtomicCheckpointSaver,
    NaNLossGuard,
    OverlaySaver,
    ProgressLogger,
    TrainingCurves,
    ValidationSummary,
)
from pathseqsam.engine.inferers import SequenceEnsembleInferer
from pathseqsam.engine.per_patch_saver import PerPatchSaver
from pathseqsam.engine.prepare_batch import SequencePrepareBatch
from pathseqsam.engine.random_state import RandomStates
from pathseqsam.engine.resume import latest_checkpoint, resume_from_latest
from pathseqsam.engine.writers import SaveSequencePredictiond
from pathseqsam.ranks import end_process_group

__all__ = [
    "AtomicCheckpointSaver",
    "InferenceInputs",
    "NaNLossGuard",
    "OverlaySaver",
    "PerPatchSaver",
    "ProgressLogger",
    "RandomStates",
    "SaveSequencePredictiond",
    "SequenceEnsembleInferer",
    "SequencePrepareBatch",
    "ShardRecorder",
    "TrainingCurves",
    "ValidationSummary",
    "WallTimeBudget",
    "end_process_group",
    "handlers_for_rank",
    "inference_inputs",
    "latest_checkpoint",
    "prepare_datalist",
    "resume_from_latest",
]
