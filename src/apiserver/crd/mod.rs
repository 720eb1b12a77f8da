//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`): kinds that users define at run
//! time, served like the built-in ones.
//!
//! What: a CRD object ([`definition`]: its own validation, defaults and `Established`
//! status) makes every served version of its kind appear in routing, discovery, OpenAPI,
//! RBAC and Table output. Custom objects are stored under `/registry/<group>/<plural>/…`
//! (as kube-apiserver lays them out) in the storage version and presented in the version
//! asked for (`conversion: None`). Writes are defaulted, pruned and validated against the
//! version's structural schema ([`schema`]); `status` and `scale` subresources,
//! `additionalPrinterColumns` ([`columns`]), short names and categories (`kubectl get
//! all`) work as declared. Deleting a CRD deletes its objects; deleting a namespace
//! deletes the custom objects in it.
//!
//! How: the [`Catalog`] (built-in rows plus one row per served custom version) is rebuilt
//! from the watch cache when a CRD changes and shared by every request until the next
//! change ([`catalog`]). Routing needs `&'static Resource` rows: custom rows are interned
//! once per distinct definition ([`MAX_ROWS`] at most per process), so re-applying the
//! same CRD costs nothing.
//!
//! `x-kubernetes-validations` rules are compiled with the schema and evaluated on every
//! write ([`cel`]).
//!
//! Limits: `Webhook` conversion is not supported (refused when the CRD is written); custom objects that carry
//! finalizers are deleted with their CRD without waiting for them; `selectableFields` are
//! not served.

pub mod cel;
pub mod columns;
pub mod definition;
pub mod schema;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

use super::resources::{self, NameRule, Resource, RESOURCES};
use super::State;

/// Where CRD objects are stored.
pub const CRD_PREFIX: &str = "/registry/customresourcedefinitions/";

/// How many distinct custom resource rows one process interns.
pub const MAX_ROWS: usize = 10_000;

/// The `scale` subresource's paths (`.spec.replicas` style, as the CRD declares them).
#[derive(Debug, Clone)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// One served version of a custom kind.
#[derive(Debug)]
pub struct Version {
    pub res: &'static Resource,
    /// The version objects are stored in.
    pub storage: String,
    pub schema: Option<schema::Schema>,
    /// The `openAPIV3Schema` as written, for OpenAPI documents.
    pub raw_schema: Value,
    pub columns: Vec<columns::Column>,
    pub scale: Option<ScalePaths>,
    /// `deprecationWarning` (or the default one) when the version is deprecated.
    pub deprecated: Option<String>,
}

impl Version {
    /// The storage `apiVersion`.
    pub fn storage_api_version(&self) -> String {
        format!("{}/{}", self.res.group, self.storage)
    }
}

/// The served resources: the built-in table and the served custom versions.
#[derive(Debug, Default)]
pub struct Catalog {
    custom: Vec<Arc<Version>>,
}

/// Kubernetes' version priority: GA before beta before alpha, higher numbers first, then
/// other names alphabetically.
pub fn version_rank(v: &str) -> (u8, i64, i64, String) {
    let parse = |s: &str| -> Option<(u8, i64, i64)> {
        let rest = s.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let major: i64 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((0, -major, 0));
        }
        for (word, class) in [("beta", 1u8), ("alpha", 2u8)] {
            if let Some(n) = tail.strip_prefix(word) {
                let minor: i64 = n.parse().ok()?;
                return Some((class, -major, -minor));
            }
        }
        None
    };
    match parse(v) {
        Some((c, a, b)) => (c, a, b, String::new()),
        None => (3, 0, 0, v.to_string()),
    }
}

impl Catalog {
    /// Every served resource, built-in first.
    pub fn resources(&self) -> impl Iterator<Item = &'static Resource> + '_ {
        RESOURCES.iter().chain(self.custom.iter().map(|v| v.res))
    }

    /// The resource at `<group>/<version>/<plural>`, with its custom version if it is one.
    pub fn find(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<(&'static Resource, Option<Arc<Version>>)> {
        if let Some(r) = resources::find(group, version, plural) {
            return Some((r, None));
        }
        self.custom
            .iter()
            .find(|v| v.res.group == group && v.res.version == version && v.res.plural == plural)
            .map(|v| (v.res, Some(v.clone())))
    }

    /// The custom versions served.
    pub fn custom(&self) -> &[Arc<Version>] {
        &self.custom
    }

    /// Served groups with their versions, preferred first; core first, then the built-in
    /// groups in table order, then custom groups by name.
    pub fn groups(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for r in self.resources() {
            match out.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, vs)) if !vs.contains(&r.version) => vs.push(r.version),
                Some(_) => {}
                None => out.push((r.group, vec![r.version])),
            }
        }
        for (_, vs) in &mut out {
            vs.sort_by_key(|v| version_rank(v));
        }
        out
    }

    /// Served `(group, version)` pairs, in [`Catalog::groups`] order.
    pub fn group_versions(&self) -> Vec<(&'static str, &'static str)> {
        self.groups()
            .into_iter()
            .flat_map(|(g, vs)| vs.into_iter().map(move |v| (g, v)))
            .collect()
    }
}

/// The catalog as of the last CRD change the watch cache has seen.
pub type Registry = super::cache::Derived<Catalog>;

/// The current catalog: the memoized one while no CRD changed, else rebuilt from the
/// CRDs (a store failure keeps serving the last one).
pub async fn catalog(st: &State) -> Arc<Catalog> {
    let at = st
        .cache
        .as_ref()
        .map(|c| c.changed_at(&["customresourcedefinitions"]));
    if let Some(cat) = at.and_then(|at| st.crds.fresh(at)) {
        return cat;
    }
    let page = match st.list(CRD_PREFIX, Default::default(), true).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the CustomResourceDefinitions");
            return st.crds.last().unwrap_or_default();
        }
    };
    let mut custom = Vec::new();
    for kv in &page.items {
        let Ok(crd) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        match definition::served_versions(&crd) {
            Ok(vs) => custom.extend(vs.into_iter().map(Arc::new)),
            Err(e) => {
                let name = crd["metadata"]["name"].as_str().unwrap_or_default();
                tracing::warn!(crd = name, error = %e, "not serving a CustomResourceDefinition");
            }
        }
    }
    tracing::debug!(versions = custom.len(), "custom resource catalog rebuilt");
    let cat = Arc::new(Catalog { custom });
    if let Some(at) = at {
        st.crds.keep(at, cat.clone());
    }
    cat
}

/// The fields of a row, owned: the interner's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowSpec {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status: bool,
    pub scale: bool,
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn leak_list(v: &[String]) -> &'static [&'static str] {
    Box::leak(
        v.iter()
            .map(|s| leak(s))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    )
}

/// The one `&'static` row of a custom resource; `None` once [`MAX_ROWS`] distinct rows
/// exist.
pub fn intern(spec: RowSpec) -> Option<&'static Resource> {
    static ROWS: OnceLock<Mutex<HashMap<RowSpec, &'static Resource>>> = OnceLock::new();
    let mut rows = ROWS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(r) = rows.get(&spec) {
        return Some(r);
    }
    if rows.len() >= MAX_ROWS {
        tracing::error!(
            group = %spec.group, plural = %spec.plural,
            "too many distinct custom resource definitions since start; restart to serve more"
        );
        return None;
    }
    let row: &'static Resource = Box::leak(Box::new(Resource {
        group: leak(&spec.group),
        version: leak(&spec.version),
        kind: leak(&spec.kind),
        plural: leak(&spec.plural),
        singular: leak(&spec.singular),
        namespaced: spec.namespaced,
        short_names: leak_list(&spec.short_names),
        categories: leak_list(&spec.categories),
        status: spec.status,
        scale: spec.scale,
        names: NameRule::Subdomain,
        strategy: None,
        custom: true,
        verbs: resources::VERBS,
    }));
    rows.insert(spec, row);
    Some(row)
}

/// Sets a custom object's `apiVersion` to the version it is read through.
pub fn present(res: &Resource, obj: &mut Value) {
    if res.custom {
        if let Some(m) = obj.as_object_mut() {
            m.insert("apiVersion".into(), Value::String(res.api_version()));
        }
    }
}

/// Prepares a custom object for storage: the storage `apiVersion`, defaults, pruning
/// (pruned request fields are an error under `fieldValidation=Strict`, warnings under
/// `Warn`, the default), validation and the schema's CEL rules (`old`, the stored object
/// on updates, is their `oldSelf`). `Err` holds the field errors.
pub fn admit(
    v: &Version,
    obj: &mut Value,
    old: Option<&Value>,
    field_validation: Option<&str>,
    warn: &mut dyn FnMut(String),
) -> Result<(), super::ApiError> {
    let kind = v.res.kind.to_string();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), Value::String(v.storage_api_version()));
    }
    let Some(schema) = &v.schema else {
        return Ok(());
    };
    let pruned = schema.default_and_prune(obj);
    if !pruned.is_empty() {
        let fields: Vec<String> = pruned
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        match field_validation {
            Some("Strict") => {
                return Err(super::ApiError::DecodeBody {
                    reason: format!(
                        "{kind} in version \"{}\" cannot be handled as a {kind}: strict decoding error: {}",
                        v.res.version,
                        fields.join(", ")
                    ),
                })
            }
            Some("Ignore") => {}
            _ => fields.into_iter().for_each(&mut *warn),
        }
    }
    let mut errors = schema.validate(obj);
    if errors.is_empty() {
        // Rules read typed values: only an object its schema accepts is evaluated.
        errors = schema.check_rules(obj, old);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(super::ApiError::invalid_fields(
            format!("{kind}.{}", v.res.group),
            name,
            errors,
        ))
    }
}

/// A JSON pointer for a simple `.a.b` path.
pub fn pointer(path: &str) -> String {
    path.replace('.', "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_as_kubernetes_prefers_them() {
        let mut vs = vec![
            "v1alpha1",
            "v2beta1",
            "foo",
            "v1",
            "v1beta2",
            "v2",
            "v10alpha3",
            "v1beta1",
        ];
        vs.sort_by_key(|v| version_rank(v));
        assert_eq!(
            vs,
            [
                "v2",
                "v1",
                "v2beta1",
                "v1beta2",
                "v1beta1",
                "v10alpha3",
                "v1alpha1",
                "foo"
            ]
        );
    }

    #[test]
    fn rows_are_interned_once_per_definition() {
        let spec = RowSpec {
            group: "intern.example.com".into(),
            version: "v1".into(),
            kind: "Thing".into(),
            plural: "things".into(),
            singular: "thing".into(),
            namespaced: true,
            short_names: vec!["th".into()],
            categories: vec![],
            status: true,
            scale: false,
        };
        let a = intern(spec.clone()).expect("row");
        let b = intern(spec.clone()).expect("row");
        assert!(std::ptr::eq(a, b));
        assert_eq!(
            a.key(Some("ns"), "x"),
            "/registry/intern.example.com/things/ns/x"
        );
        let c = intern(RowSpec {
            namespaced: false,
            ..spec
        })
        .expect("row");
        assert!(!std::ptr::eq(a, c));
    }
}
