//! Embeds the web console's built assets (`console/dist`, made by `scripts/console build`)
//! into the crate: writes `$OUT_DIR/console_assets.rs`, a list of `(path, bytes)` that
//! `include_bytes!` the files. Without a build the list is empty and `/ui/` says how to
//! make one, so the crate still builds without Node.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let console = manifest_dir.join("../../console");
    let dist = console.join("dist");
    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        println!("cargo:rerun-if-changed={}", dist.display());
        collect(&dist, &dist, &mut files);
        files.sort();
    } else {
        // Nothing built yet: notice when a build appears. Watching the console's folder
        // (not the missing `dist`, which would rerun this script on every build).
        println!("cargo:rerun-if-changed={}", console.display());
    }
    let mut out = String::from("/// Built console files, by path relative to `console/dist`.\n");
    out.push_str("pub(crate) static ASSETS: &[(&str, &[u8])] = &[\n");
    for (relative, path) in &files {
        writeln!(
            out,
            "    ({relative:?}, include_bytes!({:?})),",
            path.display().to_string()
        )
        .expect("write to a String");
    }
    out.push_str("];\n");
    let target = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"))
        .join("console_assets.rs");
    std::fs::write(target, out).expect("write console_assets.rs");
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let entries = std::fs::read_dir(dir).expect("read console/dist");
    for entry in entries {
        let path = entry.expect("read console/dist").path();
        if path.is_dir() {
            collect(root, &path, files);
        } else {
            let relative = path
                .strip_prefix(root)
                .expect("under dist")
                .to_string_lossy()
                .replace('\\', "/");
            let absolute = path.canonicalize().expect("canonical path");
            files.push((relative, absolute));
        }
    }
}
