"""Byte-level BPE tokenizers trained with ``tokenizers``, saved as transformers folders.

Special tokens: ``<|endoftext|>`` separates documents (EOS), ``<|im_start|>``/``<|im_end|>``
delimit chat turns (the ChatML layout SmolLM2 and many open models use, so a chat template
works the same on our models and on theirs), ``<|pad|>`` pads batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

EOS, BOS_TURN, EOS_TURN, PAD = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"
SPECIAL_TOKENS = [EOS, BOS_TURN, EOS_TURN, PAD]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def iter_texts(files: list[Path], column: str, max_chars: int) -> Iterator[str]:
    """Texts of a Parquet dataset in file order, stopping after ``max_chars`` characters."""
    seen = 0
    for path in files:
        parquet = pq.ParquetFile(path)
        if column not in parquet.schema_arrow.names:
            raise ValueError(f"{path}: no column {column!r} (columns: {parquet.schema_arrow.names})")
        for batch in parquet.iter_batches(columns=[column], batch_size=1024):
            for text in batch.column(0).to_pylist():
                if not text:
                    continue
                yield text
                seen += len(text)
                if seen >= max_chars:
                    return


def train_tokenizer(files: list[Path], out_dir: Path, column: str = "text", vocab_size: int = 8192,
                    min_frequency: int = 2, max_chars: int = 50_000_000) -> dict:
    """Train a byte-level BPE on the dataset's texts; save a ``PreTrainedTokenizerFast`` folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    counter = {"docs": 0, "chars": 0}

    def texts() -> Iterator[str]:
        for text in iter_texts(files, column, max_chars):
            counter["docs"] += 1
            counter["chars"] += len(text)
            yield text

    tok.train_from_iterator(texts(), trainer=trainer)
    if counter["docs"] == 0:
        raise ValueError(f"no text in column {column!r} of {len(files)} file(s)")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                   bos_token=None, unk_token=None, model_max_length=1 << 20)
    fast.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return {"vocab_size": len(fast), "docs": counter["docs"], "chars": counter["chars"]}


def load_tokenizer(path: Path, gguf_file: str | None = None):
    """A transformers tokenizer from a folder (ours or any model's) or a GGUF file's folder."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), gguf_file=gguf_file) if gguf_file \
        else AutoTokenizer.from_pretrained(str(path))
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer at {path} has no EOS token")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok
