"""The synthetic world's default trained model: what `scripts/dissect.py` dissects when it is given no model.

It is the embedded default's scratch student (configs/embedded_default/scratch.yaml, without a teacher),
trained once by the distill trainer, seeded and deterministic, and cached in the kdfast cache folder next to
the world's data and Broden, so later runs reuse it.
"""
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

EMBEDDED_DIR = Path(__file__).resolve().parents[2] / "configs" / "embedded_default"
DEFAULT_RUN = "scratch"


def default_world_config(output_dir, overrides=(), progress=False):
    """The Config of the world's default model (the embedded scratch student, no teacher) writing to output_dir."""
    from kdfast.distill.config import load_config

    path = EMBEDDED_DIR / f"{DEFAULT_RUN}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the world's default model is defined by the repository's "
                                "configs/embedded_default/ (install kdfast from a checkout, pip install -e .)")
    placed = ["teacher.spec=null", f"output_dir={output_dir}", f"log.progress={str(progress).lower()}",
              "name=world_default"]
    return load_config(path, list(overrides) + placed)


def default_world_checkpoint(cache_root=None, overrides=(), progress=True):
    """Path of the world's default model's best.pt, trained on first use (about a minute of one CPU core) in a
    folder beside its final place and renamed when finished, so an interrupted training never looks done."""
    from kdfast.data.synthetic_world import cache_root as world_cache
    from kdfast.distill.trainer import CHECKPOINT_BEST, train
    from kdfast.threads import torch_threads

    root = world_cache(cache_root)
    recipe = default_world_config("unplaced", overrides).to_dict()
    recipe.pop("output_dir")
    recipe["log"] = None
    recipe["torch_threads"] = 1  # part of the recipe: float sums split over threads round differently
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    final = root / f"world_model_{key}"
    if (final / CHECKPOINT_BEST).is_file():
        return final / CHECKPOINT_BEST
    root.mkdir(parents=True, exist_ok=True)
    building = root / f".building-world_model_{key}-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        print(f"[kdfast] training the synthetic world's default model once (cached in {final})")
        with torch_threads(1):  # the same model on every machine, whatever its core count
            train(default_world_config(building, overrides, progress))
        try:
            os.rename(building, final)
        except OSError:
            if not (final / CHECKPOINT_BEST).is_file():
                raise
    finally:
        if building.exists():
            shutil.rmtree(building)
    return final / CHECKPOINT_BEST
