//! The default ClusterRoles and ClusterRoleBindings every cluster starts with, named as
//! Kubernetes and kubeadm name them, created at startup by [`super::bootstrap`].
//!
//! Roles: `cluster-admin`, `admin`, `edit`, `view`, `system:auth-delegator`,
//! `system:discovery`,
//! `system:public-info-viewer`, `system:basic-user`, `system:node`,
//! `system:kube-scheduler`, `system:kube-controller-manager`, `system:node-bootstrapper`,
//! and the CSR auto-approval roles `…:nodeclient` / `…:selfnodeclient`. Bindings:
//! `system:masters` → cluster-admin; `system:authenticated` → discovery, basic-user and
//! public-info-viewer (also `system:unauthenticated`); `system:nodes` → system:node and
//! selfnodeclient; `system:bootstrappers` → node-bootstrapper and nodeclient; the
//! scheduler and controller-manager users → their roles. In `kube-system`, the Role
//! `extension-apiserver-authentication-reader` (aggregated API servers bind to it).
//! Limits: `admin`/`edit`/`view` carry flattened rules instead of aggregation;
//! `system:node` is a simplified version of what the Node authorizer allows (no
//! per-node restriction); the controller-manager role is broad (one identity for all
//! controllers, no per-controller service accounts).

use serde_json::{json, Value};

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const ALL: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(paths: &[&str]) -> Value {
    json!({"nonResourceURLs": paths, "verbs": ["get"]})
}

/// Workload resources `view` reads and `edit` writes, by group.
const WORKLOADS: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "pods",
            "pods/log",
            "pods/status",
            "services",
            "services/status",
            "endpoints",
            "configmaps",
            "persistentvolumeclaims",
            "persistentvolumeclaims/status",
            "replicationcontrollers",
            "replicationcontrollers/scale",
            "replicationcontrollers/status",
            "serviceaccounts",
            "events",
            "limitranges",
            "resourcequotas",
            "namespaces",
            "namespaces/status",
        ],
    ),
    (
        "apps",
        &[
            "deployments",
            "deployments/scale",
            "deployments/status",
            "replicasets",
            "replicasets/scale",
            "replicasets/status",
            "statefulsets",
            "statefulsets/scale",
            "statefulsets/status",
            "daemonsets",
            "daemonsets/status",
            "controllerrevisions",
        ],
    ),
    (
        "batch",
        &["jobs", "jobs/status", "cronjobs", "cronjobs/status"],
    ),
    (
        "networking.k8s.io",
        &["ingresses", "ingresses/status", "networkpolicies"],
    ),
    ("discovery.k8s.io", &["endpointslices"]),
    ("policy", &["poddisruptionbudgets"]),
    (
        "autoscaling",
        &[
            "horizontalpodautoscalers",
            "horizontalpodautoscalers/status",
        ],
    ),
];

fn view_rules() -> Vec<Value> {
    WORKLOADS.iter().map(|(g, r)| rule(&[g], r, READ)).collect()
}

fn edit_rules() -> Vec<Value> {
    let mut rules = view_rules();
    for (g, r) in WORKLOADS {
        let writable: Vec<&str> = r
            .iter()
            .copied()
            .filter(|r| !r.ends_with("/status") && *r != "namespaces" && *r != "pods/log")
            .collect();
        rules.push(rule(&[g], &writable, WRITE));
    }
    rules.push(rule(&[""], &["secrets"], ALL));
    rules.push(rule(
        &[""],
        &[
            "pods/exec",
            "pods/attach",
            "pods/portforward",
            "pods/eviction",
        ],
        &["create", "get"],
    ));
    rules.push(rule(&[""], &["serviceaccounts/token"], &["create"]));
    rules
}

fn admin_rules() -> Vec<Value> {
    let mut rules = edit_rules();
    rules.push(rule(
        &["rbac.authorization.k8s.io"],
        &["roles", "rolebindings"],
        ALL,
    ));
    rules.push(rule(
        &["authorization.k8s.io"],
        &["localsubjectaccessreviews"],
        &["create"],
    ));
    rules
}

fn cluster_role(name: &str, rules: Vec<Value>) -> Value {
    json!({
        "kind": "ClusterRole", "apiVersion": "rbac.authorization.k8s.io/v1",
        "metadata": {"name": name,
                     "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                     "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "rules": rules,
    })
}

fn binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> Value {
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|(kind, n)| json!({"kind": kind, "apiGroup": "rbac.authorization.k8s.io", "name": n}))
        .collect();
    json!({
        "kind": "ClusterRoleBinding", "apiVersion": "rbac.authorization.k8s.io/v1",
        "metadata": {"name": name,
                     "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                     "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

const CSR: &str = "certificates.k8s.io";
const NODECLIENT: &str = "system:certificates.k8s.io:certificatesigningrequests:nodeclient";
const SELFNODECLIENT: &str = "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient";

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    vec![
        cluster_role(
            "cluster-admin",
            vec![
                rule(&["*"], &["*"], &["*"]),
                json!({"nonResourceURLs": ["*"], "verbs": ["*"]}),
            ],
        ),
        cluster_role("admin", admin_rules()),
        cluster_role(
            "system:auth-delegator",
            vec![
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                    &["create"],
                ),
            ],
        ),
        cluster_role("edit", edit_rules()),
        cluster_role("view", view_rules()),
        cluster_role(
            "system:discovery",
            vec![urls(&[
                "/api",
                "/api/*",
                "/apis",
                "/apis/*",
                "/healthz",
                "/livez",
                "/readyz",
                "/openapi",
                "/openapi/*",
                "/version",
                "/version/",
            ])],
        ),
        cluster_role(
            "system:public-info-viewer",
            vec![urls(&[
                "/healthz",
                "/livez",
                "/readyz",
                "/version",
                "/version/",
            ])],
        ),
        cluster_role(
            "system:basic-user",
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
        ),
        cluster_role(
            "system:node",
            vec![
                rule(
                    &[""],
                    &["nodes"],
                    &[
                        "create", "get", "list", "watch", "patch", "update", "delete",
                    ],
                ),
                rule(&[""], &["nodes/status"], &["get", "patch", "update"]),
                rule(
                    &[""],
                    &["pods"],
                    &["get", "list", "watch", "create", "delete"],
                ),
                rule(&[""], &["pods/status"], &["get", "patch", "update"]),
                rule(&[""], &["pods/eviction"], &["create"]),
                rule(
                    &[""],
                    &[
                        "configmaps",
                        "secrets",
                        "services",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumes",
                        "namespaces",
                    ],
                    READ,
                ),
                rule(&[""], &["serviceaccounts"], &["get"]),
                rule(&[""], &["serviceaccounts/token"], &["create"]),
                // `kimg proxy` runs with the node's credentials (kube-proxy's
                // system:node-proxier rights).
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                rule(
                    &["", "events.k8s.io"],
                    &["events"],
                    &["create", "patch", "update"],
                ),
                rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                ),
                rule(
                    &[CSR],
                    &["certificatesigningrequests"],
                    &["create", "get", "list", "watch"],
                ),
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
            ],
        ),
        cluster_role(
            "system:kube-scheduler",
            vec![
                rule(
                    &["", "events.k8s.io"],
                    &["events"],
                    &["create", "patch", "update"],
                ),
                rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["create", "get", "list", "watch", "update"],
                ),
                rule(&[""], &["pods"], &["get", "list", "watch", "delete"]),
                rule(&[""], &["pods/binding", "bindings"], &["create"]),
                rule(&[""], &["pods/status"], &["patch", "update"]),
                rule(
                    &[""],
                    &[
                        "nodes",
                        "namespaces",
                        "services",
                        "replicationcontrollers",
                        "persistentvolumeclaims",
                        "persistentvolumes",
                        "configmaps",
                    ],
                    READ,
                ),
                rule(&["apps"], &["replicasets", "statefulsets"], READ),
                rule(&["policy"], &["poddisruptionbudgets"], READ),
            ],
        ),
        cluster_role(
            "system:kube-controller-manager",
            vec![rule(&["*"], &["*"], &["*"])],
        ),
        cluster_role(
            "system:node-bootstrapper",
            vec![rule(
                &[CSR],
                &["certificatesigningrequests"],
                &["create", "get", "list", "watch"],
            )],
        ),
        cluster_role(
            NODECLIENT,
            vec![rule(
                &[CSR],
                &["certificatesigningrequests/nodeclient"],
                &["create"],
            )],
        ),
        cluster_role(
            SELFNODECLIENT,
            vec![rule(
                &[CSR],
                &["certificatesigningrequests/selfnodeclient"],
                &["create"],
            )],
        ),
    ]
}

/// The default Roles, with their namespaces: `extension-apiserver-authentication-reader`
/// in `kube-system`, which aggregated API servers bind to read the
/// `extension-apiserver-authentication` ConfigMap.
pub fn roles() -> Vec<(&'static str, Value)> {
    vec![(
        "kube-system",
        json!({
            "kind": "Role", "apiVersion": "rbac.authorization.k8s.io/v1",
            "metadata": {"name": "extension-apiserver-authentication-reader",
                         "namespace": "kube-system",
                         "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                         "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": READ,
                       "resourceNames": ["extension-apiserver-authentication"]}],
        }),
    )]
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding(
            "cluster-admin",
            "cluster-admin",
            &[("Group", "system:masters")],
        ),
        binding(
            "system:discovery",
            "system:discovery",
            &[("Group", "system:authenticated")],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            &[("Group", "system:authenticated")],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[
                ("Group", "system:authenticated"),
                ("Group", "system:unauthenticated"),
            ],
        ),
        binding("system:node", "system:node", &[("Group", "system:nodes")]),
        binding(
            "system:kube-scheduler",
            "system:kube-scheduler",
            &[("User", "system:kube-scheduler")],
        ),
        binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            &[("User", "system:kube-controller-manager")],
        ),
        binding(
            "kubeadm:kubelet-bootstrap",
            "system:node-bootstrapper",
            &[("Group", "system:bootstrappers")],
        ),
        binding(
            "kubeadm:node-autoapprove-bootstrap",
            NODECLIENT,
            &[("Group", "system:bootstrappers")],
        ),
        binding(
            "kubeadm:node-autoapprove-certificate-rotation",
            SELFNODECLIENT,
            &[("Group", "system:nodes")],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::rbac::{rule_allows, Attributes};
    use super::*;

    fn role(name: &str) -> Value {
        cluster_roles()
            .into_iter()
            .find(|r| r["metadata"]["name"] == name)
            .expect("role")
    }

    fn allows(role_name: &str, verb: &str, group: &str, resource: &str) -> bool {
        let a = Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: "default".into(),
            ..Default::default()
        };
        role(role_name)["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .any(|r| rule_allows(r, &a))
    }

    #[test]
    fn the_bootstrapper_may_create_csrs_but_not_read_secrets() {
        assert!(allows(
            "system:node-bootstrapper",
            "create",
            CSR,
            "certificatesigningrequests"
        ));
        assert!(!allows("system:node-bootstrapper", "list", "", "secrets"));
        assert!(!allows(
            "system:node-bootstrapper",
            "delete",
            CSR,
            "certificatesigningrequests"
        ));
    }

    #[test]
    fn view_reads_workloads_but_not_secrets_and_edit_writes_them() {
        assert!(allows("view", "list", "apps", "deployments"));
        assert!(!allows("view", "get", "", "secrets"));
        assert!(!allows("view", "delete", "", "pods"));
        assert!(allows("edit", "delete", "", "pods"));
        assert!(allows("edit", "get", "", "secrets"));
        assert!(!allows(
            "edit",
            "create",
            "rbac.authorization.k8s.io",
            "rolebindings"
        ));
        assert!(allows(
            "admin",
            "create",
            "rbac.authorization.k8s.io",
            "rolebindings"
        ));
    }

    #[test]
    fn every_binding_refers_to_a_default_role() {
        let roles = cluster_roles();
        for b in cluster_role_bindings() {
            assert!(
                roles
                    .iter()
                    .any(|r| r["metadata"]["name"] == b["roleRef"]["name"]),
                "{}",
                b["metadata"]["name"]
            );
        }
    }
}
