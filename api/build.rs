//! Embeds the web console (`console/assets` and `console/index.html`) in
//! the binary: writes `console_assets.rs`, a table of path and
//! `include_bytes!` of every file, so `/ui` needs no files at run time
//! and what is served is exactly what the repository holds.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let console = manifest.join("../console");
    let mut files = Vec::new();
    let index = console.join("index.html");
    println!("cargo:rerun-if-changed={}", index.display());
    files.push(("index.html".to_string(), index));
    let assets = console.join("assets");
    println!("cargo:rerun-if-changed={}", assets.display());
    collect(&assets, "assets", &mut files);
    files.sort();

    let mut table = String::from("&[\n");
    for (path, file) in &files {
        println!("cargo:rerun-if-changed={}", file.display());
        let _ = writeln!(
            table,
            "    ({path:?}, include_bytes!({:?})),",
            file.display().to_string()
        );
    }
    table.push(']');
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    std::fs::write(out.join("console_assets.rs"), table).expect("OUT_DIR is writable");
}

fn collect(dir: &Path, prefix: &str, files: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let served = format!("{prefix}/{name}");
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect(&path, &served, files);
        } else {
            files.push((served, path));
        }
    }
}
