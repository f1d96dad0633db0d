"""Network dissection in two passes over Broden, several layers per forward pass.

Pass 1 streams each unit's activations into an exact top-k (k for the largest quantile, so every smaller
quantile's threshold comes from the same stream) and keeps each image's per-unit maximum (for the report's
top images). Pass 2 tallies label/mask overlaps with the fused iou_tally kernel, once per quantile on the
same activations. When this rank's activations fit in the activation cache, pass 1 keeps them in memory and
pass 2 does not run the model again. Both passes checkpoint and resume; under torchrun, images are sharded
over ranks.
"""
import dataclasses
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kdfast import _extension
from kdfast.dissect.checkpoint import Checkpoint, Schedule
from kdfast.dissect.distributed import Distributed
from kdfast.dissect.models import LayerRecorder, Normalizer, build_model, file_digest, load_weights, split_file_spec
from kdfast.dissect.outputs import write_outputs
from kdfast.dissect.results import Concepts, LayerTally
from kdfast.ops.iou_tally import iou_tally
from kdfast.ops.topk_threshold import StreamingTopK, quantile_rank


@dataclasses.dataclass
class Dissection:
    """A finished run: per layer, one LayerTally per quantile (config order) and the (images, U) table of
    per-image maximum activations."""

    config: object
    concepts: Concepts
    images: int
    tallies: dict
    maxima: dict
    seconds: float = 0.0


def _rank0_first(dist, make):
    """make() on rank 0, then on the other ranks, which find rank 0's files instead of writing them at once."""
    if dist.main:
        made = make()
        dist.barrier()
    else:
        dist.barrier()
        made = make()
    return made


def open_broden(config, dist):
    """(BrodenDataset, PackedBroden) of --broden, or of the small synthetic Broden when none is given; the
    packed cache is built on first use."""
    from kdfast.data.broden import BrodenDataset
    from kdfast.data.synthetic_broden import default_broden

    root = config.broden if config.broden is not None else _rank0_first(dist, default_broden)
    dataset = BrodenDataset(root, categories=None if config.categories is None else list(config.categories))
    packed = _rank0_first(
        dist, lambda: dataset.pack(cache_dir=config.broden_cache, workers=config.workers,
                                   progress=config.progress and dist.main)
    )
    return dataset, packed


def pack_broden(config):
    """Only builds (or finds) the packed Broden cache: e.g. once before a torchrun job."""
    return open_broden(config, Distributed(torch.device("cpu"), join=False))[1]


def _model_identity(config):
    """The model spec plus digests of the files it comes from: a checkpoint's model must be this model."""
    file_spec = split_file_spec(config.model)
    return {
        "spec": config.model,
        "file": file_digest(file_spec[0]) if file_spec and file_spec[0].is_file() else None,
        "weights": file_digest(config.weights) if config.weights and Path(config.weights).is_file() else None,
    }


def _check_device(device):
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but CUDA is not available on this machine")
    if not _extension.cuda_built():
        raise RuntimeError("--device cuda was asked for, but kdfast._C was built without its CUDA kernels")


class Dissector:
    """The model, its hooks and the data of one rank; runs the passes over this rank's shard."""

    def __init__(self, config, dist, dataset, packed):
        self.config, self.dist, self.dataset, self.packed = config, dist, dataset, packed
        self.device = dist.device
        model = build_model(config.model)
        if config.weights is not None:
            load_weights(model, config.weights, trust=config.trust_weights)
        self.model = model.to(self.device).eval()
        self.recorder = LayerRecorder(self.model, config.layers)
        self.normalize = Normalizer(config.mean, config.std, self.device)
        self.label_category = torch.as_tensor(packed.label_category, dtype=torch.int64, device=self.device)
        self.num_categories = len(packed.categories)
        self.images = len(packed)
        self.shard = list(dist.shard(self.images))
        size = config.batch_size
        self.chunks = [self.shard[i: i + size] for i in range(0, len(self.shard), size)]
        self.shapes = None
        self.shapes = self._probe()

    def _probe(self):
        """(U, h, w) per layer, from image 0: sizes the streams identically on every rank."""
        acts = self.forward(self.packed.batch([0]))
        return {layer: tuple(a.shape[1:]) for layer, a in acts.items()}

    def forward(self, batch):
        """{layer: float32 (B, U, h, w) on the device}; non-finite activations are an error."""
        with torch.inference_mode():
            acts = self.recorder(self.normalize(batch["images"]))
        for layer, a in acts.items():
            finite = torch.isfinite(a).flatten(1).all(dim=1).cpu()
            if not bool(finite.all()):
                bad = batch["indices"][~finite].tolist()
                raise ValueError(
                    f"layer '{layer}' produced NaN or Inf activations for Broden image(s) {bad[:8]} (first: "
                    f"{self.dataset.image_path(bad[0])}); dissection needs finite activations"
                )
            if self.shapes is not None and tuple(a.shape[1:]) != self.shapes[layer]:
                raise ValueError(
                    f"layer '{layer}' output {tuple(a.shape[1:])} for images {batch['indices'].tolist()[:8]}, but "
                    f"{self.shapes[layer]} for image 0; all images must give maps of one size"
                )
        return acts

    def batches(self, start):
        """(batch number, batch) for this rank's chunks from `start` on."""
        if self.config.workers == 0:
            for b in range(start, len(self.chunks)):
                yield b, self.packed.batch(self.chunks[b])
            return
        loader = torch.utils.data.DataLoader(
            self.packed,
            batch_sampler=self.chunks[start:],
            collate_fn=self.packed.collate,
            num_workers=self.config.workers,
            pin_memory=self.device.type == "cuda",
        )
        yield from enumerate(loader, start)

    def values_per_unit(self, layer):
        _, h, w = self.shapes[layer]
        return self.images * h * w

    def new_state(self):
        k = {layer: quantile_rank(max(self.config.quantiles), self.values_per_unit(layer)) for layer in self.shapes}
        return {
            "pass1_next": 0,
            "streams": {layer: StreamingTopK(u, k[layer], self.device).state_dict()
                        for layer, (u, _, _) in self.shapes.items()},
            "maxima": {layer: torch.full((len(self.shard), u), float("nan"))
                       for layer, (u, _, _) in self.shapes.items()},
            "pass2_next": 0,
            "counts": None,
        }

    def _progress(self, desc, start):
        return tqdm(total=len(self.chunks), initial=start, desc=desc, unit="batch",
                    disable=not (self.config.progress and self.dist.main))

    def activation_bytes(self):
        """Bytes of all of this rank's activations of all dissected layers."""
        return sum(len(self.shard) * u * h * w * 4 for u, h, w in self.shapes.values())

    def thresholds_pass(self, state, checkpoint, schedule):
        """Pass 1 from state['pass1_next']: streams and per-image maxima of this rank's shard. Returns the
        streams and, when pass 1 ran from the start and the activations fit the cache, every batch's
        activations (on the CPU), else None."""
        streams = {layer: StreamingTopK.from_state_dict(s, self.device) for layer, s in state["streams"].items()}
        size, start = self.config.batch_size, state["pass1_next"]
        fits = self.activation_bytes() <= self.config.activation_cache_gb * 2**30
        cache = [] if start == 0 and fits else None
        with self._progress("pass 1/2: thresholds", start) as bar:
            for b, batch in self.batches(start):
                acts = self.forward(batch)
                if cache is not None:
                    cache.append({layer: a.cpu() for layer, a in acts.items()})
                for layer, a in acts.items():
                    streams[layer].update(a)
                    state["maxima"][layer][b * size: b * size + a.shape[0]] = a.amax(dim=(2, 3)).cpu()
                state["pass1_next"] = b + 1
                bar.update()
                if schedule.due():
                    checkpoint.save(self._saved(state, streams))
        state["streams"] = {layer: s.state_dict() for layer, s in streams.items()}
        if state["pass1_next"] != start:
            checkpoint.save(state)
        return streams, cache

    def thresholds(self, streams):
        """{layer: [(U,) thresholds per quantile]} over all ranks' images."""
        out = {}
        for layer, stream in streams.items():
            merged = self.dist.merge_topk(stream)
            m = self.values_per_unit(layer)
            out[layer] = [merged.threshold(quantile_rank(q, m)).to(self.device) for q in self.config.quantiles]
        return out

    def tally_pass(self, state, thresholds, cache, checkpoint, schedule):
        """Pass 2 from state['pass2_next']: counts summed over this rank's shard, on the cached activations
        of pass 1 when there are any."""
        if state["counts"] is None:
            num_labels = self.label_category.shape[0]
            state["counts"] = {
                layer: [[torch.zeros(num_labels, dtype=torch.int64), torch.zeros(u, num_labels, dtype=torch.int64),
                         torch.zeros(u, self.num_categories, dtype=torch.int64)] for _ in self.config.quantiles]
                for layer, (u, _, _) in self.shapes.items()
            }
        counts = {layer: [[t.to(self.device) for t in per_q] for per_q in c] for layer, c in state["counts"].items()}
        gated, start = self.config.denominator == "lite", state["pass2_next"]
        with self._progress("pass 2/2: tally", start) as bar:
            for b, batch in self.batches(start):
                if cache is not None:
                    acts, cache[b] = {layer: a.to(self.device) for layer, a in cache[b].items()}, None
                else:
                    acts = self.forward(batch)
                seg = batch["seg"].to(self.device, non_blocking=True)
                image_labels = batch["image_labels"].to(self.device, non_blocking=True)
                for layer, a in acts.items():
                    for sums, threshold in zip(counts[layer], thresholds[layer]):
                        found = iou_tally(a, threshold, seg, image_labels, self.label_category,
                                          self.num_categories, category_gated=gated)
                        for total, part in zip(sums, found):
                            total += part
                state["pass2_next"] = b + 1
                bar.update()
                if schedule.due():
                    checkpoint.save(self._saved(state, counts=counts))
        state["counts"] = self._cpu(counts)
        if state["pass2_next"] != start:
            checkpoint.save(state)
        return counts

    @staticmethod
    def _cpu(counts):
        return {layer: [[t.cpu() for t in per_q] for per_q in c] for layer, c in counts.items()}

    def _saved(self, state, streams=None, counts=None):
        """The state with live streams/counts folded in (pass progress already recorded)."""
        saved = dict(state)
        if streams is not None:
            saved["streams"] = {layer: s.state_dict() for layer, s in streams.items()}
        if counts is not None:
            saved["counts"] = self._cpu(counts)
        return saved

    def unit_maps(self, wanted):
        """{layer: {unit: (n, h, w) maps of the images in wanted[layer][unit]}} (for the report)."""
        users = {}  # (layer, image) → units that show the image
        for layer, per_unit in wanted.items():
            for unit, ids in per_unit.items():
                for i in ids:
                    users.setdefault((layer, i), []).append(unit)
        images = sorted({i for _, i in users})
        kept = {}
        for start in range(0, len(images), self.config.batch_size):
            ids = images[start: start + self.config.batch_size]
            acts = self.forward(self.packed.batch(ids))
            for layer, a in acts.items():
                for b, i in enumerate(ids):
                    for unit in users.get((layer, i), ()):
                        kept[layer, unit, i] = a[b, unit].cpu()
        return {layer: {unit: torch.stack([kept[layer, unit, i] for i in ids]) for unit, ids in per_unit.items()}
                for layer, per_unit in wanted.items()}

    def close(self):
        self.recorder.close()


def run_passes(config, dist, dataset, packed, dissector):
    """Both passes (resuming from this rank's checkpoint) → Dissection, identical on every rank."""
    identity = config.state_identity(_model_identity(config), dataset.fingerprint(), dissector.images, dist.world)
    checkpoint = Checkpoint(config.out, dist.rank, identity)
    if config.restart:
        checkpoint.remove()
    state = checkpoint.load() or dissector.new_state()
    schedule = Schedule(config.checkpoint_every, config.checkpoint_seconds)
    streams, cache = dissector.thresholds_pass(state, checkpoint, schedule)
    thresholds = dissector.thresholds(streams)
    maxima = {layer: dist.assemble_rows(m, dissector.images) for layer, m in state["maxima"].items()}
    counts = dissector.tally_pass(state, thresholds, cache, checkpoint, schedule)
    concepts = Concepts(
        categories=tuple(packed.categories),
        label_names=tuple(packed.label_names),
        label_category=dissector.label_category.cpu().numpy(),
    )
    tallies = {}
    for layer in config.layers:
        tallies[layer] = []
        for q, threshold, sums in zip(config.quantiles, thresholds[layer], counts[layer]):
            label_counts, intersections, activations = (dist.sum_(t).cpu().numpy() for t in sums)
            tallies[layer].append(LayerTally(
                layer=layer, quantile=q, denominator=config.denominator, thresholds=threshold.cpu().numpy(),
                label_counts=label_counts, intersections=intersections, activations=activations, concepts=concepts,
            ))
    return Dissection(config=config, concepts=concepts, images=dissector.images, tallies=tallies, maxima=maxima)


def dissect(config):
    """Runs a dissection and (on rank 0) writes its outputs under config.out; returns the Dissection."""
    device = Distributed.local_device(config.device)
    _check_device(device)
    started = time.monotonic()
    dist = Distributed(device)
    try:
        dataset, packed = open_broden(config, dist)
        dissector = Dissector(config, dist, dataset, packed)
        try:
            result = run_passes(config, dist, dataset, packed, dissector)
            if dist.main:
                write_outputs(result, dissector, packed)
        finally:
            dissector.close()
        dist.barrier()
    finally:
        dist.close()
    result.seconds = time.monotonic() - started
    return result
