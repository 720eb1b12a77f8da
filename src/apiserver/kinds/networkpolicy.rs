//! `NetworkPolicy` (networking.k8s.io/v1, short name `netpol`): which traffic may reach
//! and leave the pods a selector picks. Served, defaulted (`policyTypes` from the rules
//! present, ports' protocol TCP) and validated as kube-apiserver does: policy types,
//! protocols, port numbers and ranges, CIDRs and their exceptions, peers that mix an IP
//! block with selectors. Limits: not enforced yet — kimg's proxy does not program policy
//! rules (issue 17).

use std::net::IpAddr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};

use super::{age, one_of, s, schema_of, selector_text, set_default, Col, Strategy};

pub static STRATEGY: Strategy = Strategy {
    schema: schema_of::<NetworkPolicy>,
    table: Some(table),
    defaults: Some(defaults),
    validate: Some(validate),
};

/// NAME, POD-SELECTOR, AGE (kubectl's columns).
fn table(o: &Value) -> (Vec<Col>, Vec<Value>) {
    (
        vec![
            ("Name", "string", 0),
            ("Pod-Selector", "string", 0),
            ("Age", "string", 0),
        ],
        vec![
            json!(s(o, "/metadata/name")),
            json!(selector_text(o.pointer("/spec/podSelector"))),
            json!(age(o)),
        ],
    )
}

/// `policyTypes`: `Ingress` always, `Egress` when egress rules are given; every port's
/// protocol: TCP.
fn defaults(o: &mut Value) {
    set_default(o, &["spec", "podSelector"], json!({}));
    if o.pointer("/spec/policyTypes").is_none_or(Value::is_null) {
        let mut types = vec!["Ingress"];
        if o.pointer("/spec/egress").is_some_and(|e| !e.is_null()) {
            types.push("Egress");
        }
        o["spec"]["policyTypes"] = json!(types);
    }
    for dir in ["ingress", "egress"] {
        let Some(rules) = o
            .pointer_mut(&format!("/spec/{dir}"))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for rule in rules {
            let Some(ports) = rule.get_mut("ports").and_then(Value::as_array_mut) else {
                continue;
            };
            for port in ports.iter_mut().filter(|p| p.is_object()) {
                set_default(port, &["protocol"], json!("TCP"));
            }
        }
    }
}

fn validate(new: &Value, _old: Option<&Value>) -> Result<(), String> {
    let types = new.pointer("/spec/policyTypes").and_then(Value::as_array);
    if types.is_some_and(|t| t.len() > 2) {
        return Err("spec.policyTypes: Invalid value: may not have more than 2 items".into());
    }
    for (i, _) in types.into_iter().flatten().enumerate() {
        one_of(
            new,
            &format!("/spec/policyTypes/{i}"),
            &format!("spec.policyTypes[{i}]"),
            &["Ingress", "Egress"],
        )?;
    }
    for (dir, peers) in [("ingress", "from"), ("egress", "to")] {
        let rules = new
            .pointer(&format!("/spec/{dir}"))
            .and_then(Value::as_array);
        for (i, rule) in rules.into_iter().flatten().enumerate() {
            let at = format!("spec.{dir}[{i}]");
            let ports = rule.get("ports").and_then(Value::as_array);
            for (j, port) in ports.into_iter().flatten().enumerate() {
                validate_port(port, &format!("{at}.ports[{j}]"))?;
            }
            let list = rule.get(peers).and_then(Value::as_array);
            for (j, peer) in list.into_iter().flatten().enumerate() {
                validate_peer(peer, &format!("{at}.{peers}[{j}]"))?;
            }
        }
    }
    Ok(())
}

fn validate_port(port: &Value, at: &str) -> Result<(), String> {
    one_of(
        port,
        "/protocol",
        &format!("{at}.protocol"),
        &["TCP", "UDP", "SCTP"],
    )?;
    let number = match port.get("port") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(p) if (1..=65535).contains(&p) => Some(p),
            _ => {
                return Err(format!(
                    "{at}.port: Invalid value: {n}: must be between 1 and 65535, inclusive"
                ))
            }
        },
        Some(Value::String(name)) => {
            if !is_port_name(name) {
                return Err(format!(
                    "{at}.port: Invalid value: {}: must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-), at most 15 characters, with at least one letter",
                    json!(name)
                ));
            }
            None
        }
        Some(v) => {
            return Err(format!(
                "{at}.port: Invalid value: {v}: must be a port number or name"
            ))
        }
    };
    match port.get("endPort").and_then(Value::as_i64) {
        None => Ok(()),
        Some(_) if number.is_none() => Err(format!(
            "{at}.endPort: Required value: may not be specified when `port` is non-numeric"
        )),
        Some(end) if end < number.unwrap_or(0) || end > 65535 => Err(format!(
            "{at}.endPort: Invalid value: {end}: must be greater than or equal to `port` and at most 65535"
        )),
        Some(_) => Ok(()),
    }
}

/// An IANA service name: lowercase alphanumerics and single hyphens, at most 15
/// characters, at least one letter.
fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn validate_peer(peer: &Value, at: &str) -> Result<(), String> {
    let has = |f: &str| peer.get(f).is_some_and(|v| !v.is_null());
    let selectors = has("podSelector") || has("namespaceSelector");
    match (has("ipBlock"), selectors) {
        (false, false) => Err(format!("{at}: Required value: must specify a peer")),
        (true, true) => Err(format!(
            "{at}: Forbidden: may not specify both ipBlock and another peer"
        )),
        (false, true) => Ok(()),
        (true, false) => {
            let cidr = peer.pointer("/ipBlock/cidr").and_then(Value::as_str);
            let Some(net) = cidr.and_then(parse_cidr) else {
                return Err(format!(
                    "{at}.ipBlock.cidr: Invalid value: {}: must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                    json!(cidr.unwrap_or_default())
                ));
            };
            let except = peer.pointer("/ipBlock/except").and_then(Value::as_array);
            for (k, e) in except.into_iter().flatten().enumerate() {
                let text = e.as_str().unwrap_or_default();
                match parse_cidr(text) {
                    Some(sub) if net.strictly_contains(&sub) => {}
                    Some(_) => {
                        return Err(format!(
                            "{at}.ipBlock.except[{k}]: Invalid value: {}: must be a strict subset of `cidr`",
                            json!(text)
                        ))
                    }
                    None => {
                        return Err(format!(
                            "{at}.ipBlock.except[{k}]: Invalid value: {}: must be a valid CIDR value",
                            json!(text)
                        ))
                    }
                }
            }
            Ok(())
        }
    }
}

/// An IP network: the address as a 128-bit number (IPv4 in the top 32 bits), the prefix
/// length counted in those 128 bits, and the family.
struct Cidr {
    bits: u128,
    prefix: u32,
    v4: bool,
}

impl Cidr {
    fn network(&self, prefix: u32) -> u128 {
        if prefix == 0 {
            0
        } else {
            self.bits & (u128::MAX << (128 - prefix))
        }
    }

    fn strictly_contains(&self, other: &Cidr) -> bool {
        self.v4 == other.v4
            && other.prefix > self.prefix
            && other.network(self.prefix) == self.network(self.prefix)
    }
}

fn parse_cidr(s: &str) -> Option<Cidr> {
    let (addr, prefix) = s.split_once('/')?;
    let prefix: u32 = prefix.parse().ok()?;
    match addr.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) if prefix <= 32 => Some(Cidr {
            bits: u128::from(u32::from(a)) << 96,
            prefix,
            v4: true,
        }),
        IpAddr::V6(a) if prefix <= 128 => Some(Cidr {
            bits: u128::from(a),
            prefix,
            v4: false,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn np(spec: Value) -> Value {
        let mut o = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                           "metadata": {"name": "db", "namespace": "shop"}, "spec": spec});
        defaults(&mut o);
        o
    }

    #[test]
    fn the_usual_policies_are_defaulted_accepted_and_printed() {
        let o = np(json!({
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}},
                                  {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                         "ports": [{"port": 5432}, {"port": "metrics"}, {"port": 30000, "endPort": 32767}]}],
        }));
        assert_eq!(validate(&o, None), Ok(()));
        assert_eq!(o["spec"]["policyTypes"], json!(["Ingress"]));
        assert_eq!(o["spec"]["ingress"][0]["ports"][0]["protocol"], "TCP");
        let (cols, cells) = table(&o);
        assert_eq!(cols.len(), cells.len());
        assert_eq!(cells[1], "app=db");
        let deny_all = np(json!({"egress": []}));
        assert_eq!(validate(&deny_all, None), Ok(()));
        assert_eq!(
            deny_all["spec"]["policyTypes"],
            json!(["Ingress", "Egress"])
        );
        assert_eq!(table(&deny_all).1[1], "<none>");
        let v6 = np(
            json!({"egress": [{"to": [{"ipBlock": {"cidr": "2001:db8::/32", "except": ["2001:db8:1::/48"]}}]}]}),
        );
        assert_eq!(validate(&v6, None), Ok(()));
    }

    #[test]
    fn each_refusal_names_the_field() {
        let cases = [
            (
                json!({"policyTypes": ["Sideways"]}),
                "spec.policyTypes[0]: Unsupported value",
            ),
            (
                json!({"ingress": [{"ports": [{"protocol": "ICMP", "port": 1}]}]}),
                "spec.ingress[0].ports[0].protocol: Unsupported value",
            ),
            (
                json!({"ingress": [{"ports": [{"port": 70000}]}]}),
                "must be between 1 and 65535",
            ),
            (
                json!({"ingress": [{"ports": [{"port": "Not_A_Name"}]}]}),
                "spec.ingress[0].ports[0].port",
            ),
            (
                json!({"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}),
                "endPort: Required value",
            ),
            (
                json!({"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
                "endPort: Invalid value: 80",
            ),
            (
                json!({"egress": [{"to": [{}]}]}),
                "spec.egress[0].to[0]: Required value",
            ),
            (
                json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
                "may not specify both ipBlock and another peer",
            ),
            (
                json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
                "ipBlock.cidr: Invalid value: \"10.0.0.0/33\"",
            ),
            (
                json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/8"]}}]}]}),
                "except[0]: Invalid value: \"10.0.0.0/8\": must be a strict subset",
            ),
            (
                json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["192.168.0.0/24"]}}]}]}),
                "must be a strict subset",
            ),
        ];
        for (spec, want) in cases {
            let err = validate(&np(spec.clone()), None).expect_err(&spec.to_string());
            assert!(err.contains(want), "{spec}: {err}");
        }
    }
}
