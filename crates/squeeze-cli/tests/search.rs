//! `squeeze search` end to end on the committed `zoo/mlp`: a budget it meets writes the
//! searched and uniform candidates with recipes that `squeeze compress` reproduces; a
//! budget no candidate meets fails naming the closest candidate, which is kept; a second
//! budget reuses the cached scan; bad budgets are refused naming the flag.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::have_data;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("squeeze-search-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_squeeze"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

fn params(dir: &Path) -> u64 {
    let (ok, out) = run(&["eval", dir.to_str().unwrap(), "--json"]);
    assert!(ok, "{out}");
    let start = out.find('{').unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&out[start..out.rfind('}').unwrap() + 1]).unwrap();
    v["params"].as_u64().unwrap()
}

/// `squeeze search zoo/mlp --recipe RECIPE --budget BUDGET --out OUT` plus `extra`.
fn search(recipe: &Path, budget: &str, out: &Path, extra: &[&str]) -> (bool, String) {
    let (recipe, out) = (recipe.to_str().unwrap(), out.to_str().unwrap());
    let mut args = vec![
        "search", "zoo/mlp", "--recipe", recipe, "--budget", budget, "--out", out,
    ];
    args.extend(extra);
    run(&args)
}

/// A template recipe without fine-tuning (the candidates are the applied ratios).
fn template(d: &Path) -> PathBuf {
    let r = d.join("template.toml");
    std::fs::write(&r, "[[passes]]\ntype = \"low_rank\"\nkeep = 0.5\n").unwrap();
    r
}

#[test]
fn search_meets_a_params_budget_and_its_recipe_reproduces_the_candidate() {
    if !have_data() {
        return;
    }
    let d = tmp("meet");
    let (recipe, cache, out) = (template(&d), d.join("cache"), d.join("out"));
    let cache = cache.to_str().unwrap();
    let extra = ["--ratios", "0.2,0.5", "--cache", cache];
    let (ok, text) = search(&recipe, "params=0.7", &out, &extra);
    assert!(ok, "{text}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("search.json")).unwrap()).unwrap();
    let base = params(&root().join("zoo/mlp")) as f64;
    for c in ["searched", "uniform"] {
        let dir = out.join(c);
        assert!(dir.join("recipe.toml").exists(), "{c}: no recipe");
        let kept = params(&dir) as f64 / base;
        assert!(kept <= 0.7, "{c}: {kept} of the parameters kept");
        let again = d.join(format!("{c}-again"));
        let (ok, text) = run(&[
            "compress",
            "zoo/mlp",
            "--recipe",
            dir.join("recipe.toml").to_str().unwrap(),
            "--out",
            again.to_str().unwrap(),
            "--rounds",
            "0",
        ]);
        assert!(ok, "{text}");
        assert_eq!(
            params(&again),
            params(&dir),
            "{c}: compress does not reproduce it"
        );
    }
    for f in [
        "scan.json",
        "search.md",
        "scan.svg",
        "tradeoff.svg",
        "recipe.toml",
    ] {
        assert!(out.join(f).exists(), "no {f}");
    }
    assert!(report["best"].is_string(), "{report}");
    // a second budget reuses the scan: its points are not recomputed
    let out2 = d.join("out2");
    let (ok, text) = search(&recipe, "params=0.5", &out2, &extra);
    assert!(ok, "{text}");
    let scan = |o: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(o.join("scan.json")).unwrap()).unwrap()
    };
    assert_eq!(
        scan(&out)["seconds"],
        scan(&out2)["seconds"],
        "the second budget rescanned"
    );
}

#[test]
fn a_budget_no_candidate_meets_names_the_closest_which_is_kept() {
    if !have_data() {
        return;
    }
    let d = tmp("miss");
    let (recipe, out) = (template(&d), d.join("out"));
    let cache = d.join("cache");
    let extra = ["--ratios", "0.5", "--cache", cache.to_str().unwrap()];
    let (ok, text) = search(&recipe, "params=0.005", &out, &extra);
    assert!(
        !ok && text.contains("no candidate meets") && text.contains("closest"),
        "{text}"
    );
    assert!(
        out.join("closest").join("recipe.toml").exists(),
        "the closest candidate was not kept"
    );
}

#[test]
fn bad_budgets_and_templates_are_refused() {
    let d = tmp("bad");
    let recipe = template(&d);
    for (budget, want) in [
        ("size=0.5", "unknown budget kind"),
        ("flops=0", "(0, 1)"),
        ("flops=1.5", "(0, 1)"),
    ] {
        let (ok, text) = search(&recipe, budget, &d.join("o"), &[]);
        assert!(
            !ok && text.contains("--budget") && text.contains(want),
            "{budget}: {text}"
        );
    }
    let fold = d.join("fold.toml");
    std::fs::write(&fold, "[[passes]]\ntype = \"fold_batch_norm\"\n").unwrap();
    let (ok, text) = search(&fold, "flops=0.5", &d.join("o"), &[]);
    assert!(
        !ok && text.contains("template") && text.contains("fold.toml"),
        "{text}"
    );
}
