//! The README walkthrough runs verbatim: every line of the block after
//! `<!-- walkthrough -->` is executed by bash with the freshly built `kimg` on PATH.

use std::process::Command;

fn walkthrough() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = readme
        .split("<!-- walkthrough -->")
        .nth(1)
        .expect("README has a walkthrough marker");
    let start = after
        .find("```sh\n")
        .expect("a sh block follows the marker")
        + "```sh\n".len();
    let end = after[start..].find("```").expect("the block is closed");
    after[start..start + end].to_string()
}

#[test]
fn the_readme_walkthrough_succeeds_verbatim() {
    let script = walkthrough();
    assert!(script.contains("kimg cluster new prod"), "{script}");
    let tmp = tempfile::tempdir().unwrap();
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_kimg"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(tmp.path())
        .env("PATH", path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "walkthrough failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3 etcd, 3 masters, 3 workers"), "{stdout}");
    assert!(
        stdout.contains("server: https://192.168.202.160:6443"),
        "{stdout}"
    );
    assert!(tmp.path().join("admin.conf").exists());
}
