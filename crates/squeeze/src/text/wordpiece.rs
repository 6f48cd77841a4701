//! A direct path through BERT's WordPiece tokenization (Devlin et al. 2019; Wu et al.
//! 2016) for plain ASCII text, beside the `tokenizers` crate that runs every other input.
//! A batch-1 sentence spent 10–12 µs in the crate — offsets, normalized-string alignment
//! maps, Unicode tables, an `Encoding` of ten vectors — for ids only. Taken only when
//! `tokenizer.json` says exactly BERT: `BertNormalizer` (cleaning text, lowercasing, which
//! also strips accents), `BertPreTokenizer`, `WordPiece` with its `##` prefix, and
//! `[CLS] $A [SEP]` around the sequence; and only for text that is ASCII and holds none
//! of the added tokens (which the crate would match before normalizing). On ASCII the
//! rules are few: tab, newline, carriage return and space separate words, the other
//! control bytes are dropped, letters are lowercased, each ASCII punctuation mark is a
//! word of its own, and a word is split greedily into the longest pieces the vocabulary
//! has (`[UNK]` for the whole word when a piece is missing, or past 100 characters). The
//! tests hold it to the crate's ids on real sentences and on edge cases.

use foldhash::HashMap;
use serde_json::Value;

/// BERT's WordPiece, ASCII only.
pub struct AsciiWordPiece {
    /// Word-initial pieces.
    heads: HashMap<Box<str>, u32>,
    /// Continuation pieces, without their prefix.
    tails: HashMap<Box<str>, u32>,
    unk: u32,
    cls: u32,
    sep: u32,
    max_chars: usize,
    /// Added tokens (matched on the raw text by the crate): text holding one goes there.
    added: Vec<String>,
}

impl AsciiWordPiece {
    /// From a parsed `tokenizer.json`; `None` unless it describes exactly the BERT
    /// pipeline above.
    pub fn from_json(v: &Value) -> Option<Self> {
        let n = &v["normalizer"];
        let bert_normalizer = n["type"] == "BertNormalizer"
            && n["clean_text"] == true
            && n["lowercase"] == true
            && (n["strip_accents"].is_null() || n["strip_accents"] == true);
        let m = &v["model"];
        let prefix = m["continuing_subword_prefix"].as_str()?;
        if !bert_normalizer || v["pre_tokenizer"]["type"] != "BertPreTokenizer" {
            return None;
        }
        if m["type"] != "WordPiece" || prefix.is_empty() {
            return None;
        }
        let vocab = m["vocab"].as_object()?;
        let id = |t: &str| vocab.get(t)?.as_u64().and_then(|i| u32::try_from(i).ok());
        let (mut heads, mut tails) = (HashMap::default(), HashMap::default());
        for (t, i) in vocab {
            let i = u32::try_from(i.as_u64()?).ok()?;
            match t.strip_prefix(prefix) {
                Some(rest) => tails.insert(rest.into(), i),
                None => heads.insert(t.as_str().into(), i),
            };
        }
        let (cls, sep) = template(&v["post_processor"])?;
        Some(AsciiWordPiece {
            heads,
            tails,
            unk: id(m["unk_token"].as_str()?)?,
            cls,
            sep,
            max_chars: usize::try_from(m["max_input_chars_per_word"].as_u64()?).ok()?,
            added: v["added_tokens"]
                .as_array()?
                .iter()
                .filter_map(|a| a["content"].as_str().map(str::to_string))
                .collect(),
        })
    }

    /// The ids of `text` with `[CLS]` and `[SEP]`, the sequence cut to `max_len − 2`
    /// pieces; `None` for text this path does not take (not ASCII, or holding an added
    /// token).
    pub fn encode(&self, text: &str, max_len: usize) -> Option<Vec<u32>> {
        if !text.is_ascii() || max_len < 2 || self.added.iter().any(|a| text.contains(a.as_str())) {
            return None;
        }
        let keep = max_len - 2;
        let mut ids = vec![self.cls];
        let mut word = String::new();
        for b in text.bytes() {
            if ids.len() > keep {
                break;
            }
            match b {
                b'\t' | b'\n' | b'\r' | b' ' => self.word(&mut word, &mut ids),
                0..=0x1f | 0x7f => {}
                _ if b.is_ascii_punctuation() => {
                    self.word(&mut word, &mut ids);
                    word.push(b as char);
                    self.word(&mut word, &mut ids);
                }
                _ => word.push(b.to_ascii_lowercase() as char),
            }
        }
        self.word(&mut word, &mut ids);
        ids.truncate(keep + 1);
        ids.push(self.sep);
        Some(ids)
    }

    /// Appends the pieces of `word` (then empties it): the longest vocabulary entry at
    /// each position, or one `[UNK]` for the whole word.
    fn word(&self, word: &mut String, ids: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        let at = ids.len();
        let mut start = 0;
        while start < word.len() && word.len() <= self.max_chars {
            let table = if start == 0 { &self.heads } else { &self.tails };
            let found = (start + 1..=word.len())
                .rev()
                .find_map(|end| Some((end, *table.get(&word[start..end])?)));
            match found {
                Some((end, id)) => {
                    ids.push(id);
                    start = end;
                }
                None => break,
            }
        }
        if start < word.len() {
            ids.truncate(at);
            ids.push(self.unk);
        }
        word.clear();
    }
}

/// The ids of the special tokens around a `TemplateProcessing` single-sequence template
/// that is exactly `[CLS] $A [SEP]` (one id each), as (first, last).
fn template(p: &Value) -> Option<(u32, u32)> {
    if p["type"] != "TemplateProcessing" {
        return None;
    }
    let single = p["single"].as_array()?;
    let special = |i: usize| -> Option<u32> {
        let name = single.get(i)?.pointer("/SpecialToken/id")?.as_str()?;
        match p["special_tokens"][name]["ids"].as_array()?.as_slice() {
            [id] => u32::try_from(id.as_u64()?).ok(),
            _ => None,
        }
    };
    let middle = single.get(1)?.pointer("/Sequence/id")? == "A";
    (single.len() == 3 && middle).then_some((special(0)?, special(2)?))
}
