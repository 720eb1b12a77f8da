//! Filters and scores: where a pod may go, and which feasible node is best.
//!
//! Filters (each returns the [`Reason`] a node is rejected for, first failure wins):
//! node name, unschedulable, NotReady, nodeSelector plus required node affinity, taints
//! (NoSchedule, NoExecute), host ports, resources (cpu, memory, pod count), required pod
//! affinity and anti-affinity. Scores (0–100 each, summed): least allocated, balanced
//! allocation, spreading one controller's pods, preferred node affinity, preferred pod
//! (anti-)affinity, PreferNoSchedule taints.
//!
//! How: [`PodView`] precomputes what the filters need from the pod once (requests, pod
//! affinity topology values), so checking a node allocates nothing. Limits: pod
//! (anti-)affinity of *existing* pods against the new one (symmetry) is not checked;
//! topology keys other than the hostname are matched through node labels.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm, Taint, Toleration};

use super::cache::{Cache, NodeInfo, PodInfo};
use crate::client::labels::{node_term_matches, selector_matches};

/// Why a node cannot take a pod (texts as kube-scheduler prints them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    NodeName,
    Unschedulable,
    NotReady,
    Affinity,
    Taint,
    Ports,
    Cpu,
    Memory,
    Pods,
    PodAffinity,
    PodAntiAffinity,
}

impl Reason {
    pub fn text(self) -> &'static str {
        match self {
            Reason::NodeName => "node(s) didn't match the requested node name",
            Reason::Unschedulable => "node(s) were unschedulable",
            Reason::NotReady => "node(s) were not ready",
            Reason::Affinity => "node(s) didn't match Pod's node affinity/selector",
            Reason::Taint => "node(s) had untolerated taint(s)",
            Reason::Ports => "node(s) didn't have free ports for the requested pod ports",
            Reason::Cpu => "Insufficient cpu",
            Reason::Memory => "Insufficient memory",
            Reason::Pods => "Too many pods",
            Reason::PodAffinity => "node(s) didn't match pod affinity rules",
            Reason::PodAntiAffinity => "node(s) didn't match pod anti-affinity rules",
        }
    }
}

/// What the filters and scores need from the pod, computed once per attempt.
pub struct PodView<'a> {
    pub pod: &'a Pod,
    pub info: PodInfo,
    /// Per required affinity term: topology values that hold a matching pod.
    affinity_values: Vec<HashSet<String>>,
    affinity_self_ok: bool,
    anti_values: Vec<HashSet<String>>,
}

fn term_namespaces<'t>(term: &'t PodAffinityTerm, own: &'t str) -> Vec<&'t str> {
    match term.namespaces.as_deref() {
        Some(ns) if !ns.is_empty() => ns.iter().map(String::as_str).collect(),
        _ => vec![own],
    }
}

fn topology_values(cache: &Cache, term: &PodAffinityTerm, own_ns: &str) -> HashSet<String> {
    let namespaces = term_namespaces(term, own_ns);
    let sel = term.label_selector.clone().unwrap_or_default();
    let mut out = HashSet::new();
    for n in &cache.nodes {
        let Some(v) = n.labels.get(&term.topology_key) else {
            continue;
        };
        if n.pods
            .iter()
            .any(|p| namespaces.contains(&&*p.namespace) && selector_matches(&sel, &p.labels))
        {
            out.insert(v.clone());
        }
    }
    out
}

impl<'a> PodView<'a> {
    pub fn new(pod: &'a Pod, cache: &Cache) -> PodView<'a> {
        let info = PodInfo::from_pod(pod);
        let aff = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
        let required = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<HashSet<String>> {
            terms
                .into_iter()
                .flatten()
                .map(|t| topology_values(cache, t, &info.namespace))
                .collect()
        };
        let aff_terms = aff.and_then(|a| a.pod_affinity.as_ref()).and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
        let anti_terms = aff
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            });
        let affinity_values = required(aff_terms);
        // Kubernetes lets the first pod of a self-affine group through when nothing matches.
        let affinity_self_ok = affinity_values.iter().all(HashSet::is_empty)
            && aff_terms.into_iter().flatten().all(|t| {
                selector_matches(&t.label_selector.clone().unwrap_or_default(), &info.labels)
            });
        let anti_values = required(anti_terms);
        PodView {
            pod,
            info,
            affinity_values,
            affinity_self_ok,
            anti_values,
        }
    }

    fn spec(&self) -> Option<&k8s_openapi::api::core::v1::PodSpec> {
        self.pod.spec.as_ref()
    }

    fn tolerations(&self) -> &[Toleration] {
        self.spec()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default()
    }
}

/// Whether `tol` tolerates `taint`.
pub fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = tol.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    match tol.key.as_deref().filter(|k| !k.is_empty()) {
        None => tol.operator.as_deref() == Some("Exists"),
        Some(k) if k != taint.key => false,
        Some(_) => match tol.operator.as_deref() {
            Some("Exists") => true,
            _ => {
                tol.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
            }
        },
    }
}

/// Whether any of `tols` tolerates `taint`.
pub fn tolerated(tols: &[Toleration], taint: &Taint) -> bool {
    tols.iter().any(|t| tolerates(t, taint))
}

/// Whether the pod's nodeSelector and required node affinity accept `node`.
pub fn node_affinity_matches(pod: &Pod, node: &NodeInfo) -> bool {
    let Some(spec) = &pod.spec else {
        return true;
    };
    if let Some(sel) = &spec.node_selector {
        if sel.iter().any(|(k, v)| node.labels.get(k) != Some(v)) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        Some(req) => req
            .node_selector_terms
            .iter()
            .any(|t| node_term_matches(t, &node.name, &node.labels)),
        None => true,
    }
}

/// Runs every filter; `None` means the node fits.
pub fn filter(view: &PodView, node: &NodeInfo) -> Option<Reason> {
    let spec = view.spec();
    if let Some(want) = spec
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
    {
        if want != &*node.name {
            return Some(Reason::NodeName);
        }
    }
    let tols = view.tolerations();
    if node.unschedulable {
        let t = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerated(tols, &t) {
            return Some(Reason::Unschedulable);
        }
    }
    if !node.ready {
        // Daemon pods tolerate not-ready nodes.
        let t = Taint {
            key: "node.kubernetes.io/not-ready".into(),
            effect: "NoExecute".into(),
            ..Default::default()
        };
        if !tolerated(tols, &t) {
            return Some(Reason::NotReady);
        }
    }
    if !node_affinity_matches(view.pod, node) {
        return Some(Reason::Affinity);
    }
    if node
        .taints
        .iter()
        .any(|t| (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerated(tols, t))
    {
        return Some(Reason::Taint);
    }
    for (proto, ip, port) in &view.info.host_ports {
        let clash = node
            .pods
            .iter()
            .flat_map(|p| &p.host_ports)
            .any(|(p2, ip2, port2)| {
                port == port2 && proto == p2 && (ip == ip2 || ip == "0.0.0.0" || ip2 == "0.0.0.0")
            });
        if clash {
            return Some(Reason::Ports);
        }
    }
    let req = &view.info.requests;
    if node.pods.len() as i64 + 1 > node.max_pods {
        return Some(Reason::Pods);
    }
    if req.cpu > 0 && node.requested.cpu + req.cpu > node.allocatable.cpu {
        return Some(Reason::Cpu);
    }
    if req.memory > 0 && node.requested.memory + req.memory > node.allocatable.memory {
        return Some(Reason::Memory);
    }
    let aff = spec.and_then(|s| s.affinity.as_ref());
    if !view.affinity_values.is_empty() && !view.affinity_self_ok {
        let terms = aff
            .and_then(|a| a.pod_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default();
        let ok = terms.iter().zip(&view.affinity_values).all(|(t, vals)| {
            node.labels
                .get(&t.topology_key)
                .is_some_and(|v| vals.contains(v))
        });
        if !ok {
            return Some(Reason::PodAffinity);
        }
    }
    if !view.anti_values.is_empty() {
        let terms = aff
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default();
        let clash = terms.iter().zip(&view.anti_values).any(|(t, vals)| {
            node.labels
                .get(&t.topology_key)
                .is_some_and(|v| vals.contains(v))
        });
        if clash {
            return Some(Reason::PodAntiAffinity);
        }
    }
    None
}

/// Raw scores of one feasible node, normalised across nodes by [`pick`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw {
    pub node: usize,
    /// Least-allocated plus balanced, already 0–200.
    pub fixed: i64,
    /// Pods of the same controller on the node (lower is better).
    pub same_owner: i64,
    /// Preferred node and pod affinity weights (higher is better, may be negative).
    pub preferred: i64,
    /// Untolerated PreferNoSchedule taints (lower is better).
    pub soft_taints: i64,
}

fn frac(used: i64, cap: i64) -> f64 {
    if cap <= 0 {
        1.0
    } else {
        (used as f64 / cap as f64).min(1.0)
    }
}

/// Scores `node` for the pod.
pub fn score(view: &PodView, node: &NodeInfo, idx: usize) -> Raw {
    let req = &view.info.requests;
    // Like kube-scheduler, pods without requests count as 100m / 200Mi for scoring.
    let cpu = if req.cpu == 0 { 100 } else { req.cpu };
    let mem = if req.memory == 0 {
        200 << 20
    } else {
        req.memory
    };
    let fc = frac(node.requested.cpu + cpu, node.allocatable.cpu);
    let fm = frac(node.requested.memory + mem, node.allocatable.memory);
    let least = ((1.0 - fc) + (1.0 - fm)) * 50.0;
    let balanced = (1.0 - (fc - fm).abs()) * 100.0;
    let same_owner = match &view.info.owner {
        Some(o) => node
            .pods
            .iter()
            .filter(|p| p.owner.as_deref() == Some(&**o))
            .count() as i64,
        None => 0,
    };
    let mut preferred = 0i64;
    let aff = view.spec().and_then(|s| s.affinity.as_ref());
    if let Some(terms) = aff.and_then(|a| a.node_affinity.as_ref()).and_then(|a| {
        a.preferred_during_scheduling_ignored_during_execution
            .as_ref()
    }) {
        for t in terms {
            if node_term_matches(&t.preference, &node.name, &node.labels) {
                preferred += i64::from(t.weight);
            }
        }
    }
    let pod_terms = |anti: bool| {
        let a = aff.and_then(|a| {
            if anti {
                a.pod_anti_affinity.as_ref().and_then(|p| {
                    p.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                })
            } else {
                a.pod_affinity.as_ref().and_then(|p| {
                    p.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                })
            }
        });
        a.into_iter().flatten()
    };
    for (anti, sign) in [(false, 1), (true, -1)] {
        for w in pod_terms(anti) {
            let t = &w.pod_affinity_term;
            if !node.labels.contains_key(&t.topology_key) {
                continue;
            }
            let namespaces = term_namespaces(t, &view.info.namespace);
            let sel = t.label_selector.clone().unwrap_or_default();
            if node
                .pods
                .iter()
                .any(|p| namespaces.contains(&&*p.namespace) && selector_matches(&sel, &p.labels))
            {
                preferred += sign * i64::from(w.weight);
            }
        }
    }
    let tols = view.tolerations();
    let soft_taints = node
        .taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(tols, t))
        .count() as i64;
    Raw {
        node: idx,
        fixed: (least + balanced) as i64,
        same_owner,
        preferred,
        soft_taints,
    }
}

/// Normalises the raw scores and returns the index of the best node (first wins ties).
pub fn pick(raws: &[Raw]) -> Option<usize> {
    let max_owner = raws.iter().map(|r| r.same_owner).max().unwrap_or(0);
    let max_taints = raws.iter().map(|r| r.soft_taints).max().unwrap_or(0);
    let (min_pref, max_pref) = raws.iter().fold((i64::MAX, i64::MIN), |(lo, hi), r| {
        (lo.min(r.preferred), hi.max(r.preferred))
    });
    let norm_down = |v: i64, max: i64| if max == 0 { 100 } else { 100 * (max - v) / max };
    raws.iter()
        .map(|r| {
            let pref = if max_pref > min_pref {
                100 * (r.preferred - min_pref) / (max_pref - min_pref)
            } else {
                0
            };
            let total = r.fixed
                + 2 * norm_down(r.same_owner, max_owner)
                + 2 * pref
                + norm_down(r.soft_taints, max_taints);
            (total, r.node)
        })
        .fold(None, |best: Option<(i64, usize)>, cur| match best {
            Some(b) if b.0 >= cur.0 => Some(b),
            _ => Some(cur),
        })
        .map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_key_with_exists_tolerates_every_taint() {
        let tol = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        let taint = Taint {
            key: "a".into(),
            value: Some("b".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        assert!(tolerates(&tol, &taint));
    }

    #[test]
    fn a_toleration_must_match_key_value_and_effect() {
        let taint = Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let tol = |v: &str, e: Option<&str>| Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some(v.into()),
            effect: e.map(Into::into),
            ..Default::default()
        };
        assert!(tolerates(&tol("gpu", None), &taint));
        assert!(tolerates(&tol("gpu", Some("NoSchedule")), &taint));
        assert!(!tolerates(&tol("gpu", Some("NoExecute")), &taint));
        assert!(!tolerates(&tol("cpu", None), &taint));
    }

    #[test]
    fn fewer_pods_of_the_same_controller_wins() {
        let raws = [
            Raw {
                node: 0,
                fixed: 150,
                same_owner: 2,
                ..Default::default()
            },
            Raw {
                node: 1,
                fixed: 150,
                same_owner: 0,
                ..Default::default()
            },
        ];
        assert_eq!(pick(&raws), Some(1));
    }
}
