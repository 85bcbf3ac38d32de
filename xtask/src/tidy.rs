//! Keeps the tree honest: every Rust file says what it is for, and no stray markers remain.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if path.is_dir() && !name.starts_with('.') && name != "target" {
            rust_files(&path, found);
        } else if name.ends_with(".rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_rust_file_starts_with_a_doc_comment() {
    let mut files = Vec::new();
    rust_files(&crate::workspace::root(), &mut files);
    assert!(files.len() > 10, "found the sources: {files:?}");
    let undocumented: Vec<_> =
        files.iter().filter(|path| !std::fs::read_to_string(path).unwrap().starts_with("//!")).collect();
    assert!(undocumented.is_empty(), "files without a leading //! comment: {undocumented:?}");
}

#[test]
fn no_unfinished_work_markers() {
    let mut files = Vec::new();
    rust_files(&crate::workspace::root(), &mut files);
    let markers = [concat!("TO", "DO"), concat!("FIX", "ME"), concat!("todo", "!(")];
    let marked: Vec<_> = files
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            markers.iter().any(|marker| text.contains(marker))
        })
        .collect();
    assert!(marked.is_empty(), "unfinished work in: {marked:?}");
}
