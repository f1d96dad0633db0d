"""The e2KD settings' measures as kdfast.study measures; a study loads them with `plugins:
[kdfast.evaluate.e2kd_study]` and asks for them under `measures:`:

    measures:
      waterbirds_groups: {split: test}     # acc / agreement per group, worst group, in / out of distribution
      voc_localisation: {split: test}      # F1, EPG, IoU (threshold 0.05) against the boxes

Both evaluate the run's checkpoint on its own training config's data (data.type waterbirds / voc; see
kdfast.evaluate.e2kd_settings). The agreement uses the run's teacher.weights, else the study's teacher run.
"""
from kdfast.evaluate.e2kd_settings import evaluate_run
from kdfast.metrics.multilabel import E2KD_IOU_THRESHOLD
from kdfast.study.measures import register_measure


def _rows(result, keys=None):
    return [{"metric": key, "value": value} for key, value in result.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and (keys is None or key in keys)]


@register_measure("waterbirds_groups", defaults={"split": "test"})
def waterbirds_groups(ctx, options):
    teacher = getattr(ctx.teacher_run, "checkpoint", None)
    return _rows(evaluate_run(ctx.run.checkpoint, options["split"], teacher=str(teacher) if teacher else None))


@register_measure("voc_localisation", defaults={"split": "test", "iou_threshold": E2KD_IOU_THRESHOLD,
                                                "classes": "ground_truth"})
def voc_localisation(ctx, options):
    result = evaluate_run(ctx.run.checkpoint, options["split"], iou_threshold=options["iou_threshold"],
                          classes=options["classes"])
    return _rows(result, ("f1", "epg", "iou", "explained"))
