# STAND-IN, NOT NIXPKGS. Evaluation only: nothing defined here builds.
#
# scripts/check-flake evaluates the repository's flake.nix without the network by passing
# `--override-input nixpkgs path:./nix/stand-in-nixpkgs`. This flake offers exactly the
# access pattern flake.nix uses (`import nixpkgs { inherit system; }`, via ./default.nix)
# and only the handful of functions and package names it references. Every derivation is
# a plain `derivation { builder = "/bin/sh"; ... }` whose builder prints an error and
# exits 1, so `nix flake check --no-build` gets real .drv paths (catching typos, wrong
# attribute names, unparsable lock files, a missing check per scenario) while any attempt
# to build one fails loudly instead of faking a result. Only fetchurl is faithful enough
# to matter: it is a fixed-output derivation with the same name/hash as nixpkgs', so its
# output path equals the real one.
{
  description = "Evaluation-only stand-in for the few nixpkgs attributes kimg's flake.nix uses";

  outputs = { self }: {
    legacyPackages.x86_64-linux = import ./default.nix { system = "x86_64-linux"; };
    lib = (import ./default.nix { system = "x86_64-linux"; }).lib;
  };
}
