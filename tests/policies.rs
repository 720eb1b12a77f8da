//! Validating admission policies through real kubectl against `kimg up`: a policy in the
//! shape of the Kubernetes documentation's (a replica limit read from a ConfigMap
//! parameter, a variable, a match condition, a message expression) bound with `Deny`,
//! another bound with `Warn`; refusals and warnings worded as kube-apiserver words them;
//! a missing parameter under `parameterNotFoundAction: Deny`; policies that do not compile
//! refused when written; deletions matched; the policies themselves always writable.

#[macro_use]
mod common;

use std::process::Output;

up_handle!(
    /// `kimg up` serving the API alone.
    Api
);

impl Api {
    fn start() -> Api {
        Api(common::Up::api_only())
    }

    /// `kubectl apply -f` of `yaml`, which may fail: the output.
    fn try_apply(&self, yaml: &str) -> Output {
        let path = self.tmp.path().join("try.yaml");
        std::fs::write(&path, yaml).expect("write");
        self.run(&["apply", "-f", path.to_str().expect("utf-8")])
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const POLICY: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: replica-limit, namespace: default}
data: {maxReplicas: "3"}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: replica-limit.example.com}
spec:
  paramKind: {apiVersion: v1, kind: ConfigMap}
  matchConstraints:
    resourceRules:
    - apiGroups: [apps]
      apiVersions: [v1]
      operations: [CREATE, UPDATE]
      resources: [deployments]
  matchConditions:
  - name: not-exempt
    expression: "!has(object.metadata.labels) || !('policy.example.com/exempt' in object.metadata.labels)"
  variables:
  - name: limit
    expression: int(params.data.maxReplicas)
  validations:
  - expression: object.spec.replicas <= variables.limit
    messageExpression: "'replicas must be at most ' + string(variables.limit) + ', not ' + string(object.spec.replicas)"
  - expression: "!object.metadata.name.startsWith('forbidden-')"
    reason: Forbidden
    message: this name is reserved
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: replica-limit-binding}
spec:
  policyName: replica-limit.example.com
  validationActions: [Deny]
  paramRef: {name: replica-limit, namespace: default, parameterNotFoundAction: Deny}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: owner-label.example.com}
spec:
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE, UPDATE, DELETE]
      resources: [configmaps]
  validations:
  - expression: "request.operation == 'DELETE' || (has(object.metadata.labels) && 'owner' in object.metadata.labels)"
    message: configmaps should carry an owner label
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: owner-label-warn}
spec:
  policyName: owner-label.example.com
  validationActions: [Warn]
"#;

fn deployment(name: &str, replicas: u32, labels: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, labels: {{{labels}}}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: c, image: busybox}}]}}
"#
    )
}

#[test]
fn policies_deny_and_warn_as_kube_apiserver_does() {
    let api = Api::start();
    api.apply(POLICY);

    // The policies' own columns.
    let table = api.ok(&["get", "validatingadmissionpolicies"]);
    assert!(
        table.contains("PARAMKIND") && table.contains("v1/ConfigMap"),
        "{table}"
    );
    let table = api.ok(&["get", "validatingadmissionpolicybindings"]);
    assert!(
        table.contains("POLICYNAME") && table.contains("default/replica-limit"),
        "{table}"
    );

    // Within the limit: admitted. Over it: refused with the message expression.
    api.apply(&deployment("web", 2, ""));
    let err = stderr(&api.try_apply(&deployment("big", 5, "")));
    assert!(
        err.contains("The deployments \"big\" is invalid")
            && err.contains(
                "ValidatingAdmissionPolicy 'replica-limit.example.com' with binding 'replica-limit-binding' denied request: replicas must be at most 3, not 5"
            ),
        "{err}"
    );
    // Updates too; a match condition exempts; the reason sets the code.
    let err = stderr(&api.run(&[
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":4}}"#,
    ]));
    assert!(err.contains("replicas must be at most 3, not 4"), "{err}");
    api.apply(&deployment(
        "exempt",
        9,
        "policy.example.com/exempt: \"yes\"",
    ));
    let err = stderr(&api.try_apply(&deployment("forbidden-x", 1, "")));
    assert!(
        err.contains("Error from server (Forbidden)")
            && err.contains("denied request: this name is reserved"),
        "{err}"
    );

    // The parameter is read on every request: raising it admits more.
    api.ok(&[
        "patch",
        "configmap",
        "replica-limit",
        "--type=merge",
        "-p",
        r#"{"data":{"maxReplicas":"6"},"metadata":{"labels":{"owner":"ops"}}}"#,
    ]);
    api.apply(&deployment("big", 5, ""));

    // Warn: the write goes through with kube-apiserver's warning.
    let out = api.run(&["create", "configmap", "unowned"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "Warning: Validation failed for ValidatingAdmissionPolicy 'owner-label.example.com' with binding 'owner-label-warn': configmaps should carry an owner label"
        ),
        "{}",
        stderr(&out)
    );

    // A missing parameter under `parameterNotFoundAction: Deny` refuses.
    api.ok(&["delete", "configmap", "replica-limit"]);
    let err = stderr(&api.try_apply(&deployment("late", 1, "")));
    assert!(
        err.contains("failed to configure binding: no params found for policy binding with `Deny` parameterNotFoundAction"),
        "{err}"
    );

    // A policy that does not compile is refused when written, with the field.
    let bad = POLICY
        .split("---")
        .nth(1)
        .expect("policy")
        .replace("replica-limit.example.com", "broken.example.com")
        .replace(
            "object.spec.replicas <= variables.limit",
            "object.spec.replicas <=",
        );
    let err = stderr(&api.try_apply(&bad));
    assert!(
        err.contains("spec.validations[0].expression: Invalid value: \"object.spec.replicas <=\": compilation failed"),
        "{err}"
    );

    // The policies themselves are never subject to policies: removing them always works.
    api.ok(&[
        "delete",
        "validatingadmissionpolicybinding",
        "replica-limit-binding",
    ]);
    api.apply(&deployment("late", 1, ""));
}
