//! Bounded input for text encoders: a line is cut, before tokenization, to the characters
//! that can still reach the model's `max_seq_length` tokens, so that a 60 MB line costs
//! what a 60 KB one does (the tokenizer's own truncation acts only after it has built every
//! token and offset of the whole line). The cut follows BERT's normalizer and WordPiece
//! rules (Devlin et al. 2019) and leaves the kept tokens unchanged:
//! - control characters, which the normalizer deletes, are dropped;
//! - a run of whitespace, which the pre-tokenizer splits on, becomes one space;
//! - a word (letters, digits, combining marks) longer than WordPiece's 100 characters is
//!   one `[UNK]` however long it is, so only its first [`WORD_KEEP`] characters are kept;
//! - the line ends once more than twice the token budget of words and other symbols
//!   (each of which gives at least one token, save symbols that join a word) have started.
//!
//! [`Shortener`] takes the text in pieces (a reader streaming one long line), [`usable`]
//! a whole string.

use std::borrow::Cow;

/// Characters kept of a long word: more than WordPiece's `max_input_chars_per_word` (100)
/// with room for normalization, so a cut word is still one `[UNK]`.
pub const WORD_KEEP: usize = 128;

/// Incremental cutter of one line.
pub struct Shortener {
    budget: usize,
    units: usize,
    word: usize,
    space: bool,
    done: bool,
    out: String,
}

impl Shortener {
    /// A cutter for a model that reads at most `max_tokens` tokens.
    pub fn new(max_tokens: usize) -> Self {
        Shortener {
            budget: max_tokens.saturating_mul(2).saturating_add(8),
            units: 0,
            word: 0,
            space: false,
            done: false,
            out: String::new(),
        }
    }

    /// Whether the rest of the line can no longer change the tokens kept.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Feeds the next piece of the line.
    pub fn push(&mut self, text: &str) {
        for c in text.chars() {
            if self.done {
                return;
            }
            self.push_char(c);
        }
    }

    fn push_char(&mut self, c: char) {
        if is_bert_space(c) {
            self.word = 0;
            if !self.space {
                self.out.push(' ');
                self.space = true;
            }
            return;
        }
        if is_deleted(c) {
            return;
        }
        self.space = false;
        if is_word_char(c) {
            if self.word == 0 && !self.start_unit() {
                return;
            }
            self.word += 1;
            if self.word <= WORD_KEEP {
                self.out.push(c);
            }
            return;
        }
        self.word = 0;
        if self.start_unit() {
            self.out.push(c);
        }
    }

    /// Counts a new word or symbol; false (and done) once the budget is spent.
    fn start_unit(&mut self) -> bool {
        self.units += 1;
        if self.units > self.budget {
            self.done = true;
        }
        !self.done
    }

    /// The kept text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// `text` cut for a model of `max_tokens` tokens (borrowed when nothing needs cutting).
pub fn usable(text: &str, max_tokens: usize) -> Cow<'_, str> {
    // a text of no more bytes than tokens cannot exceed the budget: no copy
    if text.len() <= max_tokens {
        return Cow::Borrowed(text);
    }
    let mut s = Shortener::new(max_tokens);
    s.push(text);
    Cow::Owned(s.finish())
}

/// BERT's whitespace: space, tab, newline, carriage return and the space separators (Zs).
fn is_bert_space(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\n' | '\r' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}' | '\u{202f}' | '\u{205f}' | '\u{3000}'
    )
}

/// What BERT's normalizer deletes: NUL, U+FFFD, control characters (save the whitespace
/// ones) and the common format characters.
fn is_deleted(c: char) -> bool {
    (c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
        || matches!(
            c,
            '\u{fffd}'
                | '\u{ad}'
                | '\u{200b}'..='\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{feff}'
        )
}

/// Characters that continue a word: letters and digits (not CJK ideographs, each of which
/// BERT makes its own token) and combining marks.
fn is_word_char(c: char) -> bool {
    (c.is_alphanumeric() && !is_cjk(c))
        || matches!(c, '\u{300}'..='\u{36f}' | '\u{1ab0}'..='\u{1aff}' | '\u{1dc0}'..='\u{1dff}' | '\u{20d0}'..='\u{20ff}' | '\u{fe20}'..='\u{fe2f}')
}

/// The CJK ideograph blocks BERT's normalizer surrounds with spaces.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}
