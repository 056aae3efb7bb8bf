"""``vocabulary``: the versioned id layout joining the text and image tokenizers."""

import dagster as dg

from assets import paths
from cxr.previews import markdown_table
from cxr.storage import file_sha256
from pipelines.lineage import record_lineage
from pipelines.resources import StorageResource


@dg.asset(
    group_name="tokenization",
    deps=["text_tokenizer", "image_tokenizer"],
    kinds={"json"},
    description="Unified vocabulary contract: text ids, then image code c at image_offset + c, "
    "then mask and pad ids; the sequence layout <|img|> codes <|/img|> <|endoftext|> report "
    "<|img|>.",
)
def vocabulary(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    """Write ``tokenizers/vocabulary.json`` from the two tokenizers."""
    from models.text_tokenizer import load_tokenizer, special_ids
    from models.vocabulary import Vocabulary
    from models.vq_tokenizer import load_checkpoint

    text = load_tokenizer(storage.path(*paths.TEXT_TOKENIZER_DIR))
    vq = load_checkpoint(storage.path(*paths.IMAGE_TOKENIZER_DIR))
    vocab = Vocabulary.build(len(text), vq.num_codes, special_ids(text))
    out = storage.path(*paths.VOCABULARY)
    vocab.save(out)
    sha = file_sha256(out)
    lineage = record_lineage(
        context,
        storage,
        [str(out)],
        sha,
        inputs=["text_tokenizer", "image_tokenizer"],
        config={},
    )
    rows = [
        {"ids": f"[0, {vocab.text_vocab_size})", "meaning": "text (BPE, specials included)"},
        {
            "ids": f"{vocab.image_start_id} / {vocab.image_end_id} / {vocab.eot_id}",
            "meaning": "<|img|> / <|/img|> / <|endoftext|>",
        },
        {
            "ids": f"[{vocab.image_offset}, {vocab.image_offset + vocab.codebook_size})",
            "meaning": "image codes (offset + c)",
        },
        {"ids": f"{vocab.mask_id} / {vocab.pad_id}", "meaning": "mask / pad"},
    ]
    return dg.MaterializeResult(
        metadata={
            "vocab_size": vocab.size,
            "image_offset": vocab.image_offset,
            "codebook_size": vocab.codebook_size,
            "layout": dg.MetadataValue.md(markdown_table(rows, ["ids", "meaning"])),
            "path": dg.MetadataValue.path(str(out)),
            "sha256": sha,
            **lineage,
        },
        data_version=dg.DataVersion(sha),
    )
