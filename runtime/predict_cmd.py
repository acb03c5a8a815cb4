"""`netc predict FILE --checkpoint DIR IMAGE...` -> each image's top classes; exit 0, or 1 if any failed.

Images of any size and colour become the dataset's samples: grayscale, the
dataset's size (28 x 28), values in [0, 1], and white-on-black. MNIST and
Fashion-MNIST both draw a bright object on a dark background, so a picture
whose border is brighter than its middle (a dark digit on white paper, the
usual photo or scan) is inverted first. The rule looks at the mean of the
outermost pixel ring against the mean of the whole picture, so it needs no
threshold tuned per image. Then the training normalization (when the file
asks for it) and the net's input shape apply, as in training.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from netc.dsl.check import parse_path
from netc.dsl.errors import DataError
from netc.runtime.train_cmd import load_trained

SAMPLE_SIZE = (28, 28)  # (height, width) of an MNIST / Fashion-MNIST sample


@dataclass(frozen=True)
class Prediction:
    """One image file's result: its top classes, or why it could not be read."""

    file: str
    top: list[tuple[int, float]]  # (class, probability), most probable first
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        return {"file": self.file, "top": [{"class": c, "probability": p} for c, p in self.top]}

    def as_text(self) -> str:
        if self.error is not None:
            return f"{self.file}: error: {self.error}"
        ranked = ", ".join(f"{c} ({100 * p:.1f}%)" for c, p in self.top)
        return f"{self.file}: {ranked}"


def load_image(path: str) -> np.ndarray:
    """An image file -> a (28, 28) float32 array in [0, 1], white-on-black; DataError if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            gray = _flatten_alpha(image).convert("L")
    except FileNotFoundError:
        raise DataError("no such file") from None
    except IsADirectoryError:
        raise DataError("a directory, not an image") from None
    except UnidentifiedImageError:
        raise DataError("not an image PIL can read (PNG or JPEG expected)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot read the image: {error}") from None
    pixels = np.asarray(gray.resize(SAMPLE_SIZE[::-1], Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    return polarity_fixed(pixels)


def _flatten_alpha(image: Any) -> Any:
    """Transparent pixels become white paper, as a viewer shows them."""
    from PIL import Image

    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, rgba)
    return image


def polarity_fixed(pixels: np.ndarray) -> np.ndarray:
    """Invert a dark-on-light picture (border brighter than the whole) into light-on-dark."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    return 1.0 - pixels if border.mean() > pixels.mean() else pixels


def predict(net: torch.nn.Module, samples: torch.Tensor, top: int) -> list[list[tuple[int, float]]]:
    """(B, *input_shape) samples -> for each, the `top` (class, probability) pairs."""
    net.eval()
    with torch.no_grad():
        probabilities = torch.softmax(net(samples).double(), dim=1)
    values, classes = probabilities.topk(min(top, probabilities.shape[1]), dim=1)
    return [list(zip(map(int, row_c), map(float, row_v), strict=True))
            for row_c, row_v in zip(classes.tolist(), values.tolist(), strict=True)]


def run(args: argparse.Namespace) -> int:
    graph = parse_path(args.file)
    if math.prod(graph.input_shape) != math.prod(SAMPLE_SIZE):
        raise DataError(f"{graph.path}: the net's input {list(graph.input_shape)} does not hold a "
                        f"{SAMPLE_SIZE[0]}x{SAMPLE_SIZE[1]} image")
    net, _checkpoint, stats = load_trained(graph, args.checkpoint, args.device, args.backend, "use")
    images: list[np.ndarray] = []
    results: dict[int, Prediction] = {}
    for index, path in enumerate(args.images):
        try:
            images.append(load_image(path))
        except DataError as error:
            results[index] = Prediction(path, [], error.message)
    readable = [i for i in range(len(args.images)) if i not in results]
    if readable:
        batch = torch.from_numpy(np.stack(images)).reshape(len(readable), *graph.input_shape)
        batch = ((batch - stats[0]) / stats[1]).to(net.device)
        for index, top in zip(readable, predict(net, batch, args.top), strict=True):
            results[index] = Prediction(args.images[index], top)
    for index in range(len(args.images)):
        result = results[index]
        text = json.dumps(result.as_json()) if args.json else result.as_text()
        print(text, file=sys.stdout if result.error is None or args.json else sys.stderr)
    return 1 if any(r.error is not None for r in results.values()) else 0
