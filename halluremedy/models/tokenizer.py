"""A word-level tokenizer built offline from a closed vocabulary (the scene world's words).

It is a ``PreTrainedTokenizerFast`` saved in the standard Hugging Face layout, so the tiny model's
directory loads with ``AutoTokenizer``/``AutoProcessor`` exactly like a real LLaVA checkpoint.
Text is lowercased and split on whitespace and punctuation; decoding joins words with spaces and
re-attaches punctuation ("a red circle." round-trips).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from halluremedy.prompts import IMAGE_TOKEN

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, IMAGE_TOKEN)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])


def split_words(text: str) -> list[str]:
    """The words the tokenizer sees in ``text`` (lowercased; punctuation separate)."""
    return [w for w, _ in _pre_tokenizer().pre_tokenize_str(text.lower())]


def build_word_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer whose vocabulary is every word of ``texts`` (sorted, so deterministic).

    Ids: ``<pad>``=0, ``<unk>``=1, ``<s>``=2, ``</s>``=3, ``<image>``=4, then the words.
    """
    words = sorted({w for t in texts for w in split_words(t.replace(IMAGE_TOKEN, " "))})
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = _pre_tokenizer()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    core.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                        special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, unk_token=UNK,
                                   pad_token=PAD, extra_special_tokens={"image_token": IMAGE_TOKEN},
                                   padding_side="left", clean_up_tokenization_spaces=True)
