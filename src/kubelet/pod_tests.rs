//! The pod state machine against a scripted fake runtime (no containerd, no root).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Container, ExecAction, Pod, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::*;

/// One side effect the worker asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    CreateSandbox(String),
    RemoveSandbox(String),
    Create(String),
    Start(String),
    Kill(String, u32),
    Remove(String),
    Exec(String),
}

/// Each `start` of a container pops the next (run time, exit code); with none left the
/// task runs until killed. `exec` answers with `exec_code`.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<Call>>,
    script: Mutex<HashMap<String, VecDeque<(Duration, u32)>>>,
    current: Mutex<HashMap<String, Option<(Duration, u32)>>>,
    killed: Mutex<HashMap<String, u32>>,
    notify: tokio::sync::Notify,
    exec_code: Mutex<u32>,
    /// Tasks an earlier run left (adoption), and whether its sandbox is still pinned.
    left: Mutex<HashMap<String, TaskState>>,
    sandbox_pinned: Mutex<bool>,
}

impl Fake {
    fn script(&self, id: &str, runs: &[(u64, u32)]) {
        self.script.lock().unwrap().insert(
            id.into(),
            runs.iter()
                .map(|(ms, c)| (Duration::from_millis(*ms), *c))
                .collect(),
        );
    }
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    fn log(&self, c: Call) {
        self.calls.lock().unwrap().push(c);
    }
}

#[async_trait]
impl Runtime for Fake {
    async fn create_sandbox(
        &self,
        uid: &str,
        _: &str,
        pod_dir: &Path,
    ) -> Result<Sandbox, KubeletError> {
        self.log(Call::CreateSandbox(uid.into()));
        Ok(Sandbox {
            namespaces: netns::PodNamespaces::new(&pod_dir.join("netns"), pod_dir, uid),
            ip: "10.250.0.2".into(),
        })
    }
    async fn remove_sandbox(&self, uid: &str, _: &Sandbox) -> Result<(), KubeletError> {
        self.log(Call::RemoveSandbox(uid.into()));
        Ok(())
    }
    async fn image(&self, name: &str) -> Result<ImageInfo, KubeletError> {
        Ok(ImageInfo {
            name: name.into(),
            chain_id: "sha256:top".into(),
            entrypoint: vec!["/bin/busybox".into()],
            cmd: vec!["sh".into()],
            env: vec![],
            working_dir: "/".into(),
            user: String::new(),
        })
    }
    async fn create_container(
        &self,
        id: &str,
        _: &ImageInfo,
        _: &Value,
    ) -> Result<(), KubeletError> {
        self.log(Call::Create(id.into()));
        Ok(())
    }
    async fn start(&self, id: &str, _: &Path) -> Result<(), KubeletError> {
        self.log(Call::Start(id.into()));
        self.killed.lock().unwrap().remove(id);
        let next = self
            .script
            .lock()
            .unwrap()
            .get_mut(id)
            .and_then(|q| q.pop_front());
        self.current.lock().unwrap().insert(id.into(), next);
        Ok(())
    }
    async fn wait(&self, id: &str) -> Result<Exit, KubeletError> {
        let run = self.current.lock().unwrap().get(id).cloned().flatten();
        let sleep = tokio::time::sleep(run.map(|r| r.0).unwrap_or(Duration::from_secs(3600)));
        tokio::pin!(sleep);
        loop {
            if let Some(sig) = self.killed.lock().unwrap().remove(id) {
                return Ok(Exit {
                    code: 128 + sig,
                    at: 0,
                });
            }
            tokio::select! {
                _ = &mut sleep => return Ok(Exit { code: run.map(|r| r.1).unwrap_or(0), at: 0 }),
                _ = self.notify.notified() => {}
            }
        }
    }
    async fn kill(&self, id: &str, signal: u32) -> Result<(), KubeletError> {
        self.log(Call::Kill(id.into(), signal));
        self.killed.lock().unwrap().insert(id.into(), signal);
        self.notify.notify_waiters();
        Ok(())
    }
    async fn delete_task(&self, _: &str) -> Result<(), KubeletError> {
        Ok(())
    }
    async fn remove_container(&self, id: &str) -> Result<(), KubeletError> {
        self.log(Call::Remove(id.into()));
        Ok(())
    }
    async fn task_state(&self, id: &str) -> Result<TaskState, KubeletError> {
        Ok(self
            .left
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .unwrap_or(TaskState::Missing))
    }
    fn existing_sandbox(&self, uid: &str, pod_dir: &Path, ip: &str) -> Option<Sandbox> {
        (*self.sandbox_pinned.lock().unwrap()).then(|| Sandbox {
            namespaces: netns::PodNamespaces::new(&pod_dir.join("netns"), pod_dir, uid),
            ip: ip.into(),
        })
    }
    async fn exec(&self, id: &str, _: &Value, _: Duration) -> Result<ExecOutput, KubeletError> {
        self.log(Call::Exec(id.into()));
        Ok(ExecOutput {
            exit_code: *self.exec_code.lock().unwrap(),
            stdout: vec![],
            stderr: vec![],
        })
    }
}

fn container(name: &str) -> Container {
    Container {
        name: name.into(),
        image: Some("kimg.local/busybox:latest".into()),
        ..Default::default()
    }
}

fn pod(policy: &str, init: Vec<Container>, main: Vec<Container>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("p".into()),
            uid: Some("u1".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some(policy.into()),
            init_containers: (!init.is_empty()).then_some(init),
            containers: main,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn kubelet(fake: Arc<Fake>, dir: &Path) -> Kubelet {
    let mut cfg = KubeletConfig::new(dir.to_path_buf(), "node-1", "192.0.2.1");
    cfg.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(80),
        reset_after: Duration::from_secs(600),
    };
    Kubelet::new(fake, cfg)
}

async fn until(k: &Kubelet, uid: &str, what: &str, f: impl Fn(&PodRecord) -> bool) -> PodRecord {
    for _ in 0..500 {
        if let Some(r) = k.record(uid) {
            if f(&r) {
                return r;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}: {:?}", k.record(uid));
}

#[tokio::test]
async fn init_containers_run_in_order_before_the_main_container_and_the_pod_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    fake.script("u1-init-a", &[(5, 0)]);
    fake.script("u1-init-b", &[(5, 0)]);
    fake.script("u1-main", &[(5, 0)]);
    let k = kubelet(fake.clone(), dir.path());
    let uid = k
        .run_pod(
            pod(
                "Never",
                vec![container("init-a"), container("init-b")],
                vec![container("main")],
            ),
            ResolvedData::default(),
        )
        .unwrap();
    let r = until(&k, &uid, "Succeeded", |r| r.state == PodState::Succeeded).await;
    assert!(r.init_done);
    let starts: Vec<Call> = fake
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Start(_)))
        .collect();
    assert_eq!(
        starts,
        [
            Call::Start("u1-init-a".into()),
            Call::Start("u1-init-b".into()),
            Call::Start("u1-main".into())
        ]
    );
    let status = k.status(&uid).unwrap();
    assert_eq!(status.phase.as_deref(), Some("Succeeded"));
    assert_eq!(status.pod_ip.as_deref(), Some("10.250.0.2"));
    let cs = &status.container_statuses.unwrap()[0];
    assert_eq!(
        cs.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .reason
            .as_deref(),
        Some("Completed")
    );
}

#[tokio::test]
async fn a_crashing_container_enters_crashloopbackoff_with_doubling_delays() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    fake.script("u1-main", &[(1, 1), (1, 1), (1, 1), (1, 1), (1, 1)]);
    let k = kubelet(fake.clone(), dir.path());
    let uid = k
        .run_pod(
            pod("Always", vec![], vec![container("main")]),
            ResolvedData::default(),
        )
        .unwrap();
    let r = until(&k, &uid, "four back-offs", |r| {
        r.containers[0].backoffs.len() >= 4
    })
    .await;
    let ms: Vec<u128> = r.containers[0]
        .backoffs
        .iter()
        .map(|d| d.as_millis())
        .collect();
    assert_eq!(ms[..4], [20, 40, 80, 80]);
    assert!(r.containers[0].restart_count >= 3);
    let r = until(&k, &uid, "crash loop state", |r| {
        matches!(r.state, PodState::CrashLoopBackOff { .. }) || r.containers[0].backoffs.len() >= 5
    })
    .await;
    assert_eq!(r.state.phase(), "Running");
    k.delete_pod(&uid, Some(Duration::from_millis(200)))
        .await
        .unwrap();
}

#[tokio::test]
async fn restart_policies_decide_between_succeeded_and_failed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    fake.script("u1-main", &[(1, 0)]);
    let k = kubelet(fake.clone(), dir.path());
    let uid = k
        .run_pod(
            pod("OnFailure", vec![], vec![container("main")]),
            ResolvedData::default(),
        )
        .unwrap();
    until(&k, &uid, "Succeeded", |r| r.state == PodState::Succeeded).await;

    let fake = Arc::new(Fake::default());
    fake.script("u1-main", &[(1, 3)]);
    let k = kubelet(fake.clone(), dir.path());
    let uid = k
        .run_pod(
            pod("Never", vec![], vec![container("main")]),
            ResolvedData::default(),
        )
        .unwrap();
    let r = until(&k, &uid, "Failed", |r| r.state.is_final()).await;
    assert!(matches!(r.state, PodState::Failed { .. }));
    assert_eq!(r.containers[0].restart_count, 0);
    assert_eq!(k.status(&uid).unwrap().phase.as_deref(), Some("Failed"));
}

#[tokio::test]
async fn a_failing_init_container_under_never_fails_the_pod_without_starting_main() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    fake.script("u1-init", &[(1, 2)]);
    let k = kubelet(fake.clone(), dir.path());
    let uid = k
        .run_pod(
            pod("Never", vec![container("init")], vec![container("main")]),
            ResolvedData::default(),
        )
        .unwrap();
    let r = until(&k, &uid, "Failed", |r| r.state.is_final()).await;
    assert_eq!(r.state.reason(), "Init:Error");
    assert!(!fake.calls().contains(&Call::Start("u1-main".into())));
}

#[tokio::test]
async fn a_failing_liveness_probe_kills_and_restarts_the_container() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    *fake.exec_code.lock().unwrap() = 1;
    let mut c = container("main");
    c.liveness_probe = Some(Probe {
        exec: Some(ExecAction {
            command: Some(vec!["false".into()]),
        }),
        period_seconds: Some(1),
        failure_threshold: Some(1),
        ..Default::default()
    });
    let k = kubelet(fake.clone(), dir.path());
    let uid = k
        .run_pod(pod("Always", vec![], vec![c]), ResolvedData::default())
        .unwrap();
    let r = until(&k, &uid, "a restart", |r| {
        r.containers[0].restart_count >= 1
    })
    .await;
    assert!(fake.calls().contains(&Call::Exec("u1-main".into())));
    assert!(fake.calls().contains(&Call::Kill("u1-main".into(), 9)));
    assert!(matches!(
        r.containers[0].last_state,
        Some(ContainerState::Terminated { exit_code: 137, .. })
    ));
    k.delete_pod(&uid, Some(Duration::from_millis(200)))
        .await
        .unwrap();
}

#[tokio::test]
async fn readiness_follows_the_probe_and_sets_the_ready_condition() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    let mut c = container("main");
    c.readiness_probe = Some(Probe {
        exec: Some(ExecAction {
            command: Some(vec!["true".into()]),
        }),
        period_seconds: Some(1),
        failure_threshold: Some(1),
        ..Default::default()
    });
    let k = kubelet(fake.clone(), dir.path());
    let uid = k
        .run_pod(pod("Always", vec![], vec![c]), ResolvedData::default())
        .unwrap();
    until(&k, &uid, "ready", |r| r.containers[0].ready).await;
    let ready = |k: &Kubelet| {
        k.status(&uid)
            .unwrap()
            .conditions
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .status
            .clone()
    };
    assert_eq!(ready(&k), "True");
    *fake.exec_code.lock().unwrap() = 1;
    until(&k, &uid, "unready", |r| !r.containers[0].ready).await;
    assert_eq!(ready(&k), "False");
    k.delete_pod(&uid, Some(Duration::from_millis(200)))
        .await
        .unwrap();
}

#[tokio::test]
async fn deleting_a_pod_sends_sigterm_then_removes_containers_and_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    let k = kubelet(fake.clone(), dir.path());
    let uid = k
        .run_pod(
            pod("Always", vec![], vec![container("a"), container("b")]),
            ResolvedData::default(),
        )
        .unwrap();
    until(&k, &uid, "running", |r| {
        r.containers
            .iter()
            .all(|c| matches!(c.state, ContainerState::Running { .. }))
    })
    .await;
    k.delete_pod(&uid, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let calls = fake.calls();
    assert!(calls.contains(&Call::Kill("u1-a".into(), 15)));
    assert!(
        !calls.contains(&Call::Kill("u1-a".into(), 9)),
        "exited on SIGTERM, no SIGKILL needed"
    );
    let tail: Vec<Call> = calls.iter().rev().take(3).rev().cloned().collect();
    assert_eq!(
        tail,
        [
            Call::Remove("u1-a".into()),
            Call::Remove("u1-b".into()),
            Call::RemoveSandbox("u1".into())
        ]
    );
    assert_eq!(
        calls.iter().filter(|c| matches!(c, Call::Start(_))).count(),
        2,
        "no restart after deletion"
    );
    assert!(k.record(&uid).is_none());
    assert!(!dir.path().join("pods/u1").exists());
}

#[test]
fn cluster_first_pods_get_the_cluster_dns_and_search_path_others_the_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = KubeletConfig::new(dir.path().to_path_buf(), "node-1", "192.0.2.1");
    cfg.resolv_conf = "nameserver 198.51.100.1\n".into();
    cfg.cluster_dns = Some(("192.0.2.1".into(), "cluster.local".into()));
    let k = Kubelet::new(Arc::new(Fake::default()), cfg);
    let mut p = pod("Always", vec![], vec![]);
    p.metadata.namespace = Some("shop".into());
    let text = k.resolv_conf_for(&p);
    assert!(text.starts_with("nameserver 192.0.2.1\n"), "{text}");
    assert!(
        text.contains("search shop.svc.cluster.local svc.cluster.local cluster.local"),
        "{text}"
    );
    p.spec.as_mut().unwrap().dns_policy = Some("Default".into());
    assert_eq!(k.resolv_conf_for(&p), "nameserver 198.51.100.1\n");
}

/// A kubelet that restarts finds its pod's checkpoint and pinned sandbox: the running
/// container is followed as it is (no new sandbox, no new start, its restart count kept);
/// one that exited meanwhile is restarted per the policy.
#[tokio::test]
async fn a_restarted_kubelet_adopts_running_containers_instead_of_restarting_them() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    fake.script("u1-a", &[(1, 1)]);
    let spec = || pod("Always", vec![], vec![container("a"), container("b")]);
    let k1 = kubelet(fake.clone(), dir.path());
    let uid = k1.run_pod(spec(), ResolvedData::default()).unwrap();
    until(&k1, &uid, "a restarted once and both running", |r| {
        r.containers[0].restart_count == 1
            && r.containers
                .iter()
                .all(|c| matches!(c.state, ContainerState::Running { .. }))
    })
    .await;
    k1.abandon();
    let before = fake.calls().len();
    fake.left
        .lock()
        .unwrap()
        .insert("u1-a".into(), TaskState::Running);
    fake.left
        .lock()
        .unwrap()
        .insert("u1-b".into(), TaskState::Exited(Exit { code: 3, at: 0 }));
    *fake.sandbox_pinned.lock().unwrap() = true;

    let k2 = kubelet(fake.clone(), dir.path());
    k2.run_pod(spec(), ResolvedData::default()).unwrap();
    let r = until(&k2, &uid, "b restarted, a followed", |r| {
        r.containers[1].restart_count == 1
            && r.containers
                .iter()
                .all(|c| matches!(c.state, ContainerState::Running { .. }))
    })
    .await;
    assert_eq!(r.containers[0].restart_count, 1, "a's count survives");
    assert_eq!(r.pod_ip.as_deref(), Some("10.250.0.2"));
    let after: Vec<Call> = fake.calls()[before..].to_vec();
    assert!(
        !after.iter().any(|c| matches!(c, Call::CreateSandbox(_))),
        "{after:?}"
    );
    assert!(!after.contains(&Call::Start("u1-a".into())), "{after:?}");
    assert!(!after.contains(&Call::Create("u1-a".into())), "{after:?}");
    assert!(after.contains(&Call::Start("u1-b".into())), "{after:?}");
    assert!(
        !after.iter().any(|c| matches!(c, Call::Kill(..))),
        "{after:?}"
    );
    let b = &k2.status(&uid).unwrap().container_statuses.unwrap()[1];
    let last = b.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    assert_eq!(last.map(|t| t.exit_code), Some(3), "{b:?}");
}

/// Without its namespaces (the node rebooted) a pod is not adopted: what is left of it is
/// removed and it starts afresh.
#[tokio::test]
async fn a_pod_whose_sandbox_is_gone_starts_afresh_after_its_leftovers_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    let spec = || pod("Always", vec![], vec![container("a")]);
    let k1 = kubelet(fake.clone(), dir.path());
    let uid = k1.run_pod(spec(), ResolvedData::default()).unwrap();
    until(&k1, &uid, "running", |r| {
        matches!(r.containers[0].state, ContainerState::Running { .. })
    })
    .await;
    k1.abandon();
    let before = fake.calls().len();
    let k2 = kubelet(fake.clone(), dir.path());
    k2.run_pod(spec(), ResolvedData::default()).unwrap();
    until(&k2, &uid, "running again", |r| {
        matches!(r.containers[0].state, ContainerState::Running { .. })
    })
    .await;
    let after: Vec<Call> = fake.calls()[before..].to_vec();
    let pos = |c: Call| after.iter().position(|x| *x == c);
    let removed = pos(Call::Remove("u1-a".into())).expect("leftover removed");
    assert!(pos(Call::Kill("u1-a".into(), 9)).unwrap() < removed);
    assert!(removed < pos(Call::CreateSandbox("u1".into())).unwrap());
    assert!(
        pos(Call::CreateSandbox("u1".into())).unwrap() < pos(Call::Start("u1-a".into())).unwrap()
    );
}
