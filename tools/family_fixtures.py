#!/usr/bin/env python3
"""Builds the tiny, randomly initialized BERT-family fixtures of squeeze's golden tests
(crates/squeeze/tests/family.rs): one sentence-transformers directory per layout, each with
its own tokenizer trained here on tools/golden_sentences.txt, and `golden.json` — the
sentences and the embeddings sentence-transformers computes for them.

  bert         BertModel, WordPiece (lower-cased), token types, mean pooling, normalized
  roberta      RobertaModel, byte-level BPE, positions offset by the padding index, CLS
               pooling, not normalized
  xlm-roberta  XLMRobertaModel, SentencePiece-style Unigram, max pooling, normalized
  distilbert   DistilBertModel (its own parameter names, no token types), mean pooling,
               not normalized

Weights are drawn with a larger spread than HF's default (initializer_range 0.3), so that
every layer, not only the embeddings, moves the output. Nothing is downloaded.

  usage: PYTHON tools/family_fixtures.py OUT_DIR   (crates/squeeze/tests/fixtures/family)
         PYTHON tools/family_fixtures.py --bert-base TOKENIZER_DIR OUT_DIR
         PYTHON tools/family_fixtures.py --check-export EXPORTED_DIR FIXTURE_DIR
The third form loads a directory `squeeze export --format hf` wrote from a fixture with
sentence-transformers and prints the lowest cosine of its embeddings to the fixture's
golden ones (JSON). The second form writes a randomly initialized encoder of bert-base's size (12 layers,
768 wide, 30522-token vocabulary, HF's default initialization, seeded) as a plain
`BertModel` directory with the tokenizer files of TOKENIZER_DIR (a model with the same
vocabulary: all-MiniLM-L6-v2's is bert-base-uncased's) — the input of
scripts/family-experiments.sh.
"""
import json
import os
import pathlib
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (BertConfig, BertModel, DistilBertConfig, DistilBertModel,
                          PreTrainedTokenizerFast, RobertaConfig, RobertaModel, XLMRobertaConfig,
                          XLMRobertaModel)

ROOT = pathlib.Path(__file__).resolve().parent
SENTENCES = [s for s in (ROOT / "golden_sentences.txt").read_text().splitlines() if s.strip()]
CORPUS = SENTENCES * 4
SIZE = dict(hidden=32, layers=2, heads=4, ffn=64, positions=64)


def wordpiece():
    t = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    t.normalizer = normalizers.BertNormalizer(lowercase=True)
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    sp = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    t.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=sp))
    t.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", t.token_to_id("[CLS]")), ("[SEP]", t.token_to_id("[SEP]"))])
    t.decoder = decoders.WordPiece()
    return t, dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def byte_bpe():
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    sp = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    t.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=sp,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t.post_processor = processors.RobertaProcessing(("</s>", t.token_to_id("</s>")), ("<s>", t.token_to_id("<s>")))
    t.decoder = decoders.ByteLevel()
    return t, dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                   cls_token="<s>", sep_token="</s>")


def unigram():
    t = Tokenizer(models.Unigram())
    t.normalizer = normalizers.NFKC()
    t.pre_tokenizer = pre_tokenizers.Metaspace()
    sp = ["<s>", "<pad>", "</s>", "<unk>"]
    t.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=250, special_tokens=sp, unk_token="<unk>"))
    t.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", t.token_to_id("<s>")), ("</s>", t.token_to_id("</s>"))])
    t.decoder = decoders.Metaspace()
    return t, dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                   cls_token="<s>", sep_token="</s>")


def bert_like(cls, cfg_cls, vocab, pad, **extra):
    c = cfg_cls(vocab_size=vocab, hidden_size=SIZE["hidden"], num_hidden_layers=SIZE["layers"],
                num_attention_heads=SIZE["heads"], intermediate_size=SIZE["ffn"],
                initializer_range=0.3, pad_token_id=pad, **extra)
    return cls(c)


def build(name, out):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st

    torch.manual_seed({"bert": 1, "roberta": 2, "xlm-roberta": 3, "distilbert": 4}[name])
    tok, special = {"bert": wordpiece, "roberta": byte_bpe, "xlm-roberta": unigram, "distilbert": wordpiece}[name]()
    vocab, pad = tok.get_vocab_size(), tok.token_to_id(special["pad_token"])
    p = SIZE["positions"]
    if name == "bert":
        m = bert_like(BertModel, BertConfig, vocab, pad, max_position_embeddings=p, type_vocab_size=2)
        pooling, normalize = "mean", True
    elif name == "roberta":
        m = bert_like(RobertaModel, RobertaConfig, vocab, pad, max_position_embeddings=p + pad + 1,
                      type_vocab_size=1, layer_norm_eps=1e-5)
        pooling, normalize = "cls", False
    elif name == "xlm-roberta":
        m = bert_like(XLMRobertaModel, XLMRobertaConfig, vocab, pad, max_position_embeddings=p + pad + 1,
                      type_vocab_size=1, layer_norm_eps=1e-5)
        pooling, normalize = "max", True
    else:
        c = DistilBertConfig(vocab_size=vocab, dim=SIZE["hidden"], n_layers=SIZE["layers"], n_heads=SIZE["heads"],
                             hidden_dim=SIZE["ffn"], max_position_embeddings=p, initializer_range=0.3,
                             pad_token_id=pad)
        m = DistilBertModel(c)
        pooling, normalize = "mean", False
    m.eval()
    raw = out / f"{name}-hf"
    m.save_pretrained(raw, safe_serialization=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=p, **special)
    fast.save_pretrained(raw)
    tr = st.Transformer(str(raw), max_seq_length=p)
    mods = [tr, st.Pooling(SIZE["hidden"], pooling_mode=pooling)]
    if normalize:
        mods.append(st.Normalize())
    model = SentenceTransformer(modules=mods, device="cpu")
    d = out / name
    model.save(str(d))
    (d / "README.md").unlink(missing_ok=True)  # sentence-transformers' generated model card
    emb = model.encode(SENTENCES, convert_to_numpy=True, batch_size=4)
    (d / "golden.json").write_text(json.dumps({"sentences": SENTENCES, "embeddings": emb.tolist()}))
    for f in raw.iterdir():
        f.unlink()
    raw.rmdir()


def bert_base(tok_dir, out):
    import shutil

    torch.manual_seed(0)
    m = BertModel(BertConfig()).eval()  # bert-base: 12 x 768, 12 heads, FFN 3072
    m.save_pretrained(out, safe_serialization=True)
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]:
        if (tok_dir / f).is_file():
            shutil.copy(tok_dir / f, out / f)
    print(f"wrote {out}")


def check_export(exported, fixture):
    import numpy as np
    from sentence_transformers import SentenceTransformer

    gold = json.loads((fixture / "golden.json").read_text())
    e = SentenceTransformer(str(exported), device="cpu").encode(gold["sentences"], convert_to_numpy=True)
    g = np.array(gold["embeddings"], dtype=np.float32)
    cos = (e * g).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(g, axis=1))
    print(json.dumps({"exported": str(exported), "min_cosine_to_golden": float(cos.min())}))


def main():
    if sys.argv[1] == "--check-export":
        check_export(pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]))
        return
    if sys.argv[1] == "--bert-base":
        bert_base(pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]))
        return
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name in ["bert", "roberta", "xlm-roberta", "distilbert"]:
        build(name, out)
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
