//! A peer benchmark kept running in its own Python process and driven round by round
//! over its stdin/stdout (one JSON line per answer), so that our encoders and the peers
//! alternate within each round instead of the peers running once after us: both then
//! see the same machine state, and the per-round ratios show how far it moved.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// A running peer script started with `--serve`.
pub struct PeerServer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    script: PathBuf,
    log: PathBuf,
}

impl PeerServer {
    /// Starts `py script args… --serve` and waits for its `ready` line; returns the
    /// server and what the line held (versions, set-up measurements).
    pub fn start(py: &str, script: &Path, args: &[String]) -> Result<(Self, Value)> {
        let log = std::env::temp_dir().join(format!("squeeze-peer-{}.log", std::process::id()));
        let err = std::fs::File::create(&log)
            .with_context(|| format!("creating the peer's log {}", log.display()))?;
        let mut child = Command::new(py)
            .arg(script)
            .args(args)
            .arg("--serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("running {} with {py}", script.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("{}: no pipes to the peer process", script.display());
        };
        let mut s = PeerServer {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            script: script.to_path_buf(),
            log,
        };
        let ready = s.answer("ready")?;
        Ok((s, ready))
    }

    /// Times every peer once more; that round's measurements.
    pub fn round(&mut self) -> Result<Value> {
        writeln!(self.stdin, "round")
            .and_then(|_| self.stdin.flush())
            .with_context(|| format!("{}: the peer process has gone", self.script.display()))?;
        self.answer("round")
    }

    /// The next JSON line holding `key` (other lines, such as a library's notices on
    /// stdout, are skipped); the process's stderr in the error when it ends first.
    fn answer(&mut self, key: &str) -> Result<Value> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                let err = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = err.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "{} ended before its `{key}` answer:\n{}",
                    self.script.display(),
                    tail.join("\n")
                );
            }
            if let Ok(v) = serde_json::from_str::<Value>(line.trim()) {
                if let Some(e) = v.get("error") {
                    bail!("{}: {e}", self.script.display());
                }
                if let Some(a) = v.get(key) {
                    return Ok(a.clone());
                }
            }
        }
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit").and_then(|_| self.stdin.flush());
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A peer that takes its turn after ours in every round of an interleaved timing (no
/// peer: turns do nothing), and what it measured.
pub struct Turns {
    server: Option<(PeerServer, Value)>,
    rounds: Vec<Value>,
}

impl Turns {
    pub fn new(server: Option<(PeerServer, Value)>) -> Self {
        Turns {
            server,
            rounds: Vec::new(),
        }
    }

    /// The peer's turn: one round of its timings (the hook between our rounds).
    pub fn take(&mut self) -> squeeze::Result<()> {
        if let Some((s, _)) = self.server.as_mut() {
            let r = s
                .round()
                .map_err(|e| squeeze::Error::Data(format!("{e:#}")))?;
            self.rounds.push(r);
        }
        Ok(())
    }

    /// Ends the peer process; its record: the median of each measurement over the rounds,
    /// what it announced at set-up, and the rounds themselves.
    pub fn finish(&mut self) -> Option<Value> {
        let (_, ready) = self.server.take()?;
        let mut p = medians(&self.rounds);
        if let Value::Object(fixed) = ready {
            p.extend(fixed);
        }
        p.insert("rounds".into(), Value::from(self.rounds.clone()));
        Some(Value::Object(p))
    }

    /// Ours (one value per round, in round order) over the peer's `key`, round by round:
    /// the ratios' median, min and max.
    pub fn ratio(&self, ours: &[f64], key: &str) -> Option<(f64, f64, f64)> {
        let r: Vec<f64> = ours
            .iter()
            .zip(&self.rounds)
            .filter_map(|(o, p)| p[key].as_f64().map(|p| o / p))
            .collect();
        spread(&r)
    }
}

/// The median of each numeric key over `rounds` (keys missing from a round are skipped).
pub fn medians(rounds: &[Value]) -> serde_json::Map<String, Value> {
    let mut keys: Vec<String> = rounds
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|o| o.keys().cloned())
        .collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let v: Vec<f64> = rounds.iter().filter_map(|r| r[&k].as_f64()).collect();
            spread(&v).map(|(m, _, _)| (k, Value::from(m)))
        })
        .collect()
}

/// Median, min and max of `v`; None when empty.
pub fn spread(v: &[f64]) -> Option<(f64, f64, f64)> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(|a, b| a.total_cmp(b));
    Some((*s.get(s.len() / 2)?, *s.first()?, *s.last()?))
}
