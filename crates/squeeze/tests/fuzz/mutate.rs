//! Structure-aware mutations, each kind drawn uniformly from a well-mixed generator
//! (SplitMix64): raw byte edits (flip, set, truncate, insert, delete, duplicate) for any
//! file; tree edits (absurd numbers, strings, wrong types, deleted and unknown keys,
//! array length changes) for JSON and TOML, applied to the parsed document and written
//! back; and for safetensors, edits of the JSON header re-encoded with a correct length
//! prefix, or of the data bytes — so no mutant is refused merely for a garbled prefix.

/// SplitMix64: every output well mixed, whatever the seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Numbers that break naive size, index or range arithmetic.
const ABSURD: &[f64] = &[
    0.0,
    -1.0,
    1.0,
    2.0,
    3.0,
    0.5,
    -0.5,
    1e300,
    -1e300,
    1e-300,
    4294967295.0,
    4294967296.0,
    2147483648.0,
    9.2e18,
    1.8446744073709552e19,
    99999999999.0,
    65536.0,
    3e38,
    1e19,
    255.0,
];

/// Strings a loader might dispatch on.
const STRINGS: &[&str] = &[
    "",
    "relu",
    "linear",
    "conv2d",
    "batch_norm",
    "flatten",
    "qlinear",
    "F32",
    "F16",
    "U8",
    "I64",
    "U32",
    "bert",
    "gelu",
    "int8",
    "int4",
    "channel",
    "group",
    "csr",
    "shared",
    "huffman",
    "magnitude",
    "quantize",
    "materialize",
    "absolute",
    "x",
    "a_very_long_name_that_matches_nothing_at_all_and_keeps_going",
];

/// A mutant and the kind of edit that made it.
pub type Mutant = (Vec<u8>, &'static str);

/// The class of a strict truncation that cut at least one byte other than whitespace:
/// such a file can never be whole, so every loader must refuse it.
pub const TRUNCATED: &str = "truncate";

/// A byte-level mutant of `b`.
pub fn bytes(b: &[u8], r: &mut Rng) -> Mutant {
    let mut m = b.to_vec();
    let n = m.len();
    let class = match r.below(6) {
        0 if n > 0 => {
            let i = r.below(n);
            m[i] ^= 1 << r.below(8);
            "flip"
        }
        1 if n > 0 => {
            let i = r.below(n);
            m[i] = [0u8, 0xff, 0x7f, 0x80, b'9', b'-', b'"', b'{'][r.below(8)];
            "set"
        }
        2 if n > 0 => {
            let at = r.below(n); // strictly shorter
            let cut_text = m[at..].iter().any(|c| !c.is_ascii_whitespace());
            m.truncate(at);
            if cut_text {
                TRUNCATED
            } else {
                "truncate-whitespace"
            }
        }
        3 => {
            let at = r.below(n + 1);
            let k = 1 + r.below(16);
            let ins: Vec<u8> = (0..k).map(|_| r.next() as u8).collect();
            m.splice(at..at, ins);
            "insert"
        }
        4 if n > 0 => {
            let a = r.below(n);
            let e = (a + 1 + r.below(64)).min(n);
            m.drain(a..e);
            "delete"
        }
        _ if n > 0 => {
            let a = r.below(n);
            let e = (a + 1 + r.below(64)).min(n);
            let dup = m[a..e].to_vec();
            m.splice(e..e, dup);
            "duplicate"
        }
        _ => {
            m.push(0);
            "append"
        }
    };
    (m, class)
}

/// Paths to every value of a JSON tree (keys and indices).
fn json_paths(v: &serde_json::Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(at.clone());
    match v {
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                at.push(k.clone());
                json_paths(x, at, out);
                at.pop();
            }
        }
        serde_json::Value::Array(a) => {
            // long arrays (vocabularies, merges): a few positions are enough
            for i in (0..a.len())
                .take(8)
                .chain(a.len().saturating_sub(2)..a.len())
            {
                at.push(i.to_string());
                json_paths(&a[i], at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn json_at<'a>(v: &'a mut serde_json::Value, path: &[String]) -> &'a mut serde_json::Value {
    path.iter().fold(v, |v, k| match v {
        serde_json::Value::Object(o) => o.get_mut(k).expect("path from the tree"),
        serde_json::Value::Array(a) => &mut a[k.parse::<usize>().expect("index")],
        _ => unreachable!("paths end at leaves"),
    })
}

/// A tree-level mutant of JSON text (byte-level when it does not parse).
pub fn json(text: &[u8], r: &mut Rng) -> Mutant {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(text) else {
        return bytes(text, r);
    };
    let mut paths = Vec::new();
    json_paths(&v, &mut Vec::new(), &mut paths);
    let path = paths[r.below(paths.len())].clone();
    let (parent, last) = path.split_at(path.len().saturating_sub(1));
    let choice = r.below(8);
    let node = json_at(&mut v, &path);
    let class = match choice {
        0 => {
            *node = serde_json::json!(ABSURD[r.below(ABSURD.len())]);
            "tree-number"
        }
        1 => {
            *node = serde_json::json!(ABSURD[r.below(ABSURD.len())] as i64);
            "tree-integer"
        }
        2 => {
            *node = serde_json::json!(STRINGS[r.below(STRINGS.len())]);
            "tree-string"
        }
        3 => {
            *node = [
                serde_json::Value::Null,
                serde_json::json!([]),
                serde_json::json!({}),
                serde_json::json!(true),
            ][r.below(4)]
            .clone();
            "tree-type"
        }
        4 => {
            match node {
                serde_json::Value::Object(o) => {
                    o.insert("unknown_field".into(), serde_json::json!(1));
                }
                serde_json::Value::Array(a) if !a.is_empty() => {
                    let i = r.below(a.len());
                    let x = a[i].clone();
                    a.insert(i, x);
                }
                _ => *node = serde_json::json!(-1),
            }
            "tree-grow"
        }
        5 => {
            match node {
                serde_json::Value::Array(a) if !a.is_empty() => {
                    a.remove(r.below(a.len()));
                }
                serde_json::Value::Object(o) if !o.is_empty() => {
                    let k = o.keys().nth(r.below(o.len())).cloned().expect("non-empty");
                    o.remove(&k);
                }
                _ => *node = serde_json::Value::Null,
            }
            "tree-shrink"
        }
        6 if !last.is_empty() => {
            // delete this key / element from its parent
            match json_at(&mut v, parent) {
                serde_json::Value::Object(o) => {
                    o.remove(&last[0]);
                }
                serde_json::Value::Array(a) => {
                    a.remove(last[0].parse::<usize>().expect("index"));
                }
                _ => {}
            }
            "tree-delete"
        }
        _ => return bytes(text, r),
    };
    (
        serde_json::to_vec(&v).expect("a JSON value serializes"),
        class,
    )
}

/// A tree-level mutant of TOML text, through its JSON form (byte-level when it does not
/// parse or the mutant has no TOML form).
pub fn toml(text: &[u8], r: &mut Rng) -> Mutant {
    let parsed = std::str::from_utf8(text)
        .ok()
        .and_then(|s| toml::from_str::<toml::Value>(s).ok())
        .and_then(|t| serde_json::to_vec(&t).ok());
    let Some(js) = parsed else {
        return bytes(text, r);
    };
    let (m, class) = json(&js, r);
    serde_json::from_slice::<toml::Value>(&m)
        .ok()
        .and_then(|t| toml::to_string(&t).ok())
        .map(|t| (t.into_bytes(), class))
        .unwrap_or_else(|| bytes(text, r))
}

/// A mutant of a safetensors file: its JSON header edited and re-encoded with the right
/// length prefix (half the time), or its bytes.
pub fn safetensors(b: &[u8], r: &mut Rng) -> Mutant {
    if b.len() < 8 || r.below(2) == 0 {
        return bytes(b, r);
    }
    let n = u64::from_le_bytes(b[..8].try_into().expect("8 bytes")) as usize;
    if 8 + n > b.len() {
        return bytes(b, r);
    }
    let (header, class) = json(&b[8..8 + n], r);
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(&b[8 + n..]);
    // a cut JSON header re-encoded with its new length is a whole file of another header
    let class = if class == TRUNCATED {
        "header-truncate"
    } else {
        class
    };
    (out, class)
}

/// A mutant of tab-separated text: a line deleted or duplicated, a field replaced by an
/// absurd number or emptied, a tab removed — or a byte edit.
pub fn tsv(text: &[u8], r: &mut Rng) -> Mutant {
    let Ok(s) = std::str::from_utf8(text) else {
        return bytes(text, r);
    };
    let mut lines: Vec<String> = s.lines().map(String::from).collect();
    if lines.is_empty() {
        return bytes(text, r);
    }
    let i = r.below(lines.len());
    let class = match r.below(5) {
        0 => {
            lines.remove(i);
            "line-delete"
        }
        1 => {
            let l = lines[i].clone();
            lines.insert(i, l);
            "line-duplicate"
        }
        2 | 3 => {
            let mut cols: Vec<String> = lines[i].split('\t').map(String::from).collect();
            let c = r.below(cols.len());
            cols[c] = if r.below(2) == 0 {
                format!("{}", ABSURD[r.below(ABSURD.len())])
            } else {
                String::new()
            };
            lines[i] = cols.join("\t");
            "field"
        }
        _ => return bytes(text, r),
    };
    (lines.join("\n").into_bytes(), class)
}
