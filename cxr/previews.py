"""Small PNG previews for the Dagster UI (embedded as markdown data URIs) and for reports."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

MAX_INLINE_BYTES = 400_000


def image_grid_png(
    images: Sequence[np.ndarray], captions: Sequence[str] = (), ncols: int = 6, tile: int = 128
) -> bytes:
    """A grid of grey images (each (H, W) uint8) with optional captions, as PNG bytes."""
    if not images:
        raise ValueError("image_grid_png needs at least one image")
    ncols = max(1, min(ncols, len(images)))
    nrows = (len(images) + ncols - 1) // ncols
    caption_h = 14 if captions else 0
    canvas = Image.new("L", (ncols * tile, nrows * (tile + caption_h)), color=32)
    draw = ImageDraw.Draw(canvas)
    for index, array in enumerate(images):
        thumb = Image.fromarray(np.asarray(array, dtype=np.uint8)).resize((tile, tile))
        x, y = (index % ncols) * tile, (index // ncols) * (tile + caption_h)
        canvas.paste(thumb, (x, y))
        if captions and index < len(captions):
            draw.text((x + 2, y + tile + 1), captions[index][:22], fill=230)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def bar_chart_png(counts: Mapping[str, int], title: str) -> bytes:
    """Horizontal bar chart of counts (e.g. quarantine reasons), as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(counts) or ["(none)"]
    values = [counts[k] for k in counts] or [0]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(labels) + 1.0), dpi=80)
    ax.barh(labels, values, color="#b5532b")
    ax.set_title(title)
    ax.invert_yaxis()
    for y, value in enumerate(values):
        ax.text(value, y, f" {value}", va="center")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str = "preview") -> str:
    """Markdown that shows ``png`` inline (the Dagster UI renders data URIs)."""
    while len(png) > MAX_INLINE_BYTES:  # a preview must never fail an asset: shrink it
        image = Image.open(io.BytesIO(png))
        image = image.resize((max(1, image.width // 2), max(1, image.height // 2)))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        png = buffer.getvalue()
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    """A GitHub-flavoured markdown table."""
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |\n" for r in rows)
    return head + body
