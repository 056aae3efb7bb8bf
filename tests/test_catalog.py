import contextlib
import multiprocessing as mp

import pyarrow as pa
import pyarrow.parquet as pq

from cxr.catalog import Catalog


def _writer(path: str, worker: int, rows: int) -> None:
    catalog = Catalog(path)

    def insert(con):
        con.execute("CREATE TABLE IF NOT EXISTS events (worker INTEGER, i INTEGER)")
        con.execute(f"INSERT INTO events SELECT {worker}, range FROM range({rows})")

    for _ in range(5):
        catalog.write(insert)


def test_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "catalog.duckdb")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 100)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    rows = Catalog(path).read("SELECT worker, count(*) FROM events GROUP BY worker ORDER BY 1")
    assert rows == [(0, 500), (1, 500)]


def test_views_over_parquet_and_rollback(tmp_path):
    pq.write_table(pa.table({"x": [1, 2, 3]}), tmp_path / "a.parquet")
    catalog = Catalog(tmp_path / "catalog.duckdb")
    catalog.register_views({"a": str(tmp_path / "a.parquet")})
    assert catalog.read("SELECT sum(x) FROM a") == [(6,)]

    def failing(con):
        con.execute("CREATE TABLE t AS SELECT 1 AS y")
        raise RuntimeError("boom")

    with contextlib.suppress(RuntimeError):
        catalog.write(failing)
    assert catalog.read("SELECT count(*) FROM duckdb_tables() WHERE table_name = 't'") == [(0,)]


def test_large_previews_are_shrunk_not_fatal():
    import base64
    import io

    import numpy as np
    from PIL import Image

    from cxr.previews import MAX_INLINE_BYTES, image_grid_png, markdown_image

    noise = [
        np.random.default_rng(i).integers(0, 255, (256, 256), dtype=np.uint8) for i in range(16)
    ]
    png = image_grid_png(noise, ncols=8, tile=256)
    assert len(png) > MAX_INLINE_BYTES
    md = markdown_image(png)
    data = base64.b64decode(md.split("base64,")[1].rstrip(")"))
    assert len(data) <= MAX_INLINE_BYTES and Image.open(io.BytesIO(data)).width < 8 * 256
