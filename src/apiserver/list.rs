//! Reading collections: selectors, `limit`/`continue` paging and the list's
//! `resourceVersion`.
//!
//! How: a list reads the store range of the collection (one namespace or all) at one
//! revision, keeps the objects the selectors match, and stops after `limit` matches; the
//! `continue` token encodes the revision and the last key read, so the next page reads the
//! same snapshot (410 Gone once that revision is compacted). Reads go through the watch
//! cache (`resourceVersion=0`: whatever it holds; unset: consistent). A field selector that pins
//! `metadata.name` inside a namespace reads the one key. Limits: `resourceVersion` on a list
//! is honoured only with `resourceVersionMatch=Exact` (otherwise the newest data is read,
//! which satisfies `NotOlderThan`).

use base64::Engine;
use serde_json::{json, Value};

use super::error::ApiError;
use super::http::Req;
use super::object::{self, parse_rv};
use super::resources::Resource;
use super::selector::Selector;
use super::State;
use crate::store::ListOptions;

/// The list options of a request.
#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    pub labels: Selector,
    pub fields: Selector,
    pub limit: Option<usize>,
    /// `(revision, last key)` from a `continue` token.
    pub after: Option<(i64, String)>,
    pub revision: Option<i64>,
    /// `resourceVersion=0`: any cached state will do.
    pub any: bool,
}

/// One page of a list.
pub struct Page {
    pub items: Vec<Value>,
    pub revision: i64,
    pub continue_token: Option<String>,
}

fn bad(reason: String) -> ApiError {
    ApiError::BadQuery { reason }
}

fn encode_continue(rev: i64, key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"rv": rev, "start": key}).to_string())
}

fn decode_continue(token: &str) -> Result<(i64, String), ApiError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad("invalid continue token".into()))?;
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|_| bad("invalid continue token".into()))?;
    match (v["rv"].as_i64(), v["start"].as_str()) {
        (Some(rv), Some(start)) => Ok((rv, start.to_string())),
        _ => Err(bad("invalid continue token".into())),
    }
}

impl ListQuery {
    /// Reads `labelSelector`, `fieldSelector`, `limit`, `continue`, `resourceVersion` and
    /// `resourceVersionMatch`.
    pub fn from_req(req: &Req) -> Result<ListQuery, ApiError> {
        let mut q = ListQuery::default();
        if let Some(s) = req.q("labelSelector") {
            q.labels = Selector::labels(s).map_err(bad)?;
        }
        if let Some(s) = req.q("fieldSelector") {
            q.fields = Selector::fields(s).map_err(bad)?;
        }
        if let Some(l) = req.q("limit").filter(|l| !l.is_empty()) {
            let n: i64 = l.parse().map_err(|_| bad(format!("invalid limit {l:?}")))?;
            q.limit = usize::try_from(n).ok().filter(|n| *n > 0);
        }
        if let Some(c) = req.q("continue").filter(|c| !c.is_empty()) {
            q.after = Some(decode_continue(c)?);
        }
        q.any = req.q("resourceVersion") == Some("0");
        if req.q("resourceVersionMatch") == Some("Exact") {
            if let Some(rv) = req.q("resourceVersion") {
                q.revision = Some(parse_rv(rv)?);
            }
        }
        Ok(q)
    }

    /// Whether an object passes both selectors.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

/// A page's list metadata, without its items.
pub struct PageMeta {
    pub revision: i64,
    pub continue_token: Option<String>,
    pub remaining: i64,
}

/// Reads one page of `res` in `namespace` (or all namespaces).
pub async fn list_objects(
    st: &State,
    res: &Resource,
    namespace: Option<&str>,
    q: &ListQuery,
) -> Result<Page, ApiError> {
    let mut items = Vec::new();
    let meta = visit_objects(st, res, namespace, q, |obj| items.push(obj)).await?;
    Ok(Page {
        items,
        revision: meta.revision,
        continue_token: meta.continue_token,
    })
}

/// Reads one page like [`list_objects`], handing each matching object to `f` as soon as it
/// is decoded instead of collecting them: a LIST of 10,000 pods then holds one decoded
/// object at a time, not 10,000.
pub async fn visit_objects(
    st: &State,
    res: &Resource,
    namespace: Option<&str>,
    q: &ListQuery,
    mut f: impl FnMut(Value),
) -> Result<PageMeta, ApiError> {
    if let (Some(name), None) = (q.fields.pinned_name(), &q.after) {
        if namespace.is_some() || !res.namespaced {
            let kv = st.store.get(&res.key(namespace, name)).await?;
            let revision = st.store.current_revision().await?;
            if let Some(kv) = kv {
                let mut obj = object::from_kv(&kv)?;
                super::crd::present(res, &mut obj);
                if q.matches(&obj) {
                    f(obj);
                }
            }
            return Ok(PageMeta {
                revision,
                continue_token: None,
                remaining: 0,
            });
        }
    }
    let prefix = res.prefix(namespace);
    let (mut revision, mut start_after) = match &q.after {
        Some((rv, key)) => (Some(*rv), Some(key.clone())),
        None => (q.revision, None),
    };
    let mut count = 0usize;
    loop {
        let want = q.limit.map(|l| l.saturating_sub(count).max(1));
        let page = st
            .list(
                &prefix,
                ListOptions {
                    limit: want,
                    start_after: start_after.clone(),
                    revision,
                },
                q.any,
            )
            .await?;
        revision = Some(page.revision);
        let last_key = page.items.last().map(|kv| kv.key.clone());
        for kv in &page.items {
            let mut obj = object::from_kv(kv)?;
            super::crd::present(res, &mut obj);
            if q.matches(&obj) {
                count += 1;
                f(obj);
            }
        }
        let full = q.limit.is_some_and(|l| count >= l);
        if !page.more || last_key.is_none() {
            return Ok(PageMeta {
                revision: page.revision,
                continue_token: None,
                remaining: 0,
            });
        }
        if full {
            let token = last_key
                .as_deref()
                .map(|k| encode_continue(page.revision, k));
            return Ok(PageMeta {
                revision: page.revision,
                continue_token: token,
                remaining: page.remaining,
            });
        }
        start_after = last_key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::by_plural;
    use crate::store::{MemoryStore, Store};
    use std::sync::Arc;

    async fn state_with_configmaps(n: usize) -> State {
        let store = Arc::new(MemoryStore::new());
        for i in 0..n {
            let obj = json!({"metadata": {"name": format!("cm{i:02}"), "namespace": "default",
                                          "labels": {"parity": if i % 2 == 0 { "even" } else { "odd" }}}});
            store
                .create(
                    &format!("/registry/configmaps/default/cm{i:02}"),
                    serde_json::to_vec(&obj).expect("json"),
                )
                .await
                .expect("create");
        }
        State::for_tests(store)
    }

    #[tokio::test]
    async fn paging_with_a_selector_fills_pages_and_continues_on_the_same_snapshot() {
        let st = state_with_configmaps(10).await;
        let cms = by_plural("configmaps").expect("cm");
        let mut q = ListQuery {
            labels: Selector::labels("parity=even").expect("selector"),
            limit: Some(2),
            ..Default::default()
        };
        let first = list_objects(&st, cms, Some("default"), &q)
            .await
            .expect("list");
        assert_eq!(first.items.len(), 2);
        let token = first.continue_token.clone().expect("more pages");
        st.store
            .create(
                "/registry/configmaps/default/cm99",
                b"{\"metadata\":{\"name\":\"cm99\",\"labels\":{\"parity\":\"even\"}}}".to_vec(),
            )
            .await
            .expect("create");
        q.after = Some(decode_continue(&token).expect("token"));
        q.limit = Some(10);
        let rest = list_objects(&st, cms, Some("default"), &q)
            .await
            .expect("list");
        let names: Vec<&str> = rest
            .items
            .iter()
            .filter_map(|o| o["metadata"]["name"].as_str())
            .collect();
        assert_eq!(
            names,
            ["cm04", "cm06", "cm08"],
            "the snapshot excludes cm99"
        );
        assert_eq!(rest.revision, first.revision);
        assert!(rest.continue_token.is_none());
    }

    #[tokio::test]
    async fn a_field_selector_on_the_name_reads_one_object() {
        let st = state_with_configmaps(3).await;
        let cms = by_plural("configmaps").expect("cm");
        let q = ListQuery {
            fields: Selector::fields("metadata.name=cm01").expect("selector"),
            ..Default::default()
        };
        let page = list_objects(&st, cms, Some("default"), &q)
            .await
            .expect("list");
        assert_eq!(page.items.len(), 1);
        let kv = st
            .store
            .get("/registry/configmaps/default/cm01")
            .await
            .expect("get")
            .expect("kv");
        assert_eq!(
            page.items[0]["metadata"]["resourceVersion"],
            kv.mod_revision.to_string()
        );
    }

    #[test]
    fn garbage_continue_tokens_are_a_bad_request() {
        assert!(matches!(
            decode_continue("%%%"),
            Err(ApiError::BadQuery { .. })
        ));
        let t = encode_continue(5, "/registry/x/y");
        assert_eq!(
            decode_continue(&t).expect("token"),
            (5, "/registry/x/y".into())
        );
    }
}
