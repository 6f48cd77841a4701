//! What a command says after SIGINT/SIGTERM stopped a training loop (see
//! [`crate::cleanup`]: the first signal during training asks the loop to stop before its
//! next step, and the run saves a resumable checkpoint, mid-epoch with its data-order
//! position): the exact `--resume` command for `train` and `distill`, or that nothing was
//! written for the others; exit status 130, as a shell reports SIGINT.

/// The exit status and message for an error after a stop request: how to resume a
/// training command, or that nothing was written for the others.
pub fn report(err: &anyhow::Error, resumable: bool) -> Option<(i32, String)> {
    if !squeeze::train::stop_requested() {
        return None;
    }
    let args: Vec<String> = std::env::args().collect();
    let msg = if resumable {
        let mut cmd = args.clone();
        if !cmd.iter().any(|a| a == "--resume") {
            cmd.push("--resume".into());
        }
        let cmd = crate::invocation::line(cmd);
        format!("interrupted: {err:#}\ncontinue with:\n  {cmd}")
    } else {
        // its fine-tuning checkpoints lived in a scratch directory, removed with the output
        let full = format!("{err:#}");
        let place = full
            .split(": a resumable checkpoint")
            .next()
            .unwrap_or(&full);
        format!(
            "interrupted: {place}\nnothing was written; `{}` starts again from the beginning \
             when rerun",
            args.get(1).map_or("squeeze", String::as_str)
        )
    };
    Some((130, msg))
}
