//! Service address allocation: ClusterIPs from the service CIDR and NodePorts from
//! 30000–32767, with validation of requested values.
//!
//! How: the addresses in use are read from the stored Services at allocation time; the
//! first usable address of the CIDR is reserved for the `kubernetes` Service, so automatic
//! allocation starts at the second; NodePorts are taken lowest-free-first. On update,
//! `clusterIP` is immutable (an empty value keeps the old one) and ports keep their
//! NodePort when the request leaves it out.
//!
//! Every address and NodePort is also claimed by an atomic create of one key per value
//! ([`CLAIMS`], the idea of kube-apiserver's `IPAddress` objects), so two Services created
//! at the same instant, through the same or different apiservers, never get the same one.
//! A claim names its Service; a claim whose Service no longer uses the value (deleted,
//! changed type, or never stored: a failed or dry-run create) is taken over once it is
//! older than [`CLAIM_GRACE`], so nothing leaks and no release step is needed.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::{json, Value};

use super::error::ApiError;
use super::State;
use crate::store::StoreError;

/// The NodePort range, as on a default cluster (and in the seeds).
pub const NODE_PORTS: std::ops::RangeInclusive<i64> = 30000..=32767;

fn invalid(svc: &Value, reason: String) -> ApiError {
    ApiError::Invalid {
        kind: "Service".into(),
        name: svc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        reason,
    }
}

/// Where claims live: `<CLAIMS>ip/<address>` and `<CLAIMS>nodeport/<port>`.
pub const CLAIMS: &str = "/registry/kimg/serviceclaims/";

/// How old a claim must be before a Service that does not use its value loses it (a
/// create in flight has claimed but not yet stored its Service).
pub const CLAIM_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Whether the stored Service `owner` (`namespace/name`) uses `value` of `kind`.
async fn owner_uses(st: &State, owner: &str, kind: &str, value: &str) -> Result<bool, ApiError> {
    let Some(kv) = st.store.get(&format!("/registry/services/{owner}")).await? else {
        return Ok(false);
    };
    let svc: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
    Ok(match kind {
        "ip" => svc.pointer("/spec/clusterIP").and_then(Value::as_str) == Some(value),
        _ => svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|p| {
                p.get("nodePort")
                    .and_then(Value::as_i64)
                    .map(|n| n.to_string())
                    .as_deref()
                    == Some(value)
            }),
    })
}

/// Claims `value` (an address or a NodePort, by `kind`) for the Service `owner`; false
/// when another Service holds it.
async fn claim(st: &State, kind: &str, value: &str, owner: &str) -> Result<bool, ApiError> {
    let key = format!("{CLAIMS}{kind}/{value}");
    let body = || {
        json!({"owner": owner, "at": unix_now()})
            .to_string()
            .into_bytes()
    };
    for _ in 0..3 {
        match st.store.create(&key, body()).await {
            Ok(_) => return Ok(true),
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let Some(kv) = st.store.get(&key).await? else {
            continue; // released meanwhile: create again
        };
        let held: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
        let holder = held["owner"].as_str().unwrap_or_default();
        if holder == owner {
            return Ok(true);
        }
        let age = unix_now().saturating_sub(held["at"].as_u64().unwrap_or(0));
        if age < CLAIM_GRACE.as_secs() || owner_uses(st, holder, kind, value).await? {
            return Ok(false);
        }
        match st.store.update(&key, body(), kv.mod_revision).await {
            Ok(_) => return Ok(true),
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}

/// ClusterIPs and NodePorts of every stored Service except `skip` (namespace/name).
async fn in_use(st: &State, skip: &str) -> Result<(HashSet<Ipv4Addr>, HashSet<i64>), ApiError> {
    let page = st
        .store
        .list("/registry/services/", Default::default())
        .await?;
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for kv in page.items {
        if kv.key.ends_with(skip) {
            continue;
        }
        let Ok(svc) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        if let Some(ip) = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
        {
            ips.insert(ip);
        }
        for p in svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
                ports.insert(np);
            }
        }
    }
    Ok((ips, ports))
}

/// Defaults a Service, validates its ports and assigns its ClusterIP and NodePorts.
pub async fn allocate(st: &State, svc: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
    if !svc.get("spec").is_some_and(Value::is_object) {
        svc["spec"] = json!({});
    }
    let typ = svc
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&typ.as_str()) {
        return Err(invalid(svc, format!("spec.type: Unsupported value: \"{typ}\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"")));
    }
    svc["spec"]["type"] = json!(typ);
    if svc.pointer("/spec/sessionAffinity").is_none() {
        svc["spec"]["sessionAffinity"] = json!("None");
    }
    let ns = svc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = svc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (used_ips, used_ports) = in_use(st, &format!("/{ns}/{name}")).await?;
    let owner = format!("{ns}/{name}");
    let wants_node_ports = typ == "NodePort" || typ == "LoadBalancer";
    let old_ports: Vec<Value> = old
        .and_then(|o| o.pointer("/spec/ports"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut taken = used_ports;
    let mut ports = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, p) in ports.iter_mut().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            return Err(invalid(svc, format!("spec.ports[{i}].port: Invalid value: {port}: must be between 1 and 65535, inclusive")));
        }
        if p.get("protocol").is_none() {
            p["protocol"] = json!("TCP");
        }
        if p.get("targetPort").is_none() {
            p["targetPort"] = json!(port);
        }
        let requested = p.get("nodePort").and_then(Value::as_i64);
        if !wants_node_ports {
            if requested.is_some() && old.is_none() {
                return Err(invalid(svc, format!("spec.ports[{i}].nodePort: Forbidden: may not be used when `type` is '{typ}'")));
            }
            if let Some(m) = p.as_object_mut() {
                m.remove("nodePort");
            }
            continue;
        }
        let kept = old_ports
            .iter()
            .find(|o| {
                o.get("port") == p.get("port")
                    && o.get("protocol").unwrap_or(&json!("TCP")) == &p["protocol"]
            })
            .and_then(|o| o.get("nodePort").and_then(Value::as_i64));
        let node_port = match requested.or(kept) {
            Some(np) if !NODE_PORTS.contains(&np) => {
                return Err(invalid(svc, format!("spec.ports[{i}].nodePort: Invalid value: {np}: provided port is not in the valid range. The range of valid ports is 30000-32767")));
            }
            Some(np)
                if taken.contains(&np)
                    || !claim(st, "nodeport", &np.to_string(), &owner).await? =>
            {
                return Err(invalid(svc, format!("spec.ports[{i}].nodePort: Invalid value: {np}: provided port is already allocated")));
            }
            Some(np) => np,
            None => {
                let mut found = None;
                for np in NODE_PORTS.clone().filter(|np| !taken.contains(np)) {
                    if claim(st, "nodeport", &np.to_string(), &owner).await? {
                        found = Some(np);
                        break;
                    }
                }
                found.ok_or_else(|| {
                    invalid(
                        svc,
                        format!("spec.ports[{i}].nodePort: Internal error: range is full"),
                    )
                })?
            }
        };
        taken.insert(node_port);
        p["nodePort"] = json!(node_port);
    }
    if svc.pointer("/spec/ports").is_some() || !ports.is_empty() {
        svc["spec"]["ports"] = Value::Array(ports);
    }
    if typ == "ExternalName" {
        return Ok(());
    }
    let requested = svc
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let old_ip = old
        .and_then(|o| o.pointer("/spec/clusterIP"))
        .and_then(Value::as_str);
    let ip = match (old_ip, requested.as_str()) {
        (Some(old_ip), "") => old_ip.to_string(),
        (Some(old_ip), r) if r != old_ip => {
            return Err(invalid(
                svc,
                format!("spec.clusterIP: Invalid value: \"{r}\": field is immutable"),
            ));
        }
        (_, "None") => {
            if typ != "ClusterIP" {
                return Err(invalid(svc, format!("spec.clusterIP: Invalid value: \"None\": may not be set to 'None' for {typ} services")));
            }
            "None".to_string()
        }
        (Some(old_ip), _) => old_ip.to_string(),
        (None, "") => {
            let mut found = None;
            for a in st
                .service_cidr
                .hosts()
                .skip(1)
                .filter(|a| !used_ips.contains(a))
            {
                if claim(st, "ip", &a.to_string(), &owner).await? {
                    found = Some(a);
                    break;
                }
            }
            found
                .ok_or_else(|| {
                    invalid(
                        svc,
                        "spec.clusterIP: Internal error: the service CIDR is full".into(),
                    )
                })?
                .to_string()
        }
        (None, r) => {
            let addr: Ipv4Addr = r.parse().map_err(|_| {
                invalid(
                    svc,
                    format!("spec.clusterIP: Invalid value: \"{r}\": must be a valid IP address"),
                )
            })?;
            if !st.service_cidr.contains(&addr)
                || addr == st.service_cidr.network()
                || addr == st.service_cidr.broadcast()
            {
                return Err(invalid(svc, format!("spec.clusterIP: Invalid value: \"{r}\": provided IP is not in the valid range. The range of valid IPs is {}", st.service_cidr)));
            }
            if used_ips.contains(&addr) || !claim(st, "ip", r, &owner).await? {
                return Err(invalid(
                    svc,
                    format!(
                        "spec.clusterIP: Invalid value: \"{r}\": provided IP is already allocated"
                    ),
                ));
            }
            r.to_string()
        }
    };
    svc["spec"]["clusterIP"] = json!(ip);
    svc["spec"]["clusterIPs"] = json!([ip]);
    if ip != "None" {
        svc["spec"]["ipFamilies"] = json!(["IPv4"]);
        svc["spec"]["ipFamilyPolicy"] = json!("SingleStack");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, Store};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn services_created_at_the_same_instant_get_distinct_addresses_and_ports() {
        let store = Arc::new(MemoryStore::new());
        let st = Arc::new(State::for_tests(store.clone()));
        let mut tasks = Vec::new();
        for i in 0..24 {
            let st = st.clone();
            tasks.push(tokio::spawn(async move {
                let mut svc = svc(
                    &format!("s{i}"),
                    json!({"type": "NodePort", "ports": [{"port": 80}]}),
                );
                allocate(&st, &mut svc, None).await.expect("allocate");
                stored(&st, &svc).await;
                (
                    svc["spec"]["clusterIP"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    svc["spec"]["ports"][0]["nodePort"]
                        .as_i64()
                        .unwrap_or_default(),
                )
            }));
        }
        let mut ips = HashSet::new();
        let mut ports = HashSet::new();
        for t in tasks {
            let (ip, port) = t.await.expect("task");
            assert!(ips.insert(ip.clone()), "{ip} handed out twice");
            assert!(ports.insert(port), "{port} handed out twice");
        }
        // A Service that was never stored (a failed create) loses its claim after the
        // grace period, and only then.
        let mut ghost = svc(
            "ghost",
            json!({"clusterIP": "10.96.1.1", "ports": [{"port": 1}]}),
        );
        allocate(&st, &mut ghost, None).await.expect("claim");
        let mut late = svc(
            "late",
            json!({"clusterIP": "10.96.1.1", "ports": [{"port": 1}]}),
        );
        assert!(
            allocate(&st, &mut late, None).await.is_err(),
            "a fresh claim holds"
        );
        let key = format!("{CLAIMS}ip/10.96.1.1");
        let kv = store.get(&key).await.expect("get").expect("claim");
        let old = json!({"owner": "default/ghost", "at": 0})
            .to_string()
            .into_bytes();
        store
            .update(&key, old, kv.mod_revision)
            .await
            .expect("age the claim");
        allocate(&st, &mut late, None)
            .await
            .expect("a stale claim is taken over");
        assert_eq!(late["spec"]["clusterIP"], "10.96.1.1");
    }
    use std::sync::Arc;

    async fn stored(st: &State, svc: &Value) {
        let key = format!(
            "/registry/services/default/{}",
            svc["metadata"]["name"].as_str().expect("name")
        );
        st.store
            .create(&key, serde_json::to_vec(svc).expect("json"))
            .await
            .expect("create");
    }

    fn svc(name: &str, spec: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})
    }

    #[tokio::test]
    async fn cluster_ips_skip_the_kubernetes_address_and_those_in_use() {
        let st = State::for_tests(Arc::new(MemoryStore::new()));
        let mut a = svc("a", json!({"ports": [{"port": 80}]}));
        allocate(&st, &mut a, None).await.expect("allocate");
        assert_eq!(a["spec"]["clusterIP"], "10.96.0.2");
        assert_eq!(a["spec"]["ports"][0]["targetPort"], 80);
        stored(&st, &a).await;
        let mut b = svc("b", json!({"ports": [{"port": 80}]}));
        allocate(&st, &mut b, None).await.expect("allocate");
        assert_eq!(b["spec"]["clusterIP"], "10.96.0.3");
        let mut dup = svc(
            "c",
            json!({"clusterIP": "10.96.0.2", "ports": [{"port": 1}]}),
        );
        assert!(matches!(
            allocate(&st, &mut dup, None).await,
            Err(ApiError::Invalid { .. })
        ));
        let mut outside = svc(
            "d",
            json!({"clusterIP": "192.168.0.1", "ports": [{"port": 1}]}),
        );
        assert!(allocate(&st, &mut outside, None).await.is_err());
        let mut headless = svc("e", json!({"clusterIP": "None", "ports": [{"port": 1}]}));
        allocate(&st, &mut headless, None).await.expect("headless");
        assert_eq!(headless["spec"]["clusterIP"], "None");
    }

    #[tokio::test]
    async fn node_ports_are_allocated_validated_and_kept_on_update() {
        let st = State::for_tests(Arc::new(MemoryStore::new()));
        let mut a = svc(
            "a",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}, {"port": 443}]}),
        );
        allocate(&st, &mut a, None).await.expect("allocate");
        assert_eq!(a["spec"]["ports"][1]["nodePort"], 30000);
        stored(&st, &a).await;
        let mut clash = svc(
            "b",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
        );
        let err = allocate(&st, &mut clash, None).await.expect_err("clash");
        assert!(err.to_string().contains("already allocated"), "{err}");
        let mut out_of_range = svc(
            "c",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 8080}]}),
        );
        let err = allocate(&st, &mut out_of_range, None)
            .await
            .expect_err("range");
        assert!(err.to_string().contains("30000-32767"), "{err}");
        let mut update = svc(
            "a",
            json!({"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}),
        );
        allocate(&st, &mut update, Some(&a)).await.expect("update");
        assert_eq!(update["spec"]["ports"][0]["nodePort"], 30080);
        assert_eq!(update["spec"]["clusterIP"], a["spec"]["clusterIP"]);
        let mut moved = svc(
            "a",
            json!({"clusterIP": "10.96.0.77", "ports": [{"port": 80}]}),
        );
        assert!(allocate(&st, &mut moved, Some(&a)).await.is_err());
    }
}
