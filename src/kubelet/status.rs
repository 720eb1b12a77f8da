//! Turns a [`PodRecord`] into the Kubernetes `PodStatus` the apiserver side publishes.
//!
//! Conditions follow the kubelet's: `PodScheduled` (the pod is on this node),
//! `Initialized` (init containers done), `ContainersReady` and `Ready` (every main
//! container ready). Container ids are reported as `containerd://<id>`.

use k8s_openapi::api::core::v1::{
    ContainerState as K8sState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::pod::{ContainerRecord, PodRecord};
use super::state::{ContainerState, PodState};

fn time(secs: i64) -> Option<Time> {
    jiff::Timestamp::from_second(secs).ok().map(Time)
}

fn k8s_state(s: &ContainerState) -> K8sState {
    match s {
        ContainerState::Waiting { reason, message } => K8sState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: (!message.is_empty()).then(|| message.clone()),
            }),
            ..Default::default()
        },
        ContainerState::Running { started_at } => K8sState {
            running: Some(ContainerStateRunning {
                started_at: time(*started_at),
            }),
            ..Default::default()
        },
        ContainerState::Terminated {
            exit_code,
            reason,
            started_at,
            finished_at,
        } => K8sState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *exit_code,
                reason: Some(reason.clone()),
                started_at: time(*started_at),
                finished_at: time(*finished_at),
                container_id: None,
                message: None,
                signal: None,
            }),
            ..Default::default()
        },
    }
}

fn container_status(c: &ContainerRecord) -> ContainerStatus {
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: String::new(),
        container_id: Some(format!("containerd://{}", c.id)),
        ready: c.ready,
        started: Some(c.started && matches!(c.state, ContainerState::Running { .. })),
        restart_count: c.restart_count as i32,
        state: Some(k8s_state(&c.state)),
        last_state: c.last_state.as_ref().map(k8s_state),
        ..Default::default()
    }
}

fn condition(kind: &str, ok: bool, at: i64) -> PodCondition {
    PodCondition {
        type_: kind.into(),
        status: if ok { "True" } else { "False" }.into(),
        last_transition_time: time(at),
        ..Default::default()
    }
}

/// The pod's status as Kubernetes reports it.
pub fn pod_status(r: &PodRecord, host_ip: &str) -> PodStatus {
    let ready = !r.containers.is_empty()
        && r.containers.iter().all(|c| c.ready)
        && matches!(
            r.state,
            PodState::Running | PodState::CrashLoopBackOff { .. }
        );
    let (reason, message) = match &r.state {
        PodState::Failed { reason, message } => (Some(reason.clone()), Some(message.clone())),
        _ => (None, None),
    };
    PodStatus {
        phase: Some(r.state.phase().into()),
        reason,
        message,
        host_ip: Some(host_ip.to_string()),
        pod_ip: r.pod_ip.clone(),
        pod_ips: r.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: time(r.start_time),
        conditions: Some(vec![
            condition("PodScheduled", true, r.start_time),
            condition("Initialized", r.init_done, r.start_time),
            condition("ContainersReady", ready, r.start_time),
            condition("Ready", ready, r.start_time),
        ]),
        init_container_statuses: (!r.init.is_empty())
            .then(|| r.init.iter().map(container_status).collect()),
        container_statuses: Some(r.containers.iter().map(container_status).collect()),
        ..Default::default()
    }
}
