//! The CustomResourceDefinition kind itself: what kube-apiserver checks and fills in when a
//! CRD is written, and the versions it serves ([`served_versions`]).
//!
//! Checks: the name is `<plural>.<group>`; the group is a domain with a dot; kind, plural
//! and scope are given and valid; exactly one version is the storage version and version
//! names are unique DNS labels; every version has a structural `openAPIV3Schema` that
//! compiles ([`super::schema`]); printer columns parse ([`super::columns`]); scale paths
//! are under `.spec`/`.status`; the scope never changes. Defaults: `singular`,
//! `listKind`, `conversion.strategy: None`. Status, written on every write since nothing
//! else needs to run first: `acceptedNames`, `NamesAccepted` and `Established`, and the
//! storage version added to `storedVersions`.

use serde_json::{json, Value};

use super::super::kinds::{self, s, set_default, Col, Strategy};
use super::{columns, schema, RowSpec, ScalePaths, Version};

pub static STRATEGY: Strategy = Strategy {
    schema: kinds::schema_of::<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    >,
    table: Some(table),
    defaults: Some(defaults),
    validate: Some(validate),
};

fn table(o: &Value) -> (Vec<Col>, Vec<Value>) {
    (
        vec![("Name", "string", 0), ("Created At", "date", 0)],
        vec![
            json!(s(o, "/metadata/name")),
            json!(s(o, "/metadata/creationTimestamp")),
        ],
    )
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

fn defaults(o: &mut Value) {
    let kind = s(o, "/spec/names/kind").to_string();
    if !kind.is_empty() {
        set_default(
            o,
            &["spec", "names", "singular"],
            json!(kind.to_lowercase()),
        );
        set_default(
            o,
            &["spec", "names", "listKind"],
            json!(format!("{kind}List")),
        );
    }
    set_default(o, &["spec", "conversion", "strategy"], json!("None"));
    let storage = o
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|v| v["storage"] == true)
        .and_then(|v| v["name"].as_str())
        .map(str::to_string);
    if !o["status"].is_object() {
        o["status"] = json!({});
    }
    let now = super::super::object::now();
    let mut stored = strings(&o["status"]["storedVersions"]);
    if let Some(v) = storage {
        if !stored.contains(&v) {
            stored.push(v);
        }
    }
    let old_conditions = o["status"]["conditions"].clone();
    let since = |t: &str| {
        old_conditions
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == t && c["status"] == "True")
            .and_then(|c| c["lastTransitionTime"].as_str())
            .map_or_else(|| now.clone(), str::to_string)
    };
    o["status"] = json!({
        "acceptedNames": o["spec"]["names"].clone(),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": since("NamesAccepted")},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted",
             "lastTransitionTime": since("Established")},
        ],
        "storedVersions": stored,
    });
}

fn validate(new: &Value, old: Option<&Value>) -> Result<(), String> {
    served_versions(new)?;
    if let Some(old) = old {
        for (field, ptr) in [("spec.scope", "/spec/scope"), ("spec.group", "/spec/group")] {
            if old.pointer(ptr) != new.pointer(ptr) {
                return Err(format!(
                    "{field}: Invalid value: {}: field is immutable",
                    new.pointer(ptr).unwrap_or(&Value::Null)
                ));
            }
        }
    }
    Ok(())
}

fn dns_label(s: &str) -> bool {
    crate::cluster::is_dns_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// Checks a CRD and compiles the versions it serves; the error is kube-apiserver's first
/// field error.
pub fn served_versions(crd: &Value) -> Result<Vec<Version>, String> {
    let group = s(crd, "/spec/group");
    let plural = s(crd, "/spec/names/plural");
    let kind = s(crd, "/spec/names/kind");
    let name = s(crd, "/metadata/name");
    if group.is_empty() {
        return Err("spec.group: Required value".into());
    }
    if !group.contains('.') || !group.split('.').all(crate::cluster::is_dns_label) {
        return Err(format!(
            "spec.group: Invalid value: \"{group}\": should be a domain with at least one dot"
        ));
    }
    if plural.is_empty() {
        return Err("spec.names.plural: Required value".into());
    }
    if !dns_label(plural) {
        return Err(format!("spec.names.plural: Invalid value: \"{plural}\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character"));
    }
    if name != format!("{plural}.{group}") {
        return Err(format!(
            "metadata.name: Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
        ));
    }
    if kind.is_empty() {
        return Err("spec.names.kind: Required value".into());
    }
    if !kind.starts_with(|c: char| c.is_ascii_alphabetic())
        || !kind.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(format!(
            "spec.names.kind: Invalid value: \"{kind}\": may have mixed case, but should otherwise match: ^[a-zA-Z][a-zA-Z0-9]*$"
        ));
    }
    let singular = match s(crd, "/spec/names/singular") {
        "" => kind.to_lowercase(),
        x if dns_label(x) => x.to_string(),
        x => return Err(format!("spec.names.singular: Invalid value: \"{x}\": a DNS-1035 label must consist of lower case alphanumeric characters or '-'")),
    };
    let short_names = strings(&crd["spec"]["names"]["shortNames"]);
    for (i, sn) in short_names.iter().enumerate() {
        if !dns_label(sn) {
            return Err(format!("spec.names.shortNames[{i}]: Invalid value: \"{sn}\": a DNS-1035 label must consist of lower case alphanumeric characters or '-'"));
        }
    }
    let namespaced = match s(crd, "/spec/scope") {
        "Namespaced" => true,
        "Cluster" => false,
        "" => return Err("spec.scope: Required value".into()),
        x => {
            return Err(format!(
            "spec.scope: Unsupported value: \"{x}\": supported values: \"Cluster\", \"Namespaced\""
        ))
        }
    };
    let versions = crd["spec"]["versions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let storage: Vec<&Value> = versions.iter().filter(|v| v["storage"] == true).collect();
    if storage.len() != 1 {
        return Err(format!(
            "spec.versions: Invalid value: {}: must have exactly one version marked as storage version",
            storage.len()
        ));
    }
    let storage = storage[0]["name"].as_str().unwrap_or_default().to_string();
    let served = versions.iter().filter(|v| v["served"] == true).count();
    match s(crd, "/spec/conversion/strategy") {
        "" | "None" => {}
        "Webhook" if served <= 1 => {}
        "Webhook" => {
            return Err("spec.conversion.strategy: Unsupported value: \"Webhook\": kimg converts between versions only with strategy None (several served versions need it)".into())
        }
        x => {
            return Err(format!(
                "spec.conversion.strategy: Unsupported value: \"{x}\": supported values: \"None\", \"Webhook\""
            ))
        }
    }
    let categories = strings(&crd["spec"]["names"]["categories"]);
    let mut out = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let at = format!("spec.versions[{i}]");
        let vname = v["name"].as_str().unwrap_or_default();
        if vname.is_empty() {
            return Err(format!("{at}.name: Required value"));
        }
        if !dns_label(vname) {
            return Err(format!("{at}.name: Invalid value: \"{vname}\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character"));
        }
        if seen.contains(&vname) {
            return Err(format!("{at}.name: Duplicate value: \"{vname}\""));
        }
        seen.push(vname);
        let raw = v.pointer("/schema/openAPIV3Schema").cloned();
        let Some(raw) = raw else {
            return Err(format!(
                "{at}.schema.openAPIV3Schema: Required value: schemas are required"
            ));
        };
        let compiled = schema::Schema::compile(&raw, &format!("{at}.schema.openAPIV3Schema"))?;
        let cols = match v["additionalPrinterColumns"].as_array() {
            Some(list) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    columns::Column::compile(c, &format!("{at}.additionalPrinterColumns[{j}]"))
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => vec![columns::Column::compile(
                &json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}),
                "",
            )?],
        };
        let scale = match v.pointer("/subresources/scale") {
            Some(sc) => {
                let spec = sc["specReplicasPath"].as_str().unwrap_or_default();
                let status = sc["statusReplicasPath"].as_str().unwrap_or_default();
                if !spec.starts_with(".spec.") {
                    return Err(format!("{at}.subresources.scale.specReplicasPath: Invalid value: \"{spec}\": should be a json path under .spec"));
                }
                if !status.starts_with(".status.") {
                    return Err(format!("{at}.subresources.scale.statusReplicasPath: Invalid value: \"{status}\": should be a json path under .status"));
                }
                let selector = sc["labelSelectorPath"].as_str().map(str::to_string);
                Some(ScalePaths {
                    spec_replicas: spec.to_string(),
                    status_replicas: status.to_string(),
                    label_selector: selector,
                })
            }
            None => None,
        };
        if v["served"] != true {
            continue;
        }
        let deprecated = (v["deprecated"] == true).then(|| {
            v["deprecationWarning"].as_str().map_or_else(
                || format!("{group}/{vname} {kind} is deprecated"),
                str::to_string,
            )
        });
        let row = super::intern(RowSpec {
            group: group.to_string(),
            version: vname.to_string(),
            kind: kind.to_string(),
            plural: plural.to_string(),
            singular: singular.clone(),
            namespaced,
            short_names: short_names.clone(),
            categories: categories.clone(),
            status: v.pointer("/subresources/status").is_some(),
            scale: scale.is_some(),
        })
        .ok_or_else(|| {
            format!("spec.versions[{i}]: Forbidden: this apiserver serves {} custom resource definitions since it started; restart it to serve more", super::MAX_ROWS)
        })?;
        out.push(Version {
            res: row,
            storage: storage.clone(),
            schema: Some(compiled),
            raw_schema: raw,
            columns: cols,
            scale,
            deprecated,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                     "schema": {"openAPIV3Schema": {"type": "object"}},
                     "subresources": {"status": {}}},
                    {"name": "v1beta1", "served": true, "storage": false, "deprecated": true,
                     "schema": {"openAPIV3Schema": {"type": "object"}}},
                ],
            },
        })
    }

    #[test]
    fn a_crd_serves_its_versions_and_is_established() {
        let mut c = crd();
        defaults(&mut c);
        assert!(validate(&c, None).is_ok());
        let vs = served_versions(&c).expect("served");
        assert_eq!(vs.len(), 2);
        assert_eq!(vs[0].res.api_version(), "example.com/v1");
        assert!(vs[0].res.status && vs[0].res.namespaced);
        assert_eq!(vs[1].storage, "v1");
        assert_eq!(
            vs[1].deprecated.as_deref(),
            Some("example.com/v1beta1 Widget is deprecated")
        );
        assert_eq!(c["spec"]["names"]["singular"], "widget");
        assert_eq!(c["spec"]["names"]["listKind"], "WidgetList");
        assert_eq!(c["status"]["storedVersions"], json!(["v1"]));
        assert_eq!(c["status"]["conditions"][1]["type"], "Established");
        assert_eq!(c["status"]["conditions"][1]["status"], "True");
    }

    #[test]
    fn bad_definitions_are_refused_with_the_field() {
        type Change = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|c| c["metadata"]["name"] = json!("w.example.com")),
                "metadata.name: Invalid value",
            ),
            (
                Box::new(|c| c["spec"]["group"] = json!("example")),
                "spec.group: Invalid value",
            ),
            (
                Box::new(|c| c["spec"]["scope"] = json!("Galaxy")),
                "spec.scope: Unsupported value",
            ),
            (
                Box::new(|c| c["spec"]["versions"][1]["storage"] = json!(true)),
                "must have exactly one version marked as storage",
            ),
            (
                Box::new(|c| c["spec"]["versions"][1]["name"] = json!("v1")),
                "spec.versions[1].name: Duplicate value",
            ),
            (
                Box::new(|c| c["spec"]["versions"][0]["schema"] = json!({})),
                "spec.versions[0].schema.openAPIV3Schema: Required value",
            ),
            (
                Box::new(|c| c["spec"]["names"]["kind"] = json!("Wid-get")),
                "spec.names.kind: Invalid value",
            ),
            (
                Box::new(|c| {
                    c["spec"]["versions"][0]["additionalPrinterColumns"] =
                        json!([{"name": "X", "type": "string", "jsonPath": "spec"}])
                }),
                "spec.versions[0].additionalPrinterColumns[0].jsonPath: Invalid value",
            ),
            (
                Box::new(|c| c["spec"]["conversion"] = json!({"strategy": "Webhook"})),
                "spec.conversion.strategy: Unsupported value: \"Webhook\"",
            ),
        ];
        for (change, want) in cases {
            let mut c = crd();
            change(&mut c);
            let e = validate(&c, None).unwrap_err();
            assert!(e.contains(want), "{e} should contain {want}");
        }
        let mut moved = crd();
        moved["spec"]["scope"] = json!("Cluster");
        assert!(validate(&moved, Some(&crd()))
            .unwrap_err()
            .starts_with("spec.scope: Invalid value"));
    }
}
