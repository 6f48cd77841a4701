//! The command line a result file records (`command`, `measured_by`): this process's
//! arguments as one line a POSIX shell reads back into the same arguments, so that
//! anyone can rerun it as written — an argument with spaces (`--made-by "squeeze
//! compress …"`) or shell characters is quoted.

/// This process's command line, each argument quoted where the shell would split or
/// expand it.
pub(crate) fn invocation() -> String {
    line(std::env::args())
}

/// `args` as one shell line.
pub(crate) fn line(args: impl IntoIterator<Item = String>) -> String {
    args.into_iter()
        .map(|a| quoted(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `a` as it stands, or in single quotes (an inner `'` written `'\''`).
fn quoted(a: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./=:,@%+".contains(c);
    if !a.is_empty() && a.chars().all(plain) {
        return a.to_string();
    }
    format!("'{}'", a.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_the_shell_would_split_or_expand_are_quoted() {
        let args = [
            "./target/release/squeeze",
            "bench",
            "--made-by",
            "squeeze compress zoo/vgg --out runs/q",
            "--key=vgg-int8",
            "it's",
            "",
            "a*b",
        ];
        assert_eq!(
            line(args.iter().map(|s| s.to_string())),
            "./target/release/squeeze bench --made-by 'squeeze compress zoo/vgg --out runs/q' \
             --key=vgg-int8 'it'\\''s' '' 'a*b'"
        );
    }
}
