#!/usr/bin/env bash
# An admission webhook served by a pod, called by the apiserver on the master through the
# webhook's Service (the master runs the Service proxy and joins the pod overlay):
#   1. a CA and a serving certificate for sim-webhook.webhook-system.svc (openssl), the key in a
#      kubernetes.io/tls Secret; the `kimg sim webhook` Deployment, its Service and both
#      webhook configurations (manifests/webhook.yaml, caBundle filled in);
#   2. in a namespace the webhooks select, a ConfigMap named forbidden-* is refused by the
#      validating webhook, another one is created with the mutating webhook's label;
#   3. with the webhook scaled to zero, `failurePolicy: Fail` refuses the write.
# Prints what it saw, one line per check.
#   checks/webhook-pod.sh KUBECONFIG WORKDIR REPO
set -euo pipefail
kc=$1 work=$2 repo=$3
k() { kubectl --kubeconfig "$kc" "$@"; }
d=$work/webhook-pki
mkdir -p "$d"
if [ ! -f "$d/tls.crt" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=sim-webhook-ca \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=sim-webhook.webhook-system.svc \
    -keyout "$d/tls.key" -out "$d/tls.csr" 2>/dev/null
  printf 'subjectAltName=DNS:sim-webhook.webhook-system.svc,DNS:sim-webhook.webhook-system.svc.cluster.local\n' >"$d/ext"
  openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 2 -extfile "$d/ext" -out "$d/tls.crt" 2>/dev/null
fi
bundle=$(base64 -w0 <"$d/ca.crt")
sed "s|CA_BUNDLE|$bundle|" "$repo/qemu-tests/manifests/webhook.yaml" >"$work/webhook.yaml"
# The namespace first (the Secret lives there), then everything.
k create namespace webhook-system --dry-run=client -o yaml | k apply -f - >/dev/null
k -n webhook-system create secret tls sim-webhook-tls --cert "$d/tls.crt" --key "$d/tls.key" \
  --dry-run=client -o yaml | k apply -f - >/dev/null
k apply -f "$work/webhook.yaml" >/dev/null
k -n webhook-system rollout status deployment/sim-webhook --timeout=240s >/dev/null || {
  k -n webhook-system get pods -o wide >&2; k get events -A >&2 | tail -20; exit 1; }
echo "webhook pod ready on $(k -n webhook-system get pods -l app=sim-webhook -o jsonpath='{.items[0].spec.nodeName}')"
k create namespace webhook-test --dry-run=client -o yaml | k apply -f - >/dev/null
k label namespace webhook-test webhook-test=true --overwrite >/dev/null

# The Service's endpoints may lag the pod's readiness by a moment: retry the first call.
for i in $(seq 1 30); do
  out=$(k -n webhook-test create configmap forbidden-x 2>&1 || true)
  case $out in *"denied the request"*) break ;; esac
  sleep 2
done
echo "forbidden: $out"
k -n webhook-test create configmap allowed-x >/dev/null
echo "mutated label: $(k -n webhook-test get configmap allowed-x -o jsonpath='{.metadata.labels.webhook\.example\.io/mutated}')"

k -n webhook-system scale deployment/sim-webhook --replicas=0 >/dev/null
for i in $(seq 1 30); do
  out=$(k -n webhook-test create configmap down-x 2>&1 || true)
  case $out in *"failed calling webhook"*|*"Internal error"*) break ;; esac
  k -n webhook-test delete configmap down-x --ignore-not-found >/dev/null 2>&1 || true
  sleep 2
done
echo "down: $out"
# Leave the cluster as it was: nothing else is sent to the webhooks.
k delete mutatingwebhookconfiguration sim-webhook-label >/dev/null
k delete validatingwebhookconfiguration sim-webhook-names >/dev/null
