"""The method in pure PyTorch: filtering, losses, block stages, branch-out, finetune, metrics. No Ray."""

from ray_amalgam.amalgamation.baseline import kd_baseline
from ray_amalgam.amalgamation.branch_out import auto_branch_points, manual_branch_points
from ray_amalgam.amalgamation.engine import (
    FINETUNE,
    Amalgamator,
    StageNet,
    entangled_blocks,
)
from ray_amalgam.amalgamation.export import (
    EXPORT_FORMATS,
    Exported,
    export_student,
    latency_ms,
    load_exported,
    parity,
    verdict,
    write_export,
)
from ray_amalgam.amalgamation.filtering import rank_hint_channels
from ray_amalgam.amalgamation.losses import (
    distillation_loss,
    hint_loss,
    least_ambiguous,
    prediction_entropy,
    ranking_loss,
)
from ray_amalgam.amalgamation.metrics import (
    average_precision,
    count_flops,
    count_params,
    cpu_latency_ms,
    fidelity_matches,
    matches,
    mean_average_precision,
)
from ray_amalgam.amalgamation.plan import (
    AmalgamationPlan,
    hint_key,
    logits_key,
    make_plan,
)
from ray_amalgam.amalgamation.pool import (
    PoolSelection,
    describe_checkpoint,
    resolve_pool_job,
    select_teachers,
    synthesize_pool,
)
from ray_amalgam.amalgamation.runner import (
    StoredTargets,
    amalgamate_local,
    compute_targets,
    evaluate,
    stage_metrics,
    teacher_labelled_views,
)
from ray_amalgam.amalgamation.schedule import concrete_schedule, stage_lr_scheduler, steps_per_epoch
from ray_amalgam.amalgamation.student import STUDENT_META, load_student, predict, save_student
from ray_amalgam.amalgamation.targets import TeacherRunner, teacher_outputs
from ray_amalgam.amalgamation.validation import (
    load_pool,
    load_teacher_model,
    load_teachers,
    validate_job,
    with_absolute_paths,
    write_job_record,
)

__all__ = [
    "EXPORT_FORMATS",
    "FINETUNE",
    "STUDENT_META",
    "AmalgamationPlan",
    "Amalgamator",
    "Exported",
    "PoolSelection",
    "StageNet",
    "StoredTargets",
    "TeacherRunner",
    "amalgamate_local",
    "auto_branch_points",
    "average_precision",
    "compute_targets",
    "concrete_schedule",
    "count_flops",
    "count_params",
    "cpu_latency_ms",
    "describe_checkpoint",
    "distillation_loss",
    "entangled_blocks",
    "evaluate",
    "export_student",
    "fidelity_matches",
    "hint_key",
    "hint_loss",
    "kd_baseline",
    "latency_ms",
    "least_ambiguous",
    "load_exported",
    "load_pool",
    "load_student",
    "load_teacher_model",
    "load_teachers",
    "logits_key",
    "make_plan",
    "manual_branch_points",
    "matches",
    "mean_average_precision",
    "parity",
    "predict",
    "prediction_entropy",
    "rank_hint_channels",
    "ranking_loss",
    "resolve_pool_job",
    "save_student",
    "select_teachers",
    "stage_lr_scheduler",
    "stage_metrics",
    "steps_per_epoch",
    "synthesize_pool",
    "teacher_labelled_views",
    "teacher_outputs",
    "validate_job",
    "verdict",
    "with_absolute_paths",
    "write_export",
    "write_job_record",
]
