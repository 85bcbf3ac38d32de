//! Keeps the tree honest: every Rust file says what it is for and is named in the codemap
//! (docs/ARCHITECTURE.md), and no stray markers remain.

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

/// The part of the codemap about the crate in `dir` (`xtask`, `services/tasks`): its `###`
/// section, or its item in a list.
fn codemap_part<'m>(map: &'m str, dir: &str) -> Option<&'m str> {
    if let Some(start) = map.find(&format!("### `{dir}/`")) {
        let rest = &map[start + 1..];
        return Some(&map[start..start + 1 + rest.find("\n### ").unwrap_or(rest.len())]);
    }
    let start = map.find(&format!("\n- `{dir}/`"))? + 1;
    let rest = &map[start..];
    let end = ["\n- `", "\n**", "\n### "].iter().filter_map(|next| rest.find(next)).min().unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Whether `text` names `path` as a whole (`job.rs` is not named by `tests/job.rs` or
/// `my_job.rs`).
fn names(text: &str, path: &str) -> bool {
    text.match_indices(path).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + path.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '/')
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

#[test]
fn names_needs_the_whole_path() {
    assert!(names("`tests/job.rs` and `job.rs`", "job.rs"));
    assert!(!names("`tests/job.rs` and `my_job.rs`", "job.rs"));
    assert!(names("`tests/job.rs`", "tests/job.rs"));
}

/// Every source file is named in the codemap, by its path below its crate (`src/` left out),
/// in the part about that crate.
#[test]
fn every_source_file_is_named_in_the_codemap() {
    let root = crate::workspace::root();
    let text = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let map = &text[text.find("## Code map").expect("a codemap")..];
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let unnamed: Vec<String> = files
        .iter()
        .map(|path| path.strip_prefix(&root).unwrap().to_string_lossy().into_owned())
        .filter(|file| {
            let depth = if file.starts_with("services/") { 2 } else { 1 };
            let mut parts = file.splitn(depth + 1, '/');
            let dir: Vec<&str> = parts.by_ref().take(depth).collect();
            let inside = parts.next().unwrap_or_default();
            let inside = inside.strip_prefix("src/").unwrap_or(inside);
            !codemap_part(map, &dir.join("/")).is_some_and(|part| names(part, inside))
        })
        .collect();
    assert!(unnamed.is_empty(), "not named in docs/ARCHITECTURE.md's codemap, in their crate's part: {unnamed:?}");
}
