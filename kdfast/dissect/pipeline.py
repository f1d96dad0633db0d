"""Network dissection in two passes over Broden, several layers per forward pass.

Pass 1 streams each unit's activations into an exact top-k (k for the largest quantile, so every smaller
quantile's threshold comes from the same stream), keeps each image's per-unit maximum and, per unit, its maps
on its top images (the report draws them: no second forward pass). Pass 2 tallies label/mask overlaps with the
fused iou_tally kernel, once per quantile on the same activations. When this rank's activations fit in the
activation cache, pass 1 keeps them on the model's device and pass 2 runs no model and loads no images. Both
passes checkpoint and resume; under torchrun, images are sharded over ranks.

The batch loops never wait on the host: batches arrive through a DeviceFeeder (pinned memory, side stream on a
GPU), non-finite activations are recorded in per-image device flags that are read only when a checkpoint is
written and at the end of a pass, and per-image maxima and top images stay on the device.
"""
import dataclasses
import functools
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kdfast import _extension
from kdfast.dissect.checkpoint import Checkpoint, Schedule
from kdfast.dissect.distributed import Distributed
from kdfast.distributed import rank0_first
from kdfast.dissect.feeder import DeviceFeeder
from kdfast.dissect.models import LayerRecorder, Normalizer, build_model, file_digest, fold_batchnorm, split_file_spec
from kdfast.models.registry import load_checkpoint_model
from kdfast.dissect.outputs import write_outputs
from kdfast.dissect.results import Concepts, LayerTally
from kdfast.dissect.top_images import TopImages
from kdfast.ops.iou_tally import iou_tally
from kdfast.ops.topk_threshold import StreamingTopK, quantile_rank


@dataclasses.dataclass
class Dissection:
    """A finished run: per layer, one LayerTally per quantile (config order), the (images, U) table of
    per-image maximum activations and the units' TopImages (top images and their maps, for the report)."""

    config: object
    concepts: Concepts
    images: int
    tallies: dict
    maxima: dict
    top_images: dict = None
    seconds: float = 0.0


def open_broden(config, dist):
    """(BrodenDataset, PackedBroden) of --broden, or of the synthetic world's Broden when none is given; the
    packed cache is built on first use."""
    from kdfast.data.broden import BrodenDataset
    from kdfast.data.synthetic_world import world_broden

    root = config.broden if config.broden is not None else rank0_first(dist, world_broden)
    dataset = BrodenDataset(root, categories=None if config.categories is None else list(config.categories))
    packed = rank0_first(
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


def load_model(config):
    """The model to dissect, in eval mode: a trainer checkpoint rebuilds its own model (kwargs, classes); a model
    built without weights is seeded with config.seed."""
    if config.weights is not None:
        model, _ = load_checkpoint_model(config.weights, config.model, trust=config.trust_weights)
    else:
        model = build_model(config.model, seed=config.seed)
    return model.eval()


def check_layers(model, config, device):
    """Raises the LayerRecorder's error for a layer dissection cannot use (unknown, shared, not a float
    (B, U, h, w) map, 1x1 maps) from one blank image of the Broden's size, before any Broden is packed."""
    from kdfast.data.broden import first_image_size
    from kdfast.data.synthetic_world import DEFAULT_SIZE

    size = first_image_size(config.broden) if config.broden is not None else (DEFAULT_SIZE, DEFAULT_SIZE)
    if size is None:
        return  # the Broden reader names the defect; image 0 is probed after packing
    recorder = LayerRecorder(model.to(device), config.layers)
    try:
        with torch.inference_mode():
            recorder(torch.zeros(1, 3, *size, device=device))
    finally:
        recorder.close()


class Dissector:
    """The model, its hooks and the data of one rank; runs the passes over this rank's shard."""

    def __init__(self, config, dist, dataset, packed, model):
        self.config, self.dist, self.dataset, self.packed = config, dist, dataset, packed
        self.device = dist.device
        self.model = model.to(self.device).eval()  # folded already with --fold-batchnorm (dissect())
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.autocast = None if config.autocast is None else getattr(torch, config.autocast)
        self.storage = getattr(torch, config.activation_dtype)
        self.feeder = DeviceFeeder(self.device)
        self.recorder = LayerRecorder(self.model, config.layers)
        self.normalize = Normalizer(config.mean, config.std, self.device)
        self.label_category = torch.as_tensor(packed.label_category, dtype=torch.int64, device=self.device)
        self.num_categories = len(packed.categories)
        # No host read per tally call: label ranges were checked when the cache was packed (older caches: checked
        # per call, as before) and non-finite maps are the device flags' job (read at checkpoints and the end).
        self.tally = functools.partial(iou_tally, labels_validated=packed.labels_validated, check_finite=False)
        self.images = len(packed)
        self.shard = list(dist.shard(self.images))
        size = config.batch_size
        self.chunks = [self.shard[i: i + size] for i in range(0, len(self.shard), size)]
        self.shapes = None
        self.shapes = self._probe()

    def _probe(self):
        """(U, h, w) per layer, from image 0: sizes the streams identically on every rank."""
        acts = self.forward(self.packed.batch([0], labels=False)["images"])
        return {layer: tuple(a.shape[1:]) for layer, a in acts.items()}

    def forward(self, images):
        """{layer: float32 (B, U, h, w) on the device, rounded to the activation storage dtype} for uint8
        images. Finiteness is not checked here (see _nonfinite_flags): that would wait on the device."""
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast,
                                                    enabled=self.autocast is not None):
            inputs = self.normalize(images)
            if self.config.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            acts = self.recorder(inputs)
        out = {}
        for layer, a in acts.items():
            if self.shapes is not None and tuple(a.shape[1:]) != self.shapes[layer]:
                raise ValueError(
                    f"layer '{layer}' output {tuple(a.shape[1:])} for a batch of {a.shape[0]} image(s), but "
                    f"{self.shapes[layer]} for image 0; all images must give maps of one size"
                )
            a = a.contiguous()  # NCHW for the kernels (a copy only after a channels_last forward)
            out[layer] = a if self.storage == torch.float32 else a.to(self.storage).float()
        return out

    def batches(self, start, images=True, labels=True):
        """(batch number, batch on the device) for this rank's chunks from `start` on; images / labels (label
        planes and image-level labels) only when asked for."""
        if self.config.workers == 0:
            host = ((b, self.packed.batch(self.chunks[b], images=images, labels=labels))
                    for b in range(start, len(self.chunks)))
        else:
            host = enumerate(torch.utils.data.DataLoader(
                self.packed,
                batch_sampler=self.chunks[start:],
                collate_fn=self.packed.collate,
                num_workers=self.config.workers,
            ), start)
        return self.feeder(host)

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
            "top": {layer: TopImages(u, self.config.top_images, (h, w)).state_dict()
                    for layer, (u, h, w) in self.shapes.items()},
            "pass2_next": 0,
            "counts": None,
        }

    def check_state(self, state, path):
        """A loaded checkpoint must hold the top images the report will show."""
        top = state.get("top")
        kept = None if top is None else min(t["indices"].shape[1] for t in top.values())
        if kept is None or kept < self.config.top_images:
            raise ValueError(
                f"checkpoint {path} keeps {kept or 'no'} top image(s) per unit, but --top-images is "
                f"{self.config.top_images}: use --top-images {kept or 1} or less, or --restart"
            )

    def _progress(self, desc, start):
        return tqdm(total=len(self.chunks), initial=start, desc=desc, unit="batch",
                    disable=not (self.config.progress and self.dist.main))

    def activation_bytes(self):
        """Bytes of all of this rank's activations of all dissected layers, in the storage dtype."""
        size = self.storage.itemsize
        return sum(len(self.shard) * u * h * w * size for u, h, w in self.shapes.values())

    def _nonfinite_flags(self):
        """{layer: (shard,) bool on the device}: does the image's map hold a NaN or Inf?"""
        return {layer: torch.zeros(len(self.shard), dtype=torch.bool, device=self.device) for layer in self.shapes}

    def _check_finite(self, flags):
        """Reads the flags (one wait on the device): non-finite activations are an error naming the images."""
        for layer, bad in flags.items():
            if bool(bad.any()):
                images = [self.shard[r] for r in bad.nonzero().flatten().tolist()]
                raise ValueError(
                    f"layer '{layer}' produced NaN or Inf activations for Broden image(s) {images[:8]} (first: "
                    f"{self.dataset.image_path(images[0])}); dissection needs finite activations"
                )

    def _run_op(self, flags, op, *args):
        """op(*args); when an op refuses its input, the flags name the images that caused it."""
        try:
            return op(*args)
        except ValueError:
            self._check_finite(flags)
            raise

    def thresholds_pass(self, state, checkpoint, schedule):
        """Pass 1 from state['pass1_next']: top-k streams, per-image maxima and top images of this rank's shard.
        Returns the streams, the TopImages and, when pass 1 ran from the start and the activations fit the
        cache, every batch's activations (on the device, in the storage dtype), else None."""
        streams = {layer: StreamingTopK.from_state_dict(s, self.device) for layer, s in state["streams"].items()}
        tops = {layer: TopImages.from_state_dict(t, self.device) for layer, t in state["top"].items()}
        maxima = {layer: m.to(self.device) for layer, m in state["maxima"].items()}
        flags = self._nonfinite_flags()
        size, start = self.config.batch_size, state["pass1_next"]
        fits = self.activation_bytes() <= self.config.activation_cache_gb * 2**30
        cache = [] if start == 0 and fits else None

        def saved():
            self._check_finite(flags)  # never checkpoint a state that holds non-finite values
            state["streams"] = {layer: s.state_dict() for layer, s in streams.items()}
            state["top"] = {layer: t.state_dict() for layer, t in tops.items()}
            state["maxima"] = {layer: m.cpu() for layer, m in maxima.items()}
            return state

        with self._progress("pass 1/2: thresholds", start) as bar:
            for b, batch in self.batches(start, labels=False):
                acts = self.forward(batch["images"])
                rows = slice(b * size, b * size + len(batch["indices"]))
                for layer, a in acts.items():
                    flags[layer][rows] = ~torch.isfinite(a).flatten(1).all(dim=1)
                    peaks = a.amax(dim=(2, 3))
                    maxima[layer][rows] = peaks
                    self._run_op(flags, streams[layer].update, a)
                    tops[layer].update(a, peaks, batch["indices"])
                if cache is not None:
                    cache.append({layer: a.to(self.storage) for layer, a in acts.items()})
                state["pass1_next"] = b + 1
                bar.update()
                if schedule.due():
                    checkpoint.save(saved())
        saved()
        if state["pass1_next"] != start:
            checkpoint.save(state)
        return streams, tops, cache

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
        of pass 1 when there are any (then no image is loaded and the model does not run)."""
        if state["counts"] is None:
            num_labels = self.label_category.shape[0]
            state["counts"] = {
                layer: [[torch.zeros(num_labels, dtype=torch.int64), torch.zeros(u, num_labels, dtype=torch.int64),
                         torch.zeros(u, self.num_categories, dtype=torch.int64)] for _ in self.config.quantiles]
                for layer, (u, _, _) in self.shapes.items()
            }
        counts = {layer: [[t.to(self.device) for t in per_q] for per_q in c] for layer, c in state["counts"].items()}
        flags = self._nonfinite_flags()
        gated, size, start = self.config.denominator == "lite", self.config.batch_size, state["pass2_next"]

        def saved():
            self._check_finite(flags)
            state["counts"] = self._cpu(counts)
            return state

        with self._progress("pass 2/2: tally", start) as bar:
            for b, batch in self.batches(start, images=cache is None):
                if cache is not None:
                    acts, cache[b] = {layer: a.float() for layer, a in cache[b].items()}, None
                else:
                    acts = self.forward(batch["images"])
                    rows = slice(b * size, b * size + len(batch["indices"]))
                    for layer, a in acts.items():
                        flags[layer][rows] = ~torch.isfinite(a).flatten(1).all(dim=1)
                for layer, a in acts.items():
                    for sums, threshold in zip(counts[layer], thresholds[layer]):
                        found = self._run_op(flags, self.tally, a, threshold, batch["seg"], batch["image_labels"],
                                             self.label_category, self.num_categories, gated)
                        for total, part in zip(sums, found):
                            total += part
                state["pass2_next"] = b + 1
                bar.update()
                if schedule.due():
                    checkpoint.save(saved())
        saved()
        if state["pass2_next"] != start:
            checkpoint.save(state)
        return counts

    @staticmethod
    def _cpu(counts):
        return {layer: [[t.cpu() for t in per_q] for per_q in c] for layer, c in counts.items()}

    def close(self):
        self.recorder.close()


def run_passes(config, dist, dataset, packed, dissector):
    """Both passes (resuming from this rank's checkpoint) → Dissection, identical on every rank."""
    identity = config.state_identity(_model_identity(config), dataset.fingerprint(), dissector.images, dist.world)
    checkpoint = Checkpoint(config.out, dist.rank, identity)
    if config.restart:
        checkpoint.remove()
    state = checkpoint.load()
    if state is None:
        state = dissector.new_state()
    else:
        dissector.check_state(state, checkpoint.path)
    schedule = Schedule(config.checkpoint_every, config.checkpoint_seconds)
    streams, tops, cache = dissector.thresholds_pass(state, checkpoint, schedule)
    thresholds = dissector.thresholds(streams)
    maxima = {layer: dist.assemble_rows(m, dissector.images) for layer, m in state["maxima"].items()}
    tops = {layer: dist.merge_top_images(top) for layer, top in tops.items()}
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
    return Dissection(config=config, concepts=concepts, images=dissector.images, tallies=tallies, maxima=maxima,
                      top_images=tops)


def dissect(config):
    """Runs a dissection and (on rank 0) writes its outputs under config.out; returns the Dissection."""
    device = Distributed.local_device(config.device)
    _check_device(device)
    started = time.monotonic()
    dist = Distributed(device)
    try:
        model = load_model(config)
        if config.fold_batchnorm:  # before any data is packed: a model torch.fx cannot trace fails here
            fold_batchnorm(model, keep=config.layers)
        check_layers(model, config, device)  # arguments, model and layers fail before any data is packed
        dataset, packed = open_broden(config, dist)
        dissector = Dissector(config, dist, dataset, packed, model)
        try:
            result = run_passes(config, dist, dataset, packed, dissector)
            if dist.main:
                write_outputs(result, packed)
        finally:
            dissector.close()
        dist.barrier()
    finally:
        dist.close()
    result.seconds = time.monotonic() - started
    return result
