//! Embeds STS-B sentences one at a time in a loop, for profiling the batch-1 path:
//! `cargo run --release --example latency -- models/all-MiniLM-L6-v2 data/stsb/sts-dev.csv 500`
//! (`perf record` it to see where a sentence's milliseconds go).

fn main() -> squeeze::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (dir, data) = (&args[1], &args[2]);
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(500);
    let model = squeeze::formats::load_any(std::path::Path::new(dir))?;
    let enc = squeeze::text::Encoder::new(&model)?;
    let pairs = squeeze::text::stsb::read(std::path::Path::new(data))?;
    let texts: Vec<&str> = pairs.iter().map(|p| p.a.as_str()).take(n).collect();
    let ms = enc.latency_b1(&texts)?;
    println!(
        "median batch-1 latency over {} sentences: {ms:.3} ms",
        texts.len()
    );
    Ok(())
}
