//! Admission webhooks through real kubectl against `kimg up`, with a small webhook server
//! of our own on loopback (`tests/common/webhook.rs`): a mutating webhook adds a label, a
//! validating one refuses a name; object and namespace selectors choose what is sent;
//! `failurePolicy: Ignore` and `Fail` when the server is down or too slow; the caller's
//! identity reaches the webhook; the configurations themselves stay writable.

#[macro_use]
mod common;
#[path = "common/webhook.rs"]
mod webhook;

use std::process::Output;

up_handle!(
    /// `kimg up` serving the API alone.
    Api
);

impl Api {
    fn start() -> Api {
        Api(common::Up::api_only())
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn configs(
    hook: &webhook::Webhook,
    mutate_policy: &str,
    validate_policy: &str,
    validate_path: &str,
) -> String {
    format!(
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {{name: label-configmaps}}
webhooks:
- name: label.webhooks.example.io
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: {mutate_policy}
  timeoutSeconds: 2
  clientConfig:
    url: {mutate}
    caBundle: {ca}
  objectSelector:
    matchExpressions: [{{key: skip-webhook, operator: DoesNotExist}}]
  rules:
  - {{operations: [CREATE, UPDATE], apiGroups: [""], apiVersions: [v1], resources: [configmaps]}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {{name: deny-names}}
webhooks:
- name: deny.webhooks.example.io
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: {validate_policy}
  timeoutSeconds: 1
  clientConfig:
    url: {validate}
    caBundle: {ca}
  namespaceSelector:
    matchExpressions: [{{key: webhooks, operator: NotIn, values: ["off"]}}]
  rules:
  - {{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [configmaps], scope: Namespaced}}
"#,
        mutate = hook.url("/mutate"),
        validate = hook.url(validate_path),
        ca = hook.ca_bundle,
    )
}

#[test]
fn webhooks_mutate_and_refuse_and_fail_as_their_policy_says() {
    let api = Api::start();
    let mut hook = webhook::Webhook::start();
    api.apply(&configs(&hook, "Fail", "Fail", "/validate"));
    let table = api.ok(&["get", "mutatingwebhookconfigurations"]);
    assert!(
        table.contains("label-configmaps") && table.contains(" 1 "),
        "{table}"
    );

    // The mutating webhook labels the object; its warning reaches kubectl.
    let out = api.run(&["create", "configmap", "a", "--from-literal=k=v"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("mutated by the test webhook"),
        "{}",
        stderr(&out)
    );
    let cm = api.json(&["get", "configmap", "a"]);
    assert_eq!(
        cm["metadata"]["labels"]["webhook.example.io/mutated"], "true",
        "{cm}"
    );
    // Updates are sent too (labels kept: the patch adds to the existing map).
    api.ok(&["label", "configmap", "a", "team=blue"]);
    let cm = api.json(&["get", "configmap", "a"]);
    assert_eq!(cm["metadata"]["labels"]["team"], "blue");

    // The validating webhook refuses a name, with its code and message.
    let out = api.run(&["create", "configmap", "forbidden-x"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("admission webhook \"deny.webhooks.example.io\" denied the request: names starting with forbidden- are refused"),
        "{}",
        stderr(&out)
    );
    let path = api.tmp.path().join("forbidden.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: forbidden-z}\n",
    )
    .expect("write");
    let out = api.run(&["create", "-f", path.to_str().expect("utf-8")]);
    assert!(
        stderr(&out).contains("Error from server (Forbidden)"),
        "the webhook's code reaches kubectl: {}",
        stderr(&out)
    );

    // Selectors: an object labelled skip-webhook is not mutated; a namespace labelled
    // webhooks=off is not validated.
    api.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: skipped, labels: {skip-webhook: \"1\"}}\n");
    let cm = api.json(&["get", "configmap", "skipped"]);
    assert!(
        cm["metadata"]["labels"]
            .get("webhook.example.io/mutated")
            .is_none(),
        "{cm}"
    );
    api.ok(&["create", "namespace", "quiet"]);
    api.ok(&["label", "namespace", "quiet", "webhooks=off"]);
    api.ok(&["create", "configmap", "forbidden-x", "-n", "quiet"]);

    // The caller's identity is in every review.
    let users = hook.users.lock().expect("users").clone();
    assert!(
        !users.is_empty() && users.iter().all(|u| !u.is_empty()),
        "{users:?}"
    );

    // Down: Ignore lets the write through unmutated, Fail refuses it with 500.
    hook.stop();
    let out = api.run(&["create", "configmap", "b"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains(
            "Internal error occurred: failed calling webhook \"label.webhooks.example.io\""
        ),
        "{err}"
    );
    let hook2 = webhook::Webhook::start();
    // The configurations stay writable while their webhooks are down.
    api.apply(&configs(&hook, "Ignore", "Fail", "/validate"));
    let out = api.run(&["create", "configmap", "b"]);
    assert!(
        !out.status.success(),
        "the validating webhook is still down and Fail"
    );
    assert!(stderr(&out).contains("failed calling webhook \"deny.webhooks.example.io\""));
    api.apply(&configs(&hook, "Ignore", "Ignore", "/validate"));
    api.ok(&["create", "configmap", "b"]);
    let cm = api.json(&["get", "configmap", "b"]);
    assert!(cm["metadata"]["labels"]
        .get("webhook.example.io/mutated")
        .is_none());

    // Too slow: a webhook that answers after its timeout fails the request under Fail.
    api.apply(&configs(&hook2, "Ignore", "Fail", "/slow"));
    let out = api.run(&["create", "configmap", "c"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("deadline exceeded"),
        "{}",
        stderr(&out)
    );

    // Removing the configurations restores plain writes.
    api.ok(&["delete", "validatingwebhookconfiguration", "deny-names"]);
    api.ok(&["delete", "mutatingwebhookconfiguration", "label-configmaps"]);
    api.ok(&["create", "configmap", "forbidden-y"]);
}

#[test]
fn deletions_are_sent_to_the_webhooks_that_ask_for_them() {
    let api = Api::start();
    let hook = webhook::Webhook::start();
    api.ok(&["create", "configmap", "forbidden-x", "--from-literal=k=v"]);
    api.ok(&["create", "configmap", "ordinary", "--from-literal=k=v"]);
    api.apply(&format!(
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {{name: guard-deletes}}
webhooks:
- name: guard.webhooks.example.io
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
  clientConfig: {{url: {url}, caBundle: {ca}}}
  rules:
  - {{operations: [DELETE], apiGroups: [""], apiVersions: [v1], resources: [configmaps]}}
"#,
        url = hook.url("/validate"),
        ca = hook.ca_bundle,
    ));
    let seen = hook.users.lock().expect("users").len();
    let out = api.run(&["delete", "configmap", "forbidden-x"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("denied the request: names starting with forbidden- are refused"),
        "{}",
        stderr(&out)
    );
    assert!(
        hook.users.lock().expect("users").len() > seen,
        "the webhook was not called"
    );
    // `--all` deletes object by object: the refused one stays, the others go.
    let out = api.run(&["delete", "configmap", "--all"]);
    assert!(!out.status.success(), "{}", stderr(&out));
    api.ok(&["get", "configmap", "forbidden-x"]);
    assert!(!api.run(&["get", "configmap", "ordinary"]).status.success());
    // A DELETE of the collection asks for each object and stops at the refusal.
    let out = api.run(&["delete", "--raw", "/api/v1/namespaces/default/configmaps"]);
    assert!(!out.status.success(), "{}", stderr(&out));
    api.ok(&["get", "configmap", "forbidden-x"]);
    // Creates are not sent to a DELETE-only webhook.
    api.ok(&["create", "configmap", "forbidden-y", "--from-literal=k=v"]);
    api.ok(&["delete", "validatingwebhookconfiguration", "guard-deletes"]);
    common::wait_for(10, "the configuration to be gone", || {
        api.run(&["delete", "configmap", "forbidden-x"])
            .status
            .success()
            .then_some(())
    });
}

#[test]
fn bad_configurations_are_refused_with_the_field() {
    let api = Api::start();
    let path = api.tmp.path().join("bad.yaml");
    std::fs::write(
        &path,
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata: {name: bad}\nwebhooks:\n- name: short.name\n  admissionReviewVersions: [v1]\n  sideEffects: None\n  clientConfig: {url: 'https://127.0.0.1:1/'}\n",
    )
    .expect("write");
    let out = api.run(&["apply", "-f", path.to_str().expect("utf-8")]);
    assert!(
        stderr(&out).contains("webhooks[0].name: Invalid value: \"short.name\": should be a domain with at least three segments separated by dots"),
        "{}",
        stderr(&out)
    );
    std::fs::write(
        &path,
        "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata: {name: bad}\nwebhooks:\n- name: a.b.example.io\n  admissionReviewVersions: [v1]\n  sideEffects: None\n  clientConfig: {url: 'http://127.0.0.1:1/'}\n",
    )
    .expect("write");
    let out = api.run(&["apply", "-f", path.to_str().expect("utf-8")]);
    assert!(
        stderr(&out).contains("webhooks[0].clientConfig.url: Unsupported value: \"http\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn hostile_webhook_answers_fail_the_request_not_the_apiserver() {
    let api = Api::start();
    let hook = webhook::Webhook::start();
    for (path, want) in [
        ("/wrong-uid", "expected response.uid="),
        ("/huge", "the response is larger than"),
        ("/garbage", "bad AdmissionReview"),
    ] {
        api.apply(&configs(&hook, "Ignore", "Fail", path));
        let out = api.run(&["create", "configmap", "x"]);
        assert!(!out.status.success(), "{path} should fail the write");
        assert!(stderr(&out).contains(want), "{path}: {}", stderr(&out));
    }
    // A mutating webhook whose patch does not decode fails the write under Fail.
    let bad_patch = configs(&hook, "Fail", "Ignore", "/validate").replace("/mutate", "/bad-patch");
    api.apply(&bad_patch);
    let out = api.run(&["create", "configmap", "y"]);
    assert!(stderr(&out).contains("bad patch"), "{}", stderr(&out));
    // The apiserver still answers.
    api.ok(&["get", "configmaps"]);
}
