"""``text_tokenizer``: a byte-level BPE trained on TRAIN-split report text (or a local one)."""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
from pydantic import Field

from assets import paths
from cxr.storage import atomic_dir
from pipelines.lineage import record_lineage
from pipelines.resources import StorageResource


class TextTokenizerConfig(dg.Config):
    """Train a BPE, or use an existing tokenizer directory from disk."""

    vocab_size: int = Field(default=2048, description="BPE vocabulary size (specials included)")
    min_frequency: int = Field(default=2, description="Minimum pair frequency for a merge")
    pretrained_dir: str = Field(
        default="",
        description="Existing PreTrainedTokenizerFast directory on disk (e.g. RadPhi-2's) with "
        "the <|img|>, <|/img|>, <|endoftext|> tokens; empty = train one",
    )


def train_texts(storage: StorageResource) -> Iterator[str]:
    """TRAIN-split report texts, streamed."""
    con = duckdb.connect()
    reader = con.sql(
        f"""SELECT r.text FROM read_parquet('{storage.path(*paths.REPORT_SECTIONS)}') r
            JOIN read_parquet('{storage.path(*paths.SPLITS)}') s USING (study_id)
            WHERE s.split = 'train' AND r.text <> '' ORDER BY r.study_id"""
    ).to_arrow_reader(4096)
    for batch in reader:
        yield from batch.column("text").to_pylist()
    con.close()


@dg.asset(
    group_name="tokenization",
    deps=["report_sections", "splits"],
    kinds={"huggingface"},
    description="Report text tokenizer (byte-level BPE with the CheXmix special tokens), saved "
    "as a transformers PreTrainedTokenizerFast directory; trained on TRAIN-split text only.",
)
def text_tokenizer(
    context: dg.AssetExecutionContext, config: TextTokenizerConfig, storage: StorageResource
) -> dg.MaterializeResult:
    """Train (or copy in) the text tokenizer into ``tokenizers/text``."""
    from models.text_tokenizer import load_tokenizer, tokenizer_sha256, train_bpe

    out = storage.path(*paths.TEXT_TOKENIZER_DIR)
    if config.pretrained_dir:
        tokenizer = load_tokenizer(Path(config.pretrained_dir))
        num_texts = 0
    else:
        counter = {"n": 0}

        def counted() -> Iterator[str]:
            for text in train_texts(storage):
                counter["n"] += 1
                yield text

        tokenizer = train_bpe(counted(), config.vocab_size, config.min_frequency)
        num_texts = counter["n"]
        if num_texts == 0:
            raise dg.Failure("no TRAIN-split report text to train the tokenizer on")
    with atomic_dir(out) as tmp:  # the old tokenizer stays until the new one is complete
        tokenizer.save_pretrained(str(tmp))
    sha = tokenizer_sha256(out)
    sample = "No pleural effusion or pneumothorax. The heart size is normal."
    pieces = tokenizer.convert_ids_to_tokens(
        tokenizer(sample, add_special_tokens=False)["input_ids"]
    )
    lineage = record_lineage(
        context,
        storage,
        [str(out)],
        sha,
        inputs=["report_sections", "splits"],
        config=config.model_dump(),
    )
    context.log.info(f"text tokenizer: {len(tokenizer)} ids from {num_texts} train reports")
    return dg.MaterializeResult(
        metadata={
            "vocab_size": len(tokenizer),
            "num_train_texts": num_texts,
            "sample_tokens": dg.MetadataValue.md(
                f"`{sample}` -> {len(pieces)} tokens: " + " ".join(f"`{p}`" for p in pieces)
            ),
            "path": dg.MetadataValue.path(str(out)),
            "sha256": sha,
            **lineage,
        },
        data_version=dg.DataVersion(sha),
    )
