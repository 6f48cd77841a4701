//! A tiny WordPiece tokenizer fixture shared by the library's and the CLI's tests.

use serde_json::json;

/// A BERT-style tokenizer.json: lower-casing normalizer, WordPiece over WORDS, [CLS] … [SEP].
pub fn tokenizer_json(words: &[&str]) -> Vec<u8> {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        .iter()
        .chain(words)
        .enumerate()
    {
        vocab.insert(t.to_string(), json!(i));
    }
    let special = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
    let seq = json!({"Sequence": {"id": "A", "type_id": 0}});
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [special("[CLS]"), seq.clone(), special("[SEP]")],
            "pair": [special("[CLS]"), seq, special("[SEP]")],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": null,
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    });
    serde_json::to_vec(&tok).unwrap()
}
