# STAND-IN, NOT NIXPKGS (see flake.nix): minimal versions of the nixpkgs `lib` functions
# kimg's flake.nix uses, same names and argument order, nothing else.
let
  b = builtins;
in rec {
  hasPrefix = pre: s: b.substring 0 (b.stringLength pre) s == pre;
  hasSuffix = suf: s:
    let ls = b.stringLength s; lf = b.stringLength suf;
    in ls >= lf && b.substring (ls - lf) lf s == suf;
  removeSuffix = suf: s:
    if hasSuffix suf s then b.substring 0 (b.stringLength s - b.stringLength suf) s else s;
  removePrefix = pre: s:
    if hasPrefix pre s then b.substring (b.stringLength pre) (b.stringLength s) s else s;

  concatStrings = b.concatStringsSep "";
  concatStringsSep = b.concatStringsSep;
  concatMapStrings = f: l: concatStrings (map f l);
  concatMapStringsSep = sep: f: l: b.concatStringsSep sep (map f l);
  escapeShellArg = s: "'${b.replaceStrings [ "'" ] [ "'\\''" ] (toString s)}'";
  escapeShellArgs = l: b.concatStringsSep " " (map escapeShellArg l);
  makeBinPath = l: b.concatStringsSep ":" (map (p: "${p}/bin") l);

  optional = c: x: if c then [ x ] else [ ];
  optionals = c: l: if c then l else [ ];
  unique = l: b.foldl' (acc: x: if b.elem x acc then acc else acc ++ [ x ]) [ ] l;

  filterAttrs = pred: set:
    b.listToAttrs (b.concatMap
      (n: if pred n set.${n} then [ { name = n; value = set.${n}; } ] else [ ])
      (b.attrNames set));
  mapAttrs = b.mapAttrs;
  attrValues = b.attrValues;
  genAttrs = names: f: b.listToAttrs (map (n: { name = n; value = f n; }) names);
  nameValuePair = name: value: { inherit name value; };

  # nixpkgs' cleanSource drops VCS directories, editor backups, `result` links and the
  # like; this keeps the same contract (a filtered copy named "source").
  cleanSource = src: b.path {
    path = src;
    name = "source";
    filter = name: type:
      let base = b.baseNameOf (toString name);
      in !(
        (type == "directory" && b.elem base [ ".git" ".svn" ".hg" "CVS" ])
        || hasSuffix "~" base
        || b.match "^\\.sw[a-z]$" base != null
        || b.match "^\\..*\\.sw[a-z]$" base != null
        || hasSuffix ".o" base || hasSuffix ".so" base
        || (type == "symlink" && hasPrefix "result" base)
      );
  };
}
