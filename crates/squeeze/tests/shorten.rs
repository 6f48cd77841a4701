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
