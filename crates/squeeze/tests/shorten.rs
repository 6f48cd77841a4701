//! Cutting long lines before tokenization keeps the tokens a model reads: for random lines
//! of words (short, and longer than WordPiece's 100 characters), punctuation, runs of
//! whitespace, control and format characters, CJK ideographs and accented letters, the
//! ids of the cut line equal those of the whole line, with the real all-MiniLM-L6-v2
//! tokenizer (when fetched) and the WordPiece fixture; and a 20 MB line is cut to a few
//! kilobytes.

use std::collections::BTreeMap;
use std::path::Path;

use squeeze::text::shorten::{usable, Shortener};
use squeeze::text::TextTokenizer;

mod common;
use common::lcg;

const PIECES: &[&str] = &[
    "the", "cat", "Sat", "on", "mat", "running", "quickly", ".", ",", "!", "?", "'s", "-", "(",
    ")", "\"", "€", "5", "42", "café", "naïve", "日本", "中", "\u{301}", "\u{200b}", "\u{0}",
    "\u{7}", "\u{fffd}", "über", "ß", "İ",
];

fn word(n: usize, c: char) -> String {
    std::iter::repeat_n(c, n).collect()
}

/// A random line of `parts` pieces joined by random separators.
fn line(seed: u64, parts: usize) -> String {
    let mut r = lcg(seed);
    let mut next = |n: usize| (r.next().unwrap() >> 33) as usize % n;
    let mut s = String::new();
    for _ in 0..parts {
        match next(20) {
            0 => s.push_str(&word(90 + next(60), 'a')),
            1 => s.push_str(&word(300 + next(3000), 'x')),
            _ => s.push_str(PIECES[next(PIECES.len())]),
        }
        match next(6) {
            0 => {}
            1 => s.push_str(&word(1 + next(5000), ' ')),
            2 => s.push('\t'),
            3 => s.push('\u{3000}'),
            _ => s.push(' '),
        }
    }
    s
}

fn check(tok: &TextTokenizer, what: &str) {
    for seed in 0..150u64 {
        let l = line(seed, 5 + seed as usize % 400);
        let cut = tok.encode(&[&l]).unwrap().remove(0);
        let whole = tok.encode_whole(&l).unwrap();
        assert_eq!(
            cut,
            whole,
            "{what}, line {seed} ({} chars): cutting changed the tokens",
            l.chars().count()
        );
    }
}

#[test]
fn cut_lines_keep_their_tokens() {
    let mut assets = BTreeMap::new();
    let words = [
        "the", "cat", "sat", "on", "mat", "run", "##ning", "caf", "##e", "42",
    ];
    assets.insert(
        "tokenizer.json".to_string(),
        common::tokenizer::tokenizer_json(&words),
    );
    for max in [8, 16, 64] {
        check(
            &TextTokenizer::from_assets(&assets, max).unwrap(),
            &format!("fixture, {max} tokens"),
        );
    }
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    match std::fs::read(real.join("tokenizer.json")) {
        Ok(bytes) => {
            assets.insert("tokenizer.json".into(), bytes);
            for max in [16, 256] {
                check(
                    &TextTokenizer::from_assets(&assets, max).unwrap(),
                    &format!("all-MiniLM-L6-v2, {max} tokens"),
                );
            }
        }
        Err(_) => common::skip(&format!(
            "the real tokenizer: {} is missing",
            real.display()
        )),
    }
}

#[test]
fn a_huge_line_is_cut_to_a_bounded_size_in_pieces_or_whole() {
    let huge = line(7, 2000).repeat(20); // tens of megabytes
    assert!(huge.len() > 10_000_000, "{}", huge.len());
    let whole = usable(&huge, 256);
    let mut s = Shortener::new(256);
    for piece in huge.as_bytes().chunks(65536) {
        s.push(std::str::from_utf8(piece).unwrap_or(""));
        if s.done() {
            break;
        }
    }
    assert!(s.done());
    // bound: (2·256 + 8) units of at most WORD_KEEP characters (4 bytes), plus spaces
    let bound = (2 * 256 + 8) * (squeeze::text::shorten::WORD_KEEP * 4 + 1);
    assert!(whole.len() < bound, "{} bytes kept", whole.len());
    assert!(s.finish().len() < bound);
}

/// ASCII pieces for the direct WordPiece path: words in and out of the vocabularies,
/// capitals, digits, every kind of ASCII punctuation, control bytes the normalizer drops.
const ASCII: &[&str] = &[
    "the",
    "Cat",
    "SAT",
    "running",
    "unaffable",
    "xylophonist",
    "42",
    "3.14",
    "2,718",
    "e-mail",
    "don't",
    "#tag",
    "$100",
    "50%",
    "(x)",
    "{y}",
    "<z>",
    "`q`",
    "~",
    "^",
    "|",
    "\\",
    "@",
    "&",
    "*",
    "+",
    "=",
    "_",
    "/",
    ":",
    ";",
    "?!",
    "...",
    "\u{1}",
    "\u{7f}",
    "\u{b}",
    "\u{c}",
    "\u{1f}",
    "zzqqxj",
];

/// A random ASCII line of `parts` pieces and separators (spaces, tabs, newlines, none);
/// one line in ten holds an added token (which sends it to the crate).
fn ascii_line(seed: u64, parts: usize) -> String {
    let mut r = lcg(seed);
    let mut next = |n: usize| (r.next().unwrap() >> 33) as usize % n;
    let mut s = String::new();
    if seed.is_multiple_of(10) {
        s.push_str(["[CLS]", "a [MASK]b", "[SEP]"][next(3)]);
    }
    for _ in 0..parts {
        match next(25) {
            0 => s.push_str(&word(95 + next(10), 'a')),
            _ => s.push_str(ASCII[next(ASCII.len())]),
        }
        s.push_str(["", " ", "  ", "\t", "\n", "\r\n"][next(6)]);
    }
    s
}

/// The direct ASCII path (taken for these tokenizers) gives the crate's ids: random ASCII
/// lines short and long (truncated at 16 and at 256 tokens), words at WordPiece's 100
/// characters and past them, and, with the real tokenizer, every STS-B dev sentence.
#[test]
fn ascii_lines_take_the_direct_path_with_the_crates_ids() {
    let words = [
        "the", "cat", "sat", "run", "##ning", "un", "##aff", "##able", "42", ".",
    ];
    let mut files = vec![(
        "fixture".to_string(),
        common::tokenizer::tokenizer_json(&words),
    )];
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    match std::fs::read(real.join("tokenizer.json")) {
        Ok(bytes) => files.push(("all-MiniLM-L6-v2".into(), bytes)),
        Err(_) => common::skip("the real tokenizer is missing"),
    }
    let dev = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/stsb/sts-dev.csv");
    let pairs = squeeze::text::stsb::read(&dev).unwrap_or_default();
    let sentences: Vec<String> = squeeze::text::stsb::sentences(&pairs)
        .into_iter()
        .map(str::to_string)
        .collect();
    for (what, bytes) in files {
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let direct = squeeze::text::wordpiece::AsciiWordPiece::from_json(&json)
            .unwrap_or_else(|| panic!("{what}: the direct path should take this tokenizer"));
        let mut assets = BTreeMap::new();
        assets.insert("tokenizer.json".to_string(), bytes);
        for max in [16, 256] {
            let tok = TextTokenizer::from_assets(&assets, max).unwrap();
            let lines = (0..300u64)
                .map(|seed| ascii_line(seed, 1 + seed as usize % 120))
                .chain(["".into(), " \t ".into(), word(100, 'b'), word(101, 'b')])
                .chain(sentences.iter().cloned());
            let mut taken = 0;
            for l in lines {
                let crate_ids = tok.encode_whole(&l).unwrap();
                // the line as given (control bytes included) and through `encode`, which
                // cuts it first
                if let Some(ids) = direct.encode(&l, max) {
                    assert_eq!(ids, crate_ids, "{what}, {max} tokens, direct: {l:?}");
                    taken += 1;
                }
                let got = tok.encode(&[&l]).unwrap().remove(0);
                assert_eq!(got, crate_ids, "{what}, {max} tokens: {l:?}");
            }
            assert!(
                taken >= 250,
                "{what}: the direct path took only {taken} lines"
            );
        }
    }
    // a tokenizer that keeps case is not BERT's pipeline: the crate runs it
    let mut json: serde_json::Value =
        serde_json::from_slice(&common::tokenizer::tokenizer_json(&words)).unwrap();
    json["normalizer"]["lowercase"] = false.into();
    assert!(squeeze::text::wordpiece::AsciiWordPiece::from_json(&json).is_none());
}
