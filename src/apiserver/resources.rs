//! The resource registry: which kinds the apiserver serves and where they are stored.
//!
//! What: one static table row per resource (group, version, kind, plural, scope, short
//! names, categories, subresources) pointing at the kind's file under `kinds/` (schema,
//! columns, validation). Discovery, routing, storage keys and Table output all read this
//! table, so adding a kind is adding a row and a file. How: objects live under
//! `/registry/<plural>/<namespace>/<name>` (cluster-scoped: `/registry/<plural>/<name>`) as
//! JSON, like Kubernetes lays out etcd. Custom kinds add rows at run time
//! ([`super::crd::Catalog`]). Limits: one version per built-in group; built-in plurals are
//! unique across groups (no `events.k8s.io` events next to core events yet).

use super::kinds::{self, Strategy};

/// How a resource's object names are validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain: lowercase alphanumerics, `-` and `.`, at most 253 characters.
    Subdomain,
    /// RFC 1123 label: lowercase alphanumerics and `-`, at most 63 characters.
    Label,
    /// RFC 1035 label: an RFC 1123 label that starts with a letter (Services).
    Rfc1035Label,
    /// RBAC names: anything without `/` or `%`, and not `.` or `..`.
    PathSegment,
}

/// One served resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Has a `status` subresource (the main endpoint then leaves `.status` alone).
    pub status: bool,
    /// Has a `scale` subresource (`autoscaling/v1` Scale over `.spec.replicas`).
    pub scale: bool,
    pub names: NameRule,
    /// What the kind does beyond being stored (schema, columns, validation), in its own
    /// file under `kinds/`; `None` for kinds that have not moved there yet.
    pub strategy: Option<&'static Strategy>,
    /// Defined by a CustomResourceDefinition ([`super::crd`]): stored under
    /// `/registry/<group>/<plural>/`.
    pub custom: bool,
    /// The verbs it serves ([`VERBS`] for stored kinds); others are answered 405.
    pub verbs: &'static [&'static str],
}

const ALL: &[&str] = &["all"];

const fn r(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
) -> Resource {
    Resource {
        group,
        version,
        kind,
        plural,
        singular,
        namespaced,
        short_names,
        categories: &[],
        status: false,
        scale: false,
        names: NameRule::Subdomain,
        strategy: None,
        custom: false,
        verbs: VERBS,
    }
}

const fn with(mut res: Resource, strategy: &'static Strategy) -> Resource {
    res.strategy = Some(strategy);
    res
}

const fn with_status(mut res: Resource) -> Resource {
    res.status = true;
    res
}

const fn in_all(mut res: Resource) -> Resource {
    res.categories = ALL;
    res
}

const fn scalable(mut res: Resource) -> Resource {
    res.status = true;
    res.scale = true;
    res.categories = ALL;
    res
}

/// Served for reading only, computed rather than stored (ComponentStatus).
const fn read_only(mut res: Resource) -> Resource {
    res.verbs = &["get", "list"];
    res
}

const fn named(mut res: Resource, names: NameRule) -> Resource {
    res.names = names;
    res
}

/// Every served resource, in discovery order.
pub static RESOURCES: &[Resource] = &[
    named(
        with_status(r(
            "",
            "v1",
            "Namespace",
            "namespaces",
            "namespace",
            false,
            &["ns"],
        )),
        NameRule::Label,
    ),
    with_status(r("", "v1", "Node", "nodes", "node", false, &["no"])),
    with(
        with_status(r(
            "",
            "v1",
            "ResourceQuota",
            "resourcequotas",
            "resourcequota",
            true,
            &["quota"],
        )),
        &kinds::resourcequota::STRATEGY,
    ),
    with(
        r(
            "",
            "v1",
            "LimitRange",
            "limitranges",
            "limitrange",
            true,
            &["limits"],
        ),
        &kinds::limitrange::STRATEGY,
    ),
    with(
        r(
            "",
            "v1",
            "PodTemplate",
            "podtemplates",
            "podtemplate",
            true,
            &[],
        ),
        &kinds::podtemplate::STRATEGY,
    ),
    read_only(with(
        r(
            "",
            "v1",
            "ComponentStatus",
            "componentstatuses",
            "componentstatus",
            false,
            &["cs"],
        ),
        &kinds::componentstatus::STRATEGY,
    )),
    in_all(with_status(r(
        "",
        "v1",
        "Pod",
        "pods",
        "pod",
        true,
        &["po"],
    ))),
    named(
        in_all(with_status(r(
            "",
            "v1",
            "Service",
            "services",
            "service",
            true,
            &["svc"],
        ))),
        NameRule::Rfc1035Label,
    ),
    r(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        "endpoints",
        true,
        &["ep"],
    ),
    with(
        r(
            "",
            "v1",
            "ConfigMap",
            "configmaps",
            "configmap",
            true,
            &["cm"],
        ),
        &kinds::configmap::STRATEGY,
    ),
    r("", "v1", "Secret", "secrets", "secret", true, &[]),
    r(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
    ),
    r("", "v1", "Event", "events", "event", true, &["ev"]),
    with_status(r(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        "persistentvolume",
        false,
        &["pv"],
    )),
    with_status(r(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        true,
        &["pvc"],
    )),
    scalable(r(
        "",
        "v1",
        "ReplicationController",
        "replicationcontrollers",
        "replicationcontroller",
        true,
        &["rc"],
    )),
    scalable(r(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        true,
        &["deploy"],
    )),
    scalable(r(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        true,
        &["rs"],
    )),
    scalable(r(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        true,
        &["sts"],
    )),
    in_all(with_status(r(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        true,
        &["ds"],
    ))),
    r(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        "controllerrevision",
        true,
        &[],
    ),
    in_all(with_status(r(
        "batch",
        "v1",
        "Job",
        "jobs",
        "job",
        true,
        &[],
    ))),
    in_all(with_status(r(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        "cronjob",
        true,
        &["cj"],
    ))),
    r(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        "lease",
        true,
        &[],
    ),
    r(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
        &[],
    ),
    with_status(r(
        "networking.k8s.io",
        "v1",
        "Ingress",
        "ingresses",
        "ingress",
        true,
        &["ing"],
    )),
    with(
        r(
            "networking.k8s.io",
            "v1",
            "IngressClass",
            "ingressclasses",
            "ingressclass",
            false,
            &[],
        ),
        &kinds::ingressclass::STRATEGY,
    ),
    with(
        r(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            "networkpolicy",
            true,
            &["netpol"],
        ),
        &kinds::networkpolicy::STRATEGY,
    ),
    with(
        in_all(with_status(r(
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            "horizontalpodautoscaler",
            true,
            &["hpa"],
        ))),
        &kinds::horizontalpodautoscaler::STRATEGY,
    ),
    with(
        with_status(r(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            "poddisruptionbudget",
            true,
            &["pdb"],
        )),
        &kinds::poddisruptionbudget::STRATEGY,
    ),
    named(
        r(
            "rbac.authorization.k8s.io",
            "v1",
            "Role",
            "roles",
            "role",
            true,
            &[],
        ),
        NameRule::PathSegment,
    ),
    named(
        r(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            "rolebinding",
            true,
            &[],
        ),
        NameRule::PathSegment,
    ),
    named(
        r(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            "clusterrole",
            false,
            &[],
        ),
        NameRule::PathSegment,
    ),
    named(
        r(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            "clusterrolebinding",
            false,
            &[],
        ),
        NameRule::PathSegment,
    ),
    with(
        r(
            "scheduling.k8s.io",
            "v1",
            "PriorityClass",
            "priorityclasses",
            "priorityclass",
            false,
            &["pc"],
        ),
        &kinds::priorityclass::STRATEGY,
    ),
    with(
        r(
            "node.k8s.io",
            "v1",
            "RuntimeClass",
            "runtimeclasses",
            "runtimeclass",
            false,
            &[],
        ),
        &kinds::runtimeclass::STRATEGY,
    ),
    with(
        r(
            "storage.k8s.io",
            "v1",
            "StorageClass",
            "storageclasses",
            "storageclass",
            false,
            &["sc"],
        ),
        &kinds::storageclass::STRATEGY,
    ),
    with(
        r(
            "storage.k8s.io",
            "v1",
            "CSIDriver",
            "csidrivers",
            "csidriver",
            false,
            &[],
        ),
        &kinds::csidriver::STRATEGY,
    ),
    with_status(r(
        "certificates.k8s.io",
        "v1",
        "CertificateSigningRequest",
        "certificatesigningrequests",
        "certificatesigningrequest",
        false,
        &["csr"],
    )),
    with(
        with_status(r(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            "customresourcedefinition",
            false,
            &["crd", "crds"],
        )),
        &super::crd::definition::STRATEGY,
    ),
    with(
        r(
            "admissionregistration.k8s.io",
            "v1",
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
            "mutatingwebhookconfiguration",
            false,
            &[],
        ),
        &kinds::webhookconfiguration::MUTATING,
    ),
    with(
        r(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
            "validatingwebhookconfiguration",
            false,
            &[],
        ),
        &kinds::webhookconfiguration::VALIDATING,
    ),
    with(
        with_status(r(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicy",
            "validatingadmissionpolicies",
            "validatingadmissionpolicy",
            false,
            &[],
        )),
        &kinds::validatingadmissionpolicy::POLICY,
    ),
    with(
        r(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicyBinding",
            "validatingadmissionpolicybindings",
            "validatingadmissionpolicybinding",
            false,
            &[],
        ),
        &kinds::validatingadmissionpolicy::BINDING,
    ),
    with(
        with_status(r(
            "apiregistration.k8s.io",
            "v1",
            "APIService",
            "apiservices",
            "apiservice",
            false,
            &[],
        )),
        &kinds::apiservice::STRATEGY,
    ),
];

/// The verbs every resource supports (discovery lists them; kubectl checks them).
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl Resource {
    /// `v1` or `<group>/<version>`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `<plural>` for built-in kinds, `<group>/<plural>` for custom ones (whose groups
    /// always contain a dot, so they never collide with a built-in plural).
    fn registry_dir(&self) -> String {
        if self.custom {
            format!("{}/{}", self.group, self.plural)
        } else {
            self.plural.to_string()
        }
    }

    /// The storage key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        let dir = self.registry_dir();
        match namespace.filter(|_| self.namespaced) {
            Some(ns) => format!("/registry/{dir}/{ns}/{name}"),
            None => format!("/registry/{dir}/{name}"),
        }
    }

    /// The storage prefix of a collection (one namespace, or all of them).
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        let dir = self.registry_dir();
        match namespace.filter(|_| self.namespaced) {
            Some(ns) => format!("/registry/{dir}/{ns}/"),
            None => format!("/registry/{dir}/"),
        }
    }
}

/// The resource served at `<group>/<version>/<plural>`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource with this plural (plurals are unique in the table).
pub fn by_plural(plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.plural == plural)
}

/// Served `(group, version)` pairs in discovery order, core first.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// Checks an object name against the resource's rule; `Err` holds Kubernetes' wording.
pub fn validate_name(rule: NameRule, name: &str) -> Result<(), String> {
    let label_ok = crate::cluster::is_dns_label;
    match rule {
        NameRule::Subdomain => {
            if name.len() <= 253 && name.split('.').all(label_ok) {
                Ok(())
            } else {
                Err(format!("metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"))
            }
        }
        NameRule::Label => {
            if label_ok(name) {
                Ok(())
            } else {
                Err(format!("metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"))
            }
        }
        NameRule::Rfc1035Label => {
            if label_ok(name) && name.as_bytes()[0].is_ascii_lowercase() {
                Ok(())
            } else {
                Err(format!("metadata.name: Invalid value: \"{name}\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character"))
            }
        }
        NameRule::PathSegment => {
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '%']) {
                Err(format!(
                    "metadata.name: Invalid value: \"{name}\": may not contain '/' or '%'"
                ))
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_are_unique_so_storage_prefixes_never_collide() {
        for (i, a) in RESOURCES.iter().enumerate() {
            for b in &RESOURCES[i + 1..] {
                assert_ne!(a.plural, b.plural);
            }
        }
    }

    #[test]
    fn keys_follow_the_kubernetes_registry_layout() {
        let pods = find("", "v1", "pods").expect("pods");
        assert_eq!(
            pods.key(Some("default"), "web"),
            "/registry/pods/default/web"
        );
        assert_eq!(pods.prefix(None), "/registry/pods/");
        let ns = by_plural("namespaces").expect("namespaces");
        assert_eq!(
            ns.key(Some("ignored"), "kube-system"),
            "/registry/namespaces/kube-system"
        );
        assert_eq!(
            find("apps", "v1", "deployments").map(|d| d.api_version()),
            Some("apps/v1".into())
        );
    }

    #[test]
    fn names_are_checked_with_the_resource_rule() {
        assert!(validate_name(NameRule::Subdomain, "a.b-c").is_ok());
        assert!(validate_name(NameRule::Subdomain, "Bad_Name").is_err());
        assert!(validate_name(NameRule::Label, "a.b").is_err());
        assert!(validate_name(NameRule::Rfc1035Label, "1abc").is_err());
        assert!(validate_name(NameRule::Rfc1035Label, "abc1").is_ok());
        assert!(validate_name(NameRule::PathSegment, "system:node").is_ok());
        assert!(validate_name(NameRule::Subdomain, &"a".repeat(254)).is_err());
    }
}
