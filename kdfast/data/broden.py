"""Broden (`broden1_224` layout) reader, and its one-time conversion into a memory-mapped packed cache.

`BrodenDataset` checks every CSV up front (headers, field counts, integers, label numbers, category names,
image/segmentation sizes) and every image/PNG as it is decoded; any defect raises `BrodenFormatError` naming the
file, and for CSVs the line (the header is line 1) and column. Nothing is resized, clamped or skipped.

`BrodenDataset.pack()` decodes every file once into flat arrays (`PackedBroden`), so dissection never decodes a PNG
again. Packing streams through a worker pool, writes the memmaps in place and commits a per-image "done" flag after
the data is flushed, so an interrupted pack resumes where it stopped.
"""

import collections
import csv
import hashlib
import json
import operator
import re
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from kdfast.atomic import write_text

INDEX_META_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
CATEGORY_HEADER = ("name", "first", "last", "count", "frequency")
LABEL_HEADER = ("number", "name", "category", "frequency", "coverage", "syns")
CATEGORY_LABEL_HEADER = ("code", "number", "name", "frequency", "coverage")

PACK_FORMAT = 1  # bump when the packed layout changes; older caches are then rebuilt
COMMIT_EVERY = 512  # images written between flushes of the memmaps and the done flags
POOL_CHUNK = 8  # images per task sent to a pack worker

_NON_NEGATIVE_INT = re.compile(r"\d+")
_CATEGORY_COUNT = re.compile(r"([^();]+)\((\d+)\)")


class BrodenFormatError(ValueError):
    """A Broden file or packed cache is missing, malformed or inconsistent with the rest of the dataset."""


def first_image_size(root):
    """(ih, iw) that `root`/index.csv gives its first image, read without checking the dataset (e.g. to size a
    probe before packing); None when the index is missing or says nothing usable: the reader names the defect."""
    index = Path(root) / "index.csv"
    if not index.is_file():
        return None
    with open(index, newline="") as f:
        row = next(csv.DictReader(f), None)
    try:
        return int(row["ih"]), int(row["iw"])
    except (TypeError, KeyError, ValueError):
        return None


def _where(path, line=None, column=None):
    text = str(path)
    if line is not None:
        text += f" line {line}"
    if column is not None:
        text += f", column '{column}'"
    return text


def _parse_int(text, path, line, column):
    if not _NON_NEGATIVE_INT.fullmatch(text):
        raise BrodenFormatError(f"{_where(path, line, column)}: expected a non-negative integer, got {text!r}")
    return int(text)


def _parse_float(text, path, line, column):
    try:
        return float(text)
    except ValueError:
        raise BrodenFormatError(f"{_where(path, line, column)}: expected a number, got {text!r}") from None


def _read_csv(path, header=None):
    """(header, [(line, fields), ...]) of a CSV file. `header`, when given, must match exactly; every row must
    have as many fields as the header. Blank lines carry no data and are passed over."""
    if not path.is_file():
        raise BrodenFormatError(f"missing Broden file {path}")
    rows = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            found = next(reader, None)
            if found is None:
                raise BrodenFormatError(f"{path} is empty; expected a header line")
            if header is not None and tuple(found) != header:
                raise BrodenFormatError(
                    f"{_where(path, 1)}: expected header {','.join(header)!r}, got {','.join(found)!r}"
                )
            for fields in reader:
                if not fields:
                    continue
                if len(fields) != len(found):
                    raise BrodenFormatError(
                        f"{_where(path, reader.line_num)}: expected {len(found)} fields ({','.join(found)}), "
                        f"got {len(fields)}"
                    )
                rows.append((reader.line_num, fields))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise BrodenFormatError(f"{path} is not a readable UTF-8 CSV file: {exc}") from None
    return found, rows


def _read_categories(root):
    """Category names in category.csv order (all numeric columns checked)."""
    path = root / "category.csv"
    _, rows = _read_csv(path, CATEGORY_HEADER)
    names = []
    for line, fields in rows:
        name = fields[0]
        if not name:
            raise BrodenFormatError(f"{_where(path, line, 'name')}: empty category name")
        if name in names:
            raise BrodenFormatError(f"{_where(path, line, 'name')}: category {name!r} is listed twice")
        for column, text in zip(CATEGORY_HEADER[1:], fields[1:], strict=True):
            _parse_int(text, path, line, column)
        names.append(name)
    if not names:
        raise BrodenFormatError(f"{path} lists no categories")
    return names


def _read_labels(root, all_categories):
    """(label_names, per-label {category: count}) indexed by label number; numbers must run 1..L-1 in order
    (an optional leading row 0 is the unlabeled entry and only reserves number 0)."""
    path = root / "label.csv"
    _, rows = _read_csv(path, LABEL_HEADER)
    names = ["-"]
    counts = [{}]
    seen_unlabeled_row = False
    for line, fields in rows:
        number = _parse_int(fields[0], path, line, "number")
        if number == 0 and len(names) == 1 and not seen_unlabeled_row:
            seen_unlabeled_row = True
            continue
        if number != len(names):
            raise BrodenFormatError(
                f"{_where(path, line, 'number')}: expected label number {len(names)} (numbers must run 1, 2, ... "
                f"without gaps or repeats), got {number}"
            )
        category_counts = {}
        for entry in filter(None, fields[2].split(";")):
            match = _CATEGORY_COUNT.fullmatch(entry)
            if match is None:
                raise BrodenFormatError(
                    f"{_where(path, line, 'category')}: expected entries like 'object(12)' joined by ';', got {entry!r}"
                )
            category, count = match.group(1), int(match.group(2))
            if category not in all_categories:
                raise BrodenFormatError(
                    f"{_where(path, line, 'category')}: category {category!r} is not in category.csv "
                    f"({', '.join(all_categories)})"
                )
            category_counts[category] = count
        _parse_int(fields[3], path, line, "frequency")
        _parse_float(fields[4], path, line, "coverage")
        names.append(fields[1])
        counts.append(category_counts)
    if len(names) == 1:
        raise BrodenFormatError(f"{path} lists no labels")
    return names, counts


def _check_category_labels(root, category, num_labels):
    """c_<category>.csv must exist, be well formed and refer only to label numbers of label.csv."""
    path = root / f"c_{category}.csv"
    _, rows = _read_csv(path, CATEGORY_LABEL_HEADER)
    for line, fields in rows:
        _parse_int(fields[0], path, line, "code")
        number = _parse_int(fields[1], path, line, "number")
        if not 0 < number < num_labels:
            raise BrodenFormatError(
                f"{_where(path, line, 'number')}: label {number} is not in label.csv (labels are 1..{num_labels - 1})"
            )
        _parse_int(fields[3], path, line, "frequency")
        _parse_float(fields[4], path, line, "coverage")


def _primary_categories(label_counts, categories):
    """Per label: index into `categories` of its selected category with the highest count in label.csv's
    category field (ties: the earlier category), or -1 when none of its categories is selected."""
    primary = np.full(len(label_counts), -1, dtype=np.int64)
    for number, counts in enumerate(label_counts):
        best = None
        for index, category in enumerate(categories):
            if category in counts and (best is None or counts[category] > best[0]):
                best = (counts[category], index)
        if best is not None:
            primary[number] = best[1]
    return primary


def _split_cell(text):
    return [entry for entry in text.split(";") if entry]


def _cell_kind(entry):
    if _NON_NEGATIVE_INT.fullmatch(entry):
        return "image-level"
    if entry.lower().endswith(".png"):
        return "pixel"
    return None


class BrodenDataset:
    """Reads a Broden directory; validates everything up front (CSV structure) and each file as it is decoded."""

    def __init__(self, root, categories=None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise BrodenFormatError(f"Broden directory {self.root} does not exist")
        all_categories = _read_categories(self.root)
        self.categories = self._select(all_categories, categories)
        self.label_names, label_counts = _read_labels(self.root, all_categories)
        for category in self.categories:
            _check_category_labels(self.root, category, len(self.label_names))
        self.label_category = _primary_categories(label_counts, self.categories)
        self._read_index(all_categories)

    @staticmethod
    def _select(all_categories, categories):
        if categories is None:
            return list(all_categories)
        if isinstance(categories, str):
            raise TypeError(f"categories must be a list of category names, got the string {categories!r}")
        wanted = list(categories)
        if not wanted:
            raise ValueError("categories is empty; name at least one category or pass None for all")
        unknown = [c for c in wanted if c not in all_categories]
        if unknown:
            raise ValueError(f"categories {unknown} are not in category.csv ({', '.join(all_categories)})")
        if len(set(wanted)) != len(wanted):
            raise ValueError(f"categories lists a name twice: {wanted}")
        return [c for c in all_categories if c in wanted]

    def _read_index(self, all_categories):
        path = self.root / "index.csv"
        header, rows = _read_csv(path)
        if tuple(header[: len(INDEX_META_COLUMNS)]) != INDEX_META_COLUMNS:
            raise BrodenFormatError(
                f"{_where(path, 1)}: expected the header to start with {','.join(INDEX_META_COLUMNS)!r}, "
                f"got {','.join(header)!r}"
            )
        index_categories = header[len(INDEX_META_COLUMNS) :]
        for category in index_categories:
            if category not in all_categories:
                raise BrodenFormatError(
                    f"{_where(path, 1, category)}: category {category!r} is not in category.csv "
                    f"({', '.join(all_categories)})"
                )
        missing = [c for c in all_categories if c not in index_categories]
        if missing or len(set(index_categories)) != len(index_categories):
            raise BrodenFormatError(
                f"{_where(path, 1)}: expected one column per category of category.csv ({', '.join(all_categories)}), "
                f"got {', '.join(index_categories)}"
            )
        if not rows:
            raise BrodenFormatError(f"{path} lists no images")
        column = {name: k for k, name in enumerate(header)}

        first = None  # (line, (ih, iw, sh, sw)) of the first row: every row must agree with it
        for line, fields in rows:
            found = tuple(_parse_int(fields[column[c]], path, line, c) for c in ("ih", "iw", "sh", "sw"))
            if first is None:
                first = (line, found)
                if 0 in found:
                    raise BrodenFormatError(f"{_where(path, line)}: sizes ih,iw,sh,sw must be positive, got {found}")
            elif found != first[1]:
                raise BrodenFormatError(
                    f"{_where(path, line)}: ih,iw,sh,sw = {found} differ from {first[1]} on line {first[0]}; "
                    "every image must have the same image and segmentation size"
                )
            if not fields[column["image"]]:
                raise BrodenFormatError(f"{_where(path, line, 'image')}: empty image file name")
        ih, iw, sh, sw = first[1]
        self.image_size = (ih, iw)
        self.seg_size = (sh, sw)

        kinds = {c: self._column_kind(path, rows, column[c], c) for c in self.categories}
        self.image_level_categories = [c for c in self.categories if kinds[c] == "image-level"]
        self.pixel_categories = [c for c in self.categories if kinds[c] == "pixel"]

        num_labels = len(self.label_names)
        self._images = []
        self._lines = []
        self._pngs = []  # per image: ((category, file name), ...) in pixel_categories order, then cell order
        self._image_labels = []  # per image: label numbers in image_level_categories order, then cell order
        for line, fields in rows:
            self._images.append(fields[column["image"]])
            self._lines.append(line)
            self._pngs.append(
                tuple((c, name) for c in self.pixel_categories for name in _split_cell(fields[column[c]]))
            )
            labels = []
            for c in self.image_level_categories:
                for entry in _split_cell(fields[column[c]]):
                    number = int(entry)
                    if not 0 <= number < num_labels:
                        raise BrodenFormatError(
                            f"{_where(path, line, c)}: label {number} is not in label.csv "
                            f"(labels are 1..{num_labels - 1}; 0 means unlabeled)"
                        )
                    if number:  # 0 is "unlabeled" in image-level cells as in PNGs (NetDissect-Lite counted it)
                        labels.append(number)
            self._image_labels.append(tuple(labels))

    @staticmethod
    def _column_kind(path, rows, k, category):
        """'image-level' when the column holds integer label numbers, 'pixel' when it holds PNG file names
        (also for a column with no entries at all); a column mixing both is an error."""
        kind = None
        for line, fields in rows:
            for entry in _split_cell(fields[k]):
                found = _cell_kind(entry)
                if found is None:
                    raise BrodenFormatError(
                        f"{_where(path, line, category)}: expected a PNG file name or an integer label number, "
                        f"got {entry!r}"
                    )
                if kind is None:
                    kind, first_line = found, line
                elif found != kind:
                    raise BrodenFormatError(
                        f"{_where(path, line, category)}: got a {found} entry {entry!r}, but line {first_line} "
                        f"made this a {kind} column"
                    )
        return kind or "pixel"

    def __len__(self):
        return len(self._images)

    def _check_index(self, i):
        i = operator.index(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"image index {i} is out of range for {len(self)} images")
        return i % len(self)

    def image_path(self, i):
        return self.root / "images" / self._images[self._check_index(i)]

    def _decode_image(self, i):
        path = self.image_path(i)
        where = _where(self.root / "index.csv", self._lines[i], "image")
        image = _open_image(path, where)
        if image.size != (self.image_size[1], self.image_size[0]):
            raise BrodenFormatError(
                f"image {path} is {image.size[1]}x{image.size[0]} (h x w), but index.csv ({where}) says "
                f"{self.image_size[0]}x{self.image_size[1]}"
            )
        # Colour conversion (e.g. a greyscale JPEG replicated to RGB) changes no geometry.
        return np.asarray(image.convert("RGB"), dtype=np.uint8)

    def _decode_png(self, i, category, name):
        path = self.root / "images" / name
        where = _where(self.root / "index.csv", self._lines[i], category)
        png = _open_image(path, where)
        if png.size != (self.seg_size[1], self.seg_size[0]):
            raise BrodenFormatError(
                f"segmentation {path} is {png.size[1]}x{png.size[0]} (h x w), but index.csv ({where}) says "
                f"{self.seg_size[0]}x{self.seg_size[1]}"
            )
        if png.mode not in ("RGB", "RGBA"):
            raise BrodenFormatError(
                f"segmentation {path} has mode {png.mode}; expected an RGB(A) PNG (label = R + 256*G)"
            )
        rgb = np.asarray(png)
        labels = rgb[..., 0].astype(np.uint16) | (rgb[..., 1].astype(np.uint16) << 8)
        top = int(labels.max())
        if top >= len(self.label_names):
            count = int((labels >= len(self.label_names)).sum())
            raise BrodenFormatError(
                f"segmentation {path} ({where}) holds label {top} ({count} pixels >= {len(self.label_names)}), "
                f"which is not in label.csv (labels are 1..{len(self.label_names) - 1})"
            )
        return labels

    def _decode(self, i):
        """(uint8 image (ih, iw, 3), uint16 planes (P_i, sh, sw)) of image i: the packed storage types."""
        i = self._check_index(i)
        image = self._decode_image(i)
        planes = np.empty((len(self._pngs[i]),) + self.seg_size, dtype=np.uint16)
        for k, (category, name) in enumerate(self._pngs[i]):
            planes[k] = self._decode_png(i, category, name)
        return image, planes

    def load(self, i):
        image, planes = self._decode(i)
        return {
            "image": image,
            "planes": planes.astype(np.int32),
            "image_labels": list(self._image_labels[self._check_index(i)]),
        }

    def fingerprint(self):
        """sha256 of the CSVs this dataset was read from, the category selection and the packed format."""
        digest = hashlib.sha256(json.dumps({"format": PACK_FORMAT, "categories": self.categories}).encode())
        for name in ["index.csv", "category.csv", "label.csv"] + [f"c_{c}.csv" for c in self.categories]:
            digest.update(name.encode() + b"\0")
            digest.update((self.root / name).read_bytes())
        return digest.hexdigest()

    def _plane_offsets(self):
        return np.concatenate([[0], np.cumsum([len(p) for p in self._pngs])]).astype(np.int64)

    def _image_label_table(self):
        width = max(len(labels) for labels in self._image_labels)
        table = np.zeros((len(self), width), dtype=np.int32)
        for i, labels in enumerate(self._image_labels):
            table[i, : len(labels)] = labels
        return table

    def _decoded(self, indices, workers):
        """Yields (i, image, planes) for `indices` in order, decoded here or by a pool of `workers` processes
        that is kept a bounded number of chunks ahead (memory stays flat however large the dataset)."""
        if workers == 0:
            for i in indices:
                yield (int(i),) + self._decode(int(i))
            return
        chunks = np.array_split(indices, max(1, -(-len(indices) // POOL_CHUNK)))
        # An executor, not multiprocessing.Pool: Pool.terminate() can kill a worker while it holds the result
        # queue's lock and then hang forever; the executor lets running chunks finish and cancels the rest.
        with ProcessPoolExecutor(workers, initializer=_set_pool_dataset, initargs=(self,)) as pool:
            in_flight = collections.deque()
            try:
                for chunk in chunks:
                    in_flight.append(pool.submit(_decode_in_pool, chunk.tolist()))
                    if len(in_flight) >= 4 * workers:
                        yield from in_flight.popleft().result()
                while in_flight:
                    yield from in_flight.popleft().result()
            finally:
                for future in in_flight:
                    future.cancel()

    def pack(self, cache_dir=None, workers=0, progress=True):
        """Decodes every image and PNG once into a PackedBroden under `cache_dir` (default <root>/.kdfast_cache).
        A complete cache with the same fingerprint is reused as is; an interrupted one is resumed."""
        if int(workers) < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        cache_dir = Path(cache_dir) if cache_dir is not None else self.root / ".kdfast_cache"
        offsets = self._plane_offsets()
        labels = self._image_label_table()
        meta = {
            "format": PACK_FORMAT,
            "fingerprint": self.fingerprint(),
            "complete": False,
            "source": str(self.root.resolve()),
            "num_images": len(self),
            "num_planes": int(offsets[-1]),
            "max_image_labels": labels.shape[1],
            "image_size": list(self.image_size),
            "seg_size": list(self.seg_size),
            "categories": self.categories,
            "image_level_categories": self.image_level_categories,
            "pixel_categories": self.pixel_categories,
            "label_names": self.label_names,
            "label_category": self.label_category.tolist(),
        }
        arrays = _resume_or_create(cache_dir, meta)
        if arrays is None:
            return PackedBroden.open(cache_dir)
        # Rewritten on every (re)start: cheap, and immune to a kill while they were first written.
        arrays["plane_offsets"][:] = offsets
        arrays["image_labels"][:] = labels
        _flush(arrays["plane_offsets"], arrays["image_labels"])
        pending = np.flatnonzero(arrays["done"] == 0)
        decoded = self._decoded(pending, workers)
        written = []

        def commit():
            # Data first, then the flags that vouch for it: a crash between the two only redoes work.
            _flush(arrays["images"], arrays["planes"])
            arrays["done"][written] = 1
            _flush(arrays["done"])
            written.clear()

        bar = tqdm(
            total=len(self), initial=len(self) - len(pending), disable=not progress, desc="packing Broden", unit="img"
        )
        try:
            for i, image, planes in decoded:
                arrays["images"][i] = image
                arrays["planes"][offsets[i] : offsets[i + 1]] = planes
                written.append(i)
                bar.update()
                if len(written) >= COMMIT_EVERY:
                    commit()
        finally:
            decoded.close()  # stops the worker pool at once when packing failed
            commit()  # never lose images that were completely written, even when a decode failed
            bar.close()
        meta["complete"] = True
        # Every image-level label was checked against label.csv when index.csv was read, every plane pixel when
        # its PNG was decoded (above): a complete cache vouches for its label ranges, so consumers (the
        # dissection's iou_tally calls) need not read them again on every batch.
        meta["labels_validated"] = True
        _write_meta(cache_dir, meta)
        return PackedBroden.open(cache_dir)


def _open_image(path, where):
    if not path.is_file():
        raise BrodenFormatError(f"missing file {path} (listed in {where})")
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError...) for broken files
        raise BrodenFormatError(f"cannot decode {path} (listed in {where}): {exc}") from None
    return image


_POOL_DATASET = None  # the BrodenDataset a pack worker process decodes from


def _set_pool_dataset(dataset):
    global _POOL_DATASET
    _POOL_DATASET = dataset


def _decode_in_pool(indices):
    return [(i,) + _POOL_DATASET._decode(i) for i in indices]


# ---- packed cache files --------------------------------------------------------------------------------------

_META = "meta.json"
_ARRAY_NAMES = ("images", "planes", "plane_offsets", "image_labels", "done")


def _array_specs(meta):
    n, p, q = meta["num_images"], meta["num_planes"], meta["max_image_labels"]
    (ih, iw), (sh, sw) = meta["image_size"], meta["seg_size"]
    return {
        "images": (np.uint8, (n, ih, iw, 3)),
        "planes": (np.uint16, (p, sh, sw)),
        "plane_offsets": (np.int64, (n + 1,)),
        "image_labels": (np.int32, (n, q)),
        "done": (np.uint8, (n,)),
    }


def _array_path(cache_dir, name):
    return cache_dir / f"{name}.bin"


def _map_array(path, dtype, shape, mode):
    """np.memmap of a cache file; numpy cannot map an empty file, so an empty array is held in memory."""
    if int(np.prod(shape)) == 0:
        if mode == "w+":
            path.write_bytes(b"")
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode=mode, shape=shape)


def _flush(*arrays):
    for array in arrays:
        if isinstance(array, np.memmap):
            array.flush()


def _read_meta(cache_dir):
    path = cache_dir / _META
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BrodenFormatError(f"packed Broden cache {cache_dir}: {_META} is unreadable ({exc})") from None


def _write_meta(cache_dir, meta):
    write_text(cache_dir / _META, json.dumps(meta))


def _sizes_match(cache_dir, meta):
    for name, (dtype, shape) in _array_specs(meta).items():
        path = _array_path(cache_dir, name)
        if not path.is_file() or path.stat().st_size != int(np.prod(shape)) * np.dtype(dtype).itemsize:
            return False
    return True


def _resume_or_create(cache_dir, meta):
    """Writable arrays for packing, or None when a complete cache for the same fingerprint already exists."""
    existing = _read_meta(cache_dir) if cache_dir.is_dir() else None
    if existing is not None and existing.get("fingerprint") == meta["fingerprint"] and _sizes_match(cache_dir, meta):
        if existing.get("complete"):
            return None
        return {
            name: _map_array(_array_path(cache_dir, name), dtype, shape, "r+")
            for name, (dtype, shape) in _array_specs(meta).items()
        }
    if existing is not None:
        warnings.warn(
            f"packed Broden cache {cache_dir} was made from other CSVs, categories or format (or is damaged); "
            "rebuilding it",
            stacklevel=3,
        )
        for name in _ARRAY_NAMES:
            _array_path(cache_dir, name).unlink(missing_ok=True)
    elif cache_dir.is_dir() and any(cache_dir.iterdir()):
        raise BrodenFormatError(
            f"cache folder {cache_dir} is not empty and holds no packed Broden ({_META} missing); "
            "refusing to write into it: pass an empty or new cache_dir"
        )
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _write_meta(cache_dir, meta)
    except OSError as exc:
        raise BrodenFormatError(
            f"cannot write the packed Broden cache to {cache_dir} ({exc}); pass cache_dir="
        ) from None
    return {
        name: _map_array(_array_path(cache_dir, name), dtype, shape, "w+")
        for name, (dtype, shape) in _array_specs(meta).items()
    }


class PackedBroden(torch.utils.data.Dataset):
    """Memory-mapped packed cache: uint8 images (N, ih, iw, 3), uint16 label planes stored flat (total_planes, sh, sw)
    with per-image offsets, image-level labels (N, Qmax) int32 zero-padded, plus a metadata JSON. Never decodes PNGs."""

    def __init__(self, cache_dir, meta, arrays):
        self.cache_dir = cache_dir
        self.categories = meta["categories"]
        self.image_level_categories = meta["image_level_categories"]
        self.pixel_categories = meta["pixel_categories"]
        self.label_names = meta["label_names"]
        self.label_category = np.asarray(meta["label_category"], dtype=np.int64)
        self.image_size = tuple(meta["image_size"])
        self.seg_size = tuple(meta["seg_size"])
        self._images = arrays["images"]
        self._planes = arrays["planes"]
        self._offsets = np.asarray(arrays["plane_offsets"])
        self._labels = arrays["image_labels"]
        self._label_counts = np.count_nonzero(np.asarray(self._labels), axis=1)
        # Whether packing checked every label number against label.csv (caches packed before this was
        # recorded say False: their users check labels per batch, as before).
        self.labels_validated = bool(meta.get("labels_validated", False))

    @classmethod
    def open(cls, cache_dir):
        cache_dir = Path(cache_dir)
        if not cache_dir.is_dir():
            raise BrodenFormatError(f"no packed Broden cache at {cache_dir}: the folder does not exist")
        meta = _read_meta(cache_dir)
        if meta is None:
            raise BrodenFormatError(f"no packed Broden cache at {cache_dir}: {_META} is missing")
        if meta.get("format") != PACK_FORMAT:
            raise BrodenFormatError(
                f"packed Broden cache {cache_dir} has format {meta.get('format')}, expected {PACK_FORMAT}: pack again"
            )
        if not meta.get("complete"):
            raise BrodenFormatError(
                f"packed Broden cache {cache_dir} is incomplete (packing was interrupted): rerun BrodenDataset.pack() "
                "to resume it"
            )
        arrays = {}
        for name, (dtype, shape) in _array_specs(meta).items():
            path = _array_path(cache_dir, name)
            expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
            if not path.is_file() or path.stat().st_size != expected:
                found = path.stat().st_size if path.is_file() else "missing"
                raise BrodenFormatError(
                    f"packed Broden cache {cache_dir} is corrupt: {path.name} should hold {expected} bytes, got {found}"
                )
            arrays[name] = _map_array(path, dtype, shape, "r")
        offsets = np.asarray(arrays["plane_offsets"])
        if offsets[0] != 0 or offsets[-1] != meta["num_planes"] or (np.diff(offsets) < 0).any():
            raise BrodenFormatError(f"packed Broden cache {cache_dir} is corrupt: plane_offsets.bin is inconsistent")
        return cls(cache_dir, meta, arrays)

    def __reduce__(self):
        # DataLoader workers reopen the memmaps instead of pickling gigabytes of image data.
        return (PackedBroden.open, (str(self.cache_dir),))

    def __len__(self):
        return len(self._offsets) - 1

    def _check_index(self, i):
        i = operator.index(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"image index {i} is out of range for {len(self)} packed images")
        return i % len(self)

    def __getitem__(self, i):
        i = self._check_index(i)
        planes = self._planes[self._offsets[i] : self._offsets[i + 1]]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(self._images[i].transpose(2, 0, 1))),
            "planes": torch.from_numpy(planes.astype(np.int32)),
            "image_labels": torch.from_numpy(np.array(self._labels[i, : self._label_counts[i]], dtype=np.int32)),
            "index": i,
        }

    @staticmethod
    def collate(items):
        if not items:
            raise ValueError("PackedBroden.collate needs at least one item")
        plane_counts = [item["planes"].shape[0] for item in items]
        label_counts = [item["image_labels"].shape[0] for item in items]
        seg_size = items[0]["planes"].shape[1:]
        seg = torch.zeros((len(items), max(plane_counts)) + tuple(seg_size), dtype=torch.int32)
        labels = torch.zeros((len(items), max(label_counts)), dtype=torch.int32)
        for b, item in enumerate(items):
            seg[b, : plane_counts[b]] = item["planes"]
            labels[b, : label_counts[b]] = item["image_labels"]
        return {
            "images": torch.stack([item["image"] for item in items]),
            "seg": seg,
            "image_labels": labels,
            "indices": torch.tensor([item["index"] for item in items], dtype=torch.int64),
        }

    def batch(self, indices, images=True, labels=True):
        """{"images": uint8 (B, 3, ih, iw), "seg": int32 (B, P, sh, sw), "image_labels": int32 (B, Q),
        "indices": int64 (B,)} of the images at `indices`; images=False / labels=False leave out the images /
        the label planes and image-level labels (a dissection's pass 1 needs only images, pass 2 on stored
        activations only labels)."""
        indices = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices)
        if indices.ndim != 1 or not (indices.size == 0 or np.issubdtype(indices.dtype, np.integer)):
            raise TypeError(f"indices must be a 1-D sequence of integers, got {indices.dtype} of shape {indices.shape}")
        if indices.size and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise IndexError(f"indices must lie in [{-len(self)}, {len(self)}), got {indices.min()}..{indices.max()}")
        indices = indices.astype(np.int64) % len(self)
        out = {"indices": torch.from_numpy(indices)}
        if images:
            out["images"] = torch.from_numpy(np.ascontiguousarray(self._images[indices].transpose(0, 3, 1, 2)))
        if not labels:
            return out
        starts, ends = self._offsets[indices], self._offsets[indices + 1]
        plane_counts = ends - starts
        seg = np.zeros((len(indices), int(plane_counts.max(initial=0))) + self.seg_size, dtype=np.int32)
        for b in range(len(indices)):
            seg[b, : plane_counts[b]] = self._planes[starts[b] : ends[b]]
        width = int(self._label_counts[indices].max(initial=0))
        out["seg"] = torch.from_numpy(seg)
        out["image_labels"] = torch.from_numpy(np.array(self._labels[indices, :width], dtype=np.int32))
        return out

    def image(self, i):
        return np.array(self._images[self._check_index(i)])
