//! `docs/ARCHITECTURE.md` is the map the module docs cite ("docs/ARCHITECTURE.md §N"): every
//! cited section exists, and every folder under `src/` has a row in its table.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_section_the_code_cites_exists_and_every_component_is_on_the_map() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut cited = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (i, _) in text.match_indices("ARCHITECTURE") {
            let rest = &text[i..];
            let line = rest.lines().next().unwrap_or_default();
            assert!(
                line.starts_with("ARCHITECTURE.md"),
                "{}: cite the file as docs/ARCHITECTURE.md: {line}",
                f.display()
            );
            for part in line.split('§').skip(1) {
                let n: String = part.chars().take_while(|c| c.is_ascii_digit()).collect();
                assert!(!n.is_empty(), "{}: {line}", f.display());
                assert!(
                    doc.contains(&format!("\n## {n}. ")),
                    "{} cites §{n}, which docs/ARCHITECTURE.md lacks",
                    f.display()
                );
                cited += 1;
            }
        }
    }
    assert!(cited >= 10, "only {cited} citations found");
    for e in std::fs::read_dir(root.join("src")).unwrap().flatten() {
        if e.path().is_dir() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                doc.contains(&format!("| `{name}/` |")),
                "src/{name}/ has no row in docs/ARCHITECTURE.md"
            );
        }
    }
}
