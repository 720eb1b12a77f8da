//! `scripts/setup-host` checks again after installing. Under a fake `dpkg-query` and
//! `apt-get` on PATH (a package database in a temporary file), an install that removes a
//! package that was there — as Debian's `qemu-system-x86` removes a backports
//! `qemu-utils` — is noticed: the script installs it again, and if that does not bring it
//! back, names it and exits non-zero.

use std::path::Path;
use std::process::{Command, Output};

/// Writes the fakes into `bin`. `apt-get install` marks its arguments installed, except
/// that installing `qemu-system-x86` removes `qemu-utils`; installing `qemu-utils` on its
/// own succeeds only when `reinstall_works`.
fn write_fakes(bin: &Path, db: &Path, reinstall_works: bool) {
    let dpkg_query = format!(
        r#"#!/bin/bash
# dpkg-query -W -f=FORMAT PACKAGE
pkg="${{@: -1}}"
if grep -qx "$pkg" "{db}"; then printf 'install ok installed'; else exit 1; fi
"#,
        db = db.display()
    );
    let apt_get = format!(
        r#"#!/bin/bash
db="{db}"
[ "$1" = update ] && exit 0
shift
pkgs=()
for a in "$@"; do case "$a" in -*) ;; *) pkgs+=("$a");; esac; done
if [ "${{#pkgs[@]}}" = 1 ] && [ "${{pkgs[0]}}" = qemu-utils ] && [ {works} = 0 ]; then
  echo "E: qemu-utils : Depends: something held back" >&2; exit 100
fi
printf '%s\n' "${{pkgs[@]}}" >> "$db"
for p in "${{pkgs[@]}}"; do
  if [ "$p" = qemu-system-x86 ]; then grep -vx qemu-utils "$db" > "$db.new"; mv "$db.new" "$db"; fi
done
"#,
        db = db.display(),
        works = u8::from(reinstall_works)
    );
    for (name, text) in [
        ("dpkg-query", dpkg_query),
        ("apt-get", apt_get),
        ("sudo", "#!/bin/bash\nexec \"$@\"\n".to_string()),
    ] {
        let path = bin.join(name);
        std::fs::write(&path, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn run_setup_host(reinstall_works: bool) -> (Output, String) {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let db = tmp.path().join("installed");
    // Everything is installed but the emulator, and a backports qemu-utils is there.
    std::fs::write(&db, "").unwrap();
    write_fakes(&bin, &db, reinstall_works);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/setup-host");
    let wanted = std::fs::read_to_string(script).unwrap();
    let packages: Vec<&str> = wanted
        .lines()
        .skip_while(|l| !l.starts_with("build_pkgs=("))
        .take_while(|l| !l.starts_with("build_needs=("))
        .filter(|l| !l.contains("=(") && !l.starts_with(')'))
        .flat_map(|l| l.split('#').next().unwrap_or("").split_whitespace())
        .filter(|p| *p != "qemu-system-x86")
        .collect();
    assert!(packages.contains(&"qemu-utils"), "{packages:?}");
    assert!(packages.contains(&"libprotobuf-dev"), "{packages:?}");
    std::fs::write(&db, packages.join("\n") + "\n").unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(script)
        .env("PATH", path)
        .output()
        .unwrap();
    let db_after = std::fs::read_to_string(&db).unwrap();
    (out, db_after)
}

#[test]
fn a_package_that_vanishes_during_the_install_is_named_and_fails_the_setup() {
    let (out, db) = run_setup_host(false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("installing qemu-system-x86"),
        "the missing emulator is installed: {stderr}"
    );
    assert!(
        stderr.contains("removed or skipped qemu-utils; installing again"),
        "{stderr}"
    );
    assert!(
        stderr.contains("package qemu-utils is not installed (apt-get install qemu-utils)"),
        "{stderr}"
    );
    assert!(!stderr.contains("all set"), "{stderr}");
    assert!(!db.lines().any(|l| l == "qemu-utils"), "{db}");
}

#[test]
fn a_vanished_package_that_installs_again_is_put_back() {
    let (out, db) = run_setup_host(true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("removed or skipped qemu-utils; installing again"),
        "{stderr}"
    );
    assert!(db.lines().any(|l| l == "qemu-utils"), "{db}");
    // The rest of the check looks at the real machine's programs and files, which the
    // test command's own `scripts/setup-host` has installed.
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("setup-host: all set"), "{stderr}");
}
