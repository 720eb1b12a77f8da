{
  description = "kimg: bootable, immutable Kubernetes machine images that assemble themselves";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = import nixpkgs { inherit system; };
      lib = pkgs.lib;

      kimg = pkgs.rustPlatform.buildRustPackage {
        pname = "kimg";
        version = "0.1.0";
        src = lib.cleanSource ./.;
        cargoLock.lockFile = ./Cargo.lock;
        nativeBuildInputs = [ pkgs.protobuf pkgs.pkg-config ];
        buildInputs = [ pkgs.glibc.static ];
        PROTOC = "${pkgs.protobuf}/bin/protoc";
        doCheck = false;
      };

      # Every file in qemu-tests/scenarios is a check: `nix flake check` boots the same
      # clusters CI does. The runner needs root, network namespaces and the Debian package
      # registry, so these checks run on a builder with the `kimg-qemu` system feature
      # (sandbox off, root); CI runs the same scenarios through scripts/test.
      scenarioNames = map (f: lib.removeSuffix ".toml" f)
        (builtins.attrNames (lib.filterAttrs (n: t: t == "regular" && lib.hasSuffix ".toml" n)
          (builtins.readDir ./qemu-tests/scenarios)));
      scenarioCheck = name: pkgs.runCommand "qemu-${name}" {
        requiredSystemFeatures = [ "kimg-qemu" ];
        __noChroot = true;
        nativeBuildInputs = [ pkgs.cargo pkgs.rustc pkgs.qemu pkgs.iproute2 pkgs.etcd pkgs.protobuf pkgs.dnsmasq pkgs.kubectl pkgs.curl pkgs.python3 ];
      } ''
        cp -r ${./.} src && chmod -R u+w src && cd src
        KIMG=${kimg}/bin/kimg qemu-tests/run ${name}
        touch $out
      '';
    in {
      packages.${system}.default = kimg;
      checks.${system} = lib.genAttrs scenarioNames scenarioCheck;
      devShells.${system}.default = pkgs.mkShell {
        inputsFrom = [ kimg ];
        packages = [ pkgs.qemu pkgs.OVMF pkgs.etcd pkgs.kubectl pkgs.containerd pkgs.runc pkgs.rust-analyzer ];
      };
    };
}
