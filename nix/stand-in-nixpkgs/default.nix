# STAND-IN, NOT NIXPKGS (see flake.nix). `import <this> { system = ...; }` returns the few
# attributes kimg's flake.nix references; every derivation is evaluation-only: its
# builder fails on purpose, so nothing can be mistaken for a real build.
{ system ? "x86_64-linux", config ? { }, overlays ? [ ], ... }:
let
  lib = import ./lib.nix;
  b = builtins;

  refuse = what: [ "-c" "echo 'stand-in nixpkgs (nix/stand-in-nixpkgs): ${what} is evaluation-only and cannot be built' >&2; exit 1" ];

  # `derivation` takes strings, paths, derivations and lists of those; drop the rest
  # (attrsets, functions) the way stdenv.mkDerivation would turn them into something else.
  envOf = attrs: lib.filterAttrs (n: v: !(b.isAttrs v && !(v ? outPath)) && !(b.isFunction v) && v != null) attrs;

  mkDrv = name: attrs: derivation (envOf attrs // {
    inherit name system;
    builder = "/bin/sh";
    args = refuse name;
  });

  # A package nixpkgs would provide: just a named placeholder with a `bin/` in its path.
  pkg = name: mkDrv "stand-in-${name}" { };

  runCommand = name: env: buildCommand: mkDrv name (env // { inherit buildCommand; });

  fetchurl = { url ? null, urls ? [ ], sha256 ? null, hash ? null, name ? null, ... }:
    let
      allUrls = (lib.optional (url != null) url) ++ urls;
      first = b.head allUrls;
    in
      assert allUrls != [ ];
      assert sha256 != null || hash != null;
      derivation {
        name = if name != null then name else b.baseNameOf first;
        inherit system;
        builder = "/bin/sh";
        args = refuse "fetchurl ${first}";
        urls = allUrls;
        outputHashMode = "flat";
        outputHashAlgo = if hash != null then "" else "sha256";
        outputHash = if hash != null then hash else sha256;
        preferLocalBuild = true;
      };

  buildRustPackage = { pname, version, src, cargoLock ? null, cargoHash ? null, ... }@args:
    assert cargoLock != null || cargoHash != null;
    let
      # Like nixpkgs' importCargoLock, read Cargo.lock at evaluation time: a missing or
      # unparsable lock is an evaluation error here as well.
      lock = b.fromTOML (b.readFile cargoLock.lockFile);
      crates = b.filter (p: p ? source) lock.package;
    in
      mkDrv "${pname}-${version}" (b.removeAttrs args [ "cargoLock" ] // {
        cargoLockFile = cargoLock.lockFile;
        cargoLockCrates = toString (b.length crates);
      });

  mkShell = { name ? "nix-shell", packages ? [ ], inputsFrom ? [ ], ... }@args:
    mkDrv name (b.removeAttrs args [ "name" ]);

  glibc = pkg "glibc" // { static = pkg "glibc-static"; };
in
{
  inherit lib runCommand fetchurl mkShell glibc;
  rustPlatform = { inherit buildRustPackage; };
  stdenv = { hostPlatform = { inherit system; }; };
  runtimeShell = "${pkg "bash"}/bin/bash";
}
// lib.genAttrs [
  "bash" "coreutils" "cargo" "rustc" "rust-analyzer" "protobuf" "pkg-config" "qemu" "OVMF"
  "iproute2" "etcd" "dnsmasq" "kubectl" "curl" "python3" "e2fsprogs" "util-linux"
  "containerd" "runc" "gnupg" "cpio" "gnugrep" "gnused" "findutils" "procps" "iptables"
  "nftables" "busybox" "dpkg"
] pkg
