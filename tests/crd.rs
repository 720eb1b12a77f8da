//! CustomResourceDefinitions through real kubectl against `kimg up`: the manifests under
//! `tests/manifests/crds/` (in the shape of cert-manager's Certificate and a backup
//! operator's schedule) and a CRD with a schema as large as kube-prometheus' Prometheus
//! (a whole PodSpec inlined). Covers establishment, discovery and short names, printer
//! columns, defaults, pruning, schema violations with their causes, CEL rules
//! (`x-kubernetes-validations`), status and scale subresources, several versions, `kubectl
//! explain`, watch, server-side apply, the `all` category, and deletion of a namespace and
//! of the CRD itself.

#[macro_use]
mod common;

use std::path::Path;
use std::process::Output;

use serde_json::{json, Value};

up_handle!(
    /// `kimg up` serving the API alone.
    Api
);

impl Api {
    fn start() -> Api {
        Api(common::Up::api_only())
    }

    /// `kubectl get --raw PATH`, parsed.
    fn raw(&self, path: &str) -> Value {
        serde_json::from_str(&self.ok(&["get", "--raw", path])).expect("json")
    }

    /// `kubectl apply -f -` of `yaml` with extra flags: the output.
    fn apply_with(&self, yaml: &str, flags: &[&str]) -> Output {
        use std::io::Write;
        let mut child = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["apply", "-f", "-"])
            .args(flags)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("write");
        child.wait_with_output().expect("kubectl")
    }

    fn apply_ok(&self, yaml: &str, flags: &[&str]) -> String {
        common::checked_ok(&["apply", "-f", "-"], self.apply_with(yaml, flags))
    }

    fn establish(&self, file: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/manifests/crds")
            .join(file);
        self.ok(&["apply", "-f", path.to_str().expect("utf-8")]);
        let name = file.trim_end_matches(".yaml");
        self.ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=20s",
            &format!("crd/{name}"),
        ]);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const CERT: &str = r#"
apiVersion: pki.example.io/v1
kind: Certificate
metadata:
  name: web
spec:
  secretName: web-tls
  dnsNames: [web.example.com, www.example.com]
  issuerRef: {name: ca}
"#;

#[test]
fn an_operator_crd_serves_its_objects_to_kubectl() {
    let api = Api::start();
    api.establish("certificates.pki.example.io.yaml");

    // Discovery: short names, the group's versions (preferred first), the `all` category.
    let resources = api.ok(&["api-resources", "--api-group=pki.example.io"]);
    assert!(
        resources.contains("certificates") && resources.contains("cert,certs"),
        "{resources}"
    );
    let group = api.raw("/apis/pki.example.io");
    assert_eq!(group["preferredVersion"]["version"], "v1", "{group}");
    assert_eq!(group["versions"].as_array().map(Vec::len), Some(2));

    // Create: defaults are filled in at every depth; printer columns read the object.
    api.apply_ok(CERT, &[]);
    let cert = api.json(&["get", "cert", "web"]);
    assert_eq!(cert["spec"]["duration"], "2160h");
    assert_eq!(cert["spec"]["privateKey"]["algorithm"], "RSA");
    assert_eq!(cert["spec"]["privateKey"]["rotationPolicy"], "Always");
    assert_eq!(cert["spec"]["issuerRef"]["kind"], "Issuer");
    assert_eq!(cert["metadata"]["generation"], 1);
    let table = api.ok(&["get", "certificates"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "READY", "SECRET", "AGE"], "{table}");
    assert!(table.contains("web-tls"), "{table}");
    let wide = api.ok(&["get", "certs", "-o", "wide"]);
    assert!(wide.contains("ISSUER") && wide.contains(" ca "), "{wide}");

    // Status through its own endpoint: the main endpoint ignores it, generation stays.
    api.ok(&[
        "patch", "cert", "web", "--subresource=status", "--type=merge", "-p",
        r#"{"status":{"revision":1,"conditions":[{"type":"Ready","status":"True","message":"issued"}]}}"#,
    ]);
    api.ok(&[
        "patch",
        "cert",
        "web",
        "--type=merge",
        "-p",
        r#"{"status":{"revision":7}}"#,
    ]);
    let cert = api.json(&["get", "cert", "web"]);
    assert_eq!(cert["status"]["revision"], 1);
    assert_eq!(cert["metadata"]["generation"], 1);
    let table = api.ok(&["get", "cert", "web", "-o", "wide"]);
    assert!(
        table.contains("True") && table.contains("issued"),
        "{table}"
    );
    api.ok(&[
        "patch",
        "cert",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"commonName":"web"}}"#,
    ]);
    assert_eq!(
        api.json(&["get", "cert", "web"])["metadata"]["generation"],
        2
    );

    // Schema violations: a 422 listing each field, as kube-apiserver words them.
    let bad = r#"
apiVersion: pki.example.io/v1
kind: Certificate
metadata: {name: bad}
spec:
  secretName: Not_A_Name
  dnsNames: [a.example.com, a.example.com]
  usages: [teleportation]
  privateKey: {size: 12}
"#;
    let err = stderr(&api.apply_with(bad, &[]));
    for want in [
        "The Certificate.pki.example.io \"bad\" is invalid",
        "spec.secretName: Invalid value: \"Not_A_Name\": spec.secretName in body should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
        "spec.dnsNames[1]: Duplicate value: \"a.example.com\"",
        "spec.usages[0]: Unsupported value: \"teleportation\"",
        "spec.privateKey.size: Invalid value: 12: spec.privateKey.size in body should be greater than or equal to 256",
        "spec.issuerRef: Required value",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // CEL rules: a cross-field rule with its message, a rule without one (`failed rule:`),
    // a rule reported on a sub-field with its reason and message expression; the same
    // wording kube-apiserver uses, one cause each.
    let ruled = r#"
apiVersion: pki.example.io/v1
kind: Certificate
metadata: {name: ruled}
spec:
  secretName: ruled-tls
  duration: 24h
  renewBefore: 24h
  issuerRef: {name: ca}
  privateKey: {algorithm: Ed25519, size: 256}
"#;
    let err = stderr(&api.apply_with(ruled, &[]));
    for want in [
        "The Certificate.pki.example.io \"ruled\" is invalid",
        "spec: Invalid value: at least one of commonName or dnsNames must be set",
        "spec: Invalid value: failed rule: !has(self.renewBefore) || self.renewBefore != self.duration",
        "spec.privateKey.size: Forbidden: size cannot be set for Ed25519 keys",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // A transition rule: `oldSelf` holds on updates only, so creating is fine and a change
    // of the immutable field is refused; other changes still pass.
    api.apply_ok(&CERT.replace("name: web\n", "name: moving\n"), &[]);
    let err = stderr(&api.run(&[
        "patch",
        "cert",
        "moving",
        "--type=merge",
        "-p",
        r#"{"spec":{"secretName":"elsewhere"}}"#,
    ]));
    assert!(
        err.contains("spec.secretName: Invalid value: \"elsewhere\": secretName is immutable"),
        "{err}"
    );
    api.ok(&[
        "patch",
        "cert",
        "moving",
        "--type=merge",
        "-p",
        r#"{"spec":{"commonName":"moving"}}"#,
    ]);
    api.ok(&["delete", "cert", "moving"]);

    let status = api.run(&[
        "get",
        "--raw",
        "/apis/pki.example.io/v1/namespaces/default/certificates/missing",
    ]);
    assert!(stderr(&status).contains("NotFound"), "{}", stderr(&status));

    // Unknown fields: refused under kubectl's default strict validation, pruned with a
    // warning under `--validate=warn` (silently under `--validate=false`).
    let extra = CERT
        .replace("name: web\n", "name: extra\n")
        .replace("issuerRef:", "bogus: 1\n  issuerRef:");
    let err = stderr(&api.apply_with(&extra, &[]));
    assert!(
        err.contains("strict decoding error: unknown field \"spec.bogus\""),
        "{err}"
    );
    let out = api.apply_with(&extra, &["--validate=warn"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown field \"spec.bogus\""),
        "{}",
        stderr(&out)
    );
    assert!(api.json(&["get", "cert", "extra"])["spec"]
        .get("bogus")
        .is_none());

    // The older version: objects read through it carry its apiVersion, with the
    // deprecation warning; what it writes is stored in v1 and read back through v1.
    let old = api.run(&[
        "get",
        "certificates.v1alpha2.pki.example.io",
        "web",
        "-o",
        "json",
    ]);
    assert!(old.status.success(), "{}", stderr(&old));
    let old_obj: Value = serde_json::from_slice(&old.stdout).expect("json");
    assert_eq!(old_obj["apiVersion"], "pki.example.io/v1alpha2");
    assert!(
        stderr(&old).contains("use pki.example.io/v1"),
        "{}",
        stderr(&old)
    );
    api.apply_ok(
        "apiVersion: pki.example.io/v1alpha2\nkind: Certificate\nmetadata: {name: legacy}\nspec: {secretName: legacy, issuerRef: {name: ca}}\n",
        &[],
    );
    assert_eq!(
        api.json(&["get", "cert", "legacy"])["apiVersion"],
        "pki.example.io/v1"
    );

    // kubectl explain reads the CRD's schema; server-side apply works on custom objects.
    let explain = api.ok(&["explain", "certificate.spec.secretName"]);
    assert!(
        explain.contains("The Secret the certificate and key"),
        "{explain}"
    );
    api.apply_ok(
        &CERT.replace(
            "dnsNames: [web.example.com, www.example.com]",
            "dnsNames: [web.example.com]",
        ),
        &["--server-side", "--force-conflicts", "--field-manager=ops"],
    );
    assert_eq!(
        api.json(&["get", "cert", "web"])["spec"]["dnsNames"],
        json!(["web.example.com"])
    );

    // Watch: a custom object's change streams to a watcher.
    let watch = api.ok(&[
        "get",
        "--raw",
        "/apis/pki.example.io/v1/namespaces/default/certificates?watch=1&timeoutSeconds=1",
    ]);
    let events: Vec<Value> = watch
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "ADDED" && e["object"]["metadata"]["name"] == "web"),
        "{watch}"
    );

    // `kubectl get all` includes the category.
    assert!(api
        .ok(&["get", "all"])
        .contains("certificate.pki.example.io/web"));

    // A namespace's deletion deletes its custom objects.
    api.ok(&["create", "namespace", "team"]);
    api.apply_ok(CERT, &["-n", "team"]);
    api.ok(&["delete", "namespace", "team", "--wait=false"]);
    let left = api.json(&["get", "certificates", "-A"]);
    assert!(
        left["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|c| c["metadata"]["namespace"] != "team"),
        "{left}"
    );

    // Deleting the CRD deletes its objects: a new CRD of the same name starts empty.
    api.ok(&["delete", "crd", "certificates.pki.example.io"]);
    let gone = api.run(&["get", "--raw", "/apis/pki.example.io/v1/certificates"]);
    assert!(!gone.status.success());
    api.establish("certificates.pki.example.io.yaml");
    let items = api.raw("/apis/pki.example.io/v1/certificates");
    assert_eq!(items["items"], json!([]), "{items}");
}

#[test]
fn a_cluster_scoped_crd_scales_and_keeps_what_it_declares_free_form() {
    let api = Api::start();
    api.establish("backupschedules.backup.example.io.yaml");
    api.apply_ok(
        r#"
apiVersion: backup.example.io/v1beta1
kind: BackupSchedule
metadata: {name: nightly}
spec:
  schedule: "0 3 * * *"
  retention: 7d
  options: {compression: zstd, levels: [1, 2]}
  template:
    apiVersion: batch/v1
    kind: Job
    metadata: {name: t}
    spec: {backoffLimit: 2}
"#,
        &[],
    );
    let bs = api.json(&["get", "bs", "nightly"]);
    assert_eq!(bs["spec"]["workers"], 1);
    assert_eq!(bs["spec"]["options"]["levels"], json!([1, 2]));
    assert_eq!(bs["spec"]["template"]["spec"]["backoffLimit"], 2);
    assert!(bs["metadata"].get("namespace").is_none());

    api.ok(&["scale", "backupschedule", "nightly", "--replicas=3"]);
    assert_eq!(api.json(&["get", "bs", "nightly"])["spec"]["workers"], 3);
    let scale = api.raw("/apis/backup.example.io/v1beta1/backupschedules/nightly/scale");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 3);
    let table = api.ok(&["get", "backupschedules"]);
    assert!(
        table.contains("0 3 * * *") && table.contains("false"),
        "{table}"
    );

    let err = stderr(&api.apply_with(
        "apiVersion: backup.example.io/v1beta1\nkind: BackupSchedule\nmetadata: {name: x}\nspec: {schedule: '@daily', retention: 1.5, template: {kind: Job}}\n",
        &[],
    ));
    for want in [
        "spec.schedule: Invalid value: \"@daily\": spec.schedule in body should be at least 9 chars long",
        "spec.retention: Invalid value: \"number\": spec.retention in body must be of type integer,string",
        "spec.template.apiVersion: Required value",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn bad_definitions_are_refused_with_the_field_and_why() {
    let api = Api::start();
    let crd = |name: &str, schema: &str| {
        format!(
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: {name}}}\nspec:\n  group: bad.example.io\n  scope: Namespaced\n  names: {{plural: things, kind: Thing}}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema: {schema}\n"
        )
    };
    let cases = [
        (crd("stuff.bad.example.io", "{type: object}"), "metadata.name: Invalid value: \"stuff.bad.example.io\": must be spec.names.plural+\".\"+spec.group"),
        (crd("things.bad.example.io", "{type: object, properties: {spec: {properties: {}}}}"), "spec.versions[0].schema.openAPIV3Schema.properties[spec].type: Required value"),
        (crd("things.bad.example.io", "{type: object, properties: {a: {type: string, pattern: '(['}}}"), "spec.versions[0].schema.openAPIV3Schema.properties[a].pattern: Invalid value"),
        (crd("things.bad.example.io", "{type: object, properties: {a: {type: integer, default: x}}}"), "properties[a].default: Invalid value"),
        (crd("things.bad.example.io", "{type: thing}"), "spec.versions[0].schema.openAPIV3Schema.type: Unsupported value: \"thing\""),
        // CEL rules that do not compile, name what the schema lacks, or cost too much.
        (crd("things.bad.example.io", "{type: object, x-kubernetes-validations: [{rule: 'self.a >'}], properties: {a: {type: integer}}}"),
            "spec.versions[0].schema.openAPIV3Schema.x-kubernetes-validations[0].rule: Invalid value: \"self.a >\": compilation failed: ERROR: <input>:1:"),
        (crd("things.bad.example.io", "{type: object, x-kubernetes-validations: [{rule: 'self.b > 1'}], properties: {a: {type: integer}}}"),
            "undefined field 'b'"),
        (crd("things.bad.example.io", "{type: object, x-kubernetes-validations: [{rule: 'self.xs.all(x, self.xs.exists(y, x.startsWith(y)))'}], properties: {xs: {type: array, items: {type: string}}}}"),
            "x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"),
    ];
    for (yaml, want) in cases {
        let err = stderr(&api.apply_with(&yaml, &[]));
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(!api.ok(&["get", "crd", "-o", "name"]).contains("things"));
}

/// Inlines every `$ref` of `schema` (from the apiserver's own OpenAPI components) into a
/// structural schema: what operator CRDs that embed a PodSpec carry.
fn inline(defs: &serde_json::Map<String, Value>, s: &Value, depth: usize) -> Value {
    if depth > 12 {
        return json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    }
    let s = match s.get("$ref").or_else(|| s.pointer("/allOf/0/$ref")) {
        Some(Value::String(r)) => {
            let name = r.rsplit('/').next().unwrap_or_default();
            let mut d = defs.get(name).cloned().unwrap_or(json!({}));
            if let Some(desc) = s.get("description") {
                d["description"] = desc.clone();
            }
            return inline(defs, &d, depth + 1);
        }
        _ => s,
    };
    let mut out = serde_json::Map::new();
    for key in [
        "description",
        "type",
        "format",
        "enum",
        "required",
        "x-kubernetes-int-or-string",
        "nullable",
    ] {
        if let Some(v) = s.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(Value::Object(props)) = s.get("properties") {
        let p: serde_json::Map<String, Value> = props
            .iter()
            .map(|(k, v)| (k.clone(), inline(defs, v, depth + 1)))
            .collect();
        out.insert("properties".into(), Value::Object(p));
    }
    if let Some(a @ Value::Object(_)) = s.get("additionalProperties") {
        out.insert("additionalProperties".into(), inline(defs, a, depth + 1));
    }
    if let Some(i) = s.get("items") {
        out.insert("items".into(), inline(defs, i, depth + 1));
    }
    if !out.contains_key("type") && !out.contains_key("x-kubernetes-int-or-string") {
        out.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
        out.insert("type".into(), json!("object"));
        if s.get("format").is_some() || s.get("enum").is_some() {
            out.remove("type");
        }
    }
    Value::Object(out)
}

#[test]
fn a_prometheus_sized_schema_is_served_validated_and_pruned() {
    let api = Api::start();
    let doc = api.raw("/openapi/v3/api/v1");
    let defs = doc["components"]["schemas"].as_object().expect("schemas");
    let pod_spec = inline(
        defs,
        &json!({"$ref": "#/components/schemas/io.k8s.api.core.v1.PodSpec"}),
        0,
    );
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "monitors.metrics.example.io"},
        "spec": {"group": "metrics.example.io", "scope": "Namespaced",
            "names": {"plural": "monitors", "kind": "Monitor"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "replicas": {"type": "integer", "default": 1},
                        "podSpec": pod_spec,
                    }},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                }}}}]},
    });
    let text = crd.to_string();
    assert!(
        text.len() > 200_000,
        "the schema should be Prometheus-sized: {} bytes",
        text.len()
    );
    api.apply_ok(&text, &["--server-side"]);
    api.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/monitors.metrics.example.io",
    ]);

    let monitor = |containers: Value| {
        json!({"apiVersion": "metrics.example.io/v1", "kind": "Monitor",
               "metadata": {"name": "m"},
               "spec": {"podSpec": {"containers": containers, "unknownThing": 1}}})
        .to_string()
    };
    let err = stderr(&api.apply_with(
        &monitor(json!([{"name": "prom", "image": "prom", "ports": [{"containerPort": "web"}]}])),
        &["--validate=false"],
    ));
    assert!(
        err.contains(
            "spec.podSpec.containers[0].ports[0].containerPort: Invalid value: \"string\""
        ),
        "{err}"
    );
    api.apply_ok(
        &monitor(
            json!([{"name": "prom", "image": "prom", "resources": {"limits": {"memory": "1Gi"}},
                         "ports": [{"containerPort": 9090}]}]),
        ),
        &["--validate=false"],
    );
    let m = api.json(&["get", "monitor", "m"]);
    assert_eq!(m["spec"]["replicas"], 1);
    assert_eq!(
        m["spec"]["podSpec"]["containers"][0]["ports"][0]["containerPort"],
        9090
    );
    assert!(m["spec"]["podSpec"].get("unknownThing").is_none(), "{m}");
    let explain = api.ok(&["explain", "monitor.spec.podSpec.containers.livenessProbe"]);
    assert!(explain.contains("httpGet"), "{explain}");
}
