//! Containers and tasks: create, start, wait, inspect, signal, delete, exec with a
//! terminal or FIFOs, and the listings the kubelet's restart adoption reads.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::types::Mount;
use prost_types::Any;

use super::{Containerd, ExecPaths, Exit, ImageInfo, TaskState, PROCESS_TYPE, SPEC_TYPE};
use crate::kubelet::error::KubeletError;

impl Containerd {
    /// Creates the container record and its writable snapshot on top of the image.
    ///
    /// The record comes first: it names the snapshot, which makes the snapshot a root for
    /// containerd's garbage collector from the moment it exists. Prepared first, a fresh
    /// snapshot is unreferenced until the record is written, and a collection triggered by
    /// any deletion in between removes it ("snapshot … does not exist" at task start).
    pub async fn create_container(
        &self,
        id: &str,
        image: &ImageInfo,
        spec_json: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> Result<(), KubeletError> {
        let container = api::Container {
            id: id.into(),
            labels,
            image: image.name.clone(),
            runtime: Some(api::container::Runtime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            }),
            spec: Some(Any {
                type_url: SPEC_TYPE.into(),
                value: spec_json,
            }),
            snapshotter: self.snapshotter.clone(),
            snapshot_key: id.into(),
            created_at: None,
            updated_at: None,
            extensions: HashMap::new(),
            sandbox: String::new(),
        };
        self.containers()
            .create(self.req(
                api::CreateContainerRequest {
                    container: Some(container),
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("container create"))?;
        let prepared = self
            .snapshots()
            .prepare(self.req(
                snap::PrepareSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: id.into(),
                    parent: image.chain_id.clone(),
                    labels: HashMap::new(),
                },
                None,
            ))
            .await;
        match prepared {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(s) => {
                // No half-made container: the record goes again.
                let _ = self.delete_container(id).await;
                Err(KubeletError::containerd("snapshot prepare")(s))
            }
        }
    }

    /// Creates and starts the container's task, its stdout and stderr appended to `log`.
    pub async fn start_task(&self, id: &str, log: &Path) -> Result<u32, KubeletError> {
        let mounts: Vec<Mount> = self
            .snapshots()
            .mounts(self.req(
                snap::MountsRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: id.into(),
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("snapshot mounts"))?
            .into_inner()
            .mounts;
        // The log exists before the task does, so `kubectl logs -f` issued as soon as the
        // container counts as running never races the shim's own (asynchronous) open.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(KubeletError::io(log))?;
        let uri = format!("file://{}", log.display());
        self.tasks()
            .create(self.req(
                api::CreateTaskRequest {
                    container_id: id.into(),
                    rootfs: mounts,
                    stdin: String::new(),
                    stdout: uri.clone(),
                    stderr: uri,
                    terminal: false,
                    checkpoint: None,
                    options: self.task_options(),
                    runtime_path: String::new(),
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("task create"))?;
        let started = self
            .tasks()
            .start(self.req(
                api::StartRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("task start"))?;
        Ok(started.into_inner().pid)
    }

    /// Waits for the task (or one exec'd process) to exit.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<Exit, KubeletError> {
        let r = self
            .tasks()
            .wait(self.req(
                api::WaitRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("task wait"))?
            .into_inner();
        Ok(Exit {
            code: r.exit_status,
            at: r.exited_at.map(|t| t.seconds).unwrap_or_default(),
        })
    }

    /// The task's state: running (created, paused), stopped with its exit, or no task.
    pub async fn task_state(&self, id: &str) -> Result<TaskState, KubeletError> {
        let got = self
            .tasks()
            .get(self.req(
                api::GetRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await;
        let process = match got {
            Ok(r) => r.into_inner().process,
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(KubeletError::containerd("task get")(s)),
        };
        use containerd_client::types::v1::Status;
        Ok(match process.map(|p| (Status::try_from(p.status), p)) {
            Some((Ok(Status::Running | Status::Created | Status::Paused | Status::Pausing), _)) => {
                TaskState::Running
            }
            Some((Ok(Status::Stopped), p)) => TaskState::Exited(Exit {
                code: p.exit_status,
                at: p.exited_at.map(|t| t.seconds).unwrap_or_default(),
            }),
            _ => TaskState::Missing,
        })
    }

    /// Sends `signal` to the task's init process (and, with `all`, every process).
    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), KubeletError> {
        self.tasks()
            .kill(self.req(
                api::KillRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                    signal,
                    all,
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("task kill"))?;
        Ok(())
    }

    /// Deletes the task; a missing task is not an error.
    pub async fn delete_task(&self, id: &str) -> Result<(), KubeletError> {
        match self
            .tasks()
            .delete(self.req(
                api::DeleteTaskRequest {
                    container_id: id.into(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(KubeletError::containerd("task delete")(s)),
        }
    }

    /// Deletes the container record and its snapshot; missing ones are not an error.
    pub async fn delete_container(&self, id: &str) -> Result<(), KubeletError> {
        match self
            .containers()
            .delete(self.req(api::DeleteContainerRequest { id: id.into() }, None))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(KubeletError::containerd("container delete")(s)),
        }
        match self
            .snapshots()
            .remove(self.req(
                snap::RemoveSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: id.into(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(KubeletError::containerd("snapshot remove")(s)),
        }
    }

    /// Runs `process_json` (an OCI `Process`) in the container, input from the `stdin`
    /// FIFO when given, output to `out`/`err`, and returns its exit code. Kills it after
    /// `timeout`.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: Vec<u8>,
        io: ExecPaths<'_>,
        timeout: Duration,
    ) -> Result<u32, KubeletError> {
        let ExecPaths {
            stdin,
            out,
            err,
            terminal,
        } = io;
        self.tasks()
            .exec(self.req(
                api::ExecProcessRequest {
                    container_id: id.into(),
                    stdin: stdin.map(|p| p.display().to_string()).unwrap_or_default(),
                    stdout: out.display().to_string(),
                    stderr: err.map(|p| p.display().to_string()).unwrap_or_default(),
                    terminal,
                    spec: Some(Any {
                        type_url: PROCESS_TYPE.into(),
                        value: process_json,
                    }),
                    exec_id: exec_id.into(),
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("task exec"))?;
        let waiter = self.wait(id, exec_id);
        let start_req = self.req(
            api::StartRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
            },
            None,
        );
        let result = async {
            self.tasks()
                .start(start_req)
                .await
                .map_err(KubeletError::containerd("exec start"))?;
            match tokio::time::timeout(timeout, waiter).await {
                Ok(exit) => exit.map(|e| e.code),
                Err(_) => {
                    let _ = self
                        .tasks()
                        .kill(self.req(
                            api::KillRequest {
                                container_id: id.into(),
                                exec_id: exec_id.into(),
                                signal: 9,
                                all: false,
                            },
                            None,
                        ))
                        .await;
                    Err(KubeletError::ExecTimeout(timeout))
                }
            }
        }
        .await;
        let _ = self
            .tasks()
            .delete_process(self.req(
                api::DeleteProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                },
                None,
            ))
            .await;
        result
    }

    /// Sets the terminal size of exec process `exec_id` (columns, rows).
    pub async fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        width: u16,
        height: u16,
    ) -> Result<(), KubeletError> {
        self.tasks()
            .resize_pty(self.req(
                api::ResizePtyRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    width: width.into(),
                    height: height.into(),
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("resize pty"))?;
        Ok(())
    }

    /// Closes the stdin of exec process `exec_id` (the shim holds its FIFO open, so only
    /// this makes the process see EOF).
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), KubeletError> {
        self.tasks()
            .close_io(self.req(
                api::CloseIoRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    stdin: true,
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("close io"))?;
        Ok(())
    }

    /// Ids of every container in the namespace (for leak checks and cleanup).
    pub async fn container_ids(&self) -> Result<Vec<String>, KubeletError> {
        Ok(self
            .containers()
            .list(self.req(api::ListContainersRequest { filters: vec![] }, None))
            .await
            .map_err(KubeletError::containerd("container list"))?
            .into_inner()
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect())
    }

    /// Ids of every task in the namespace.
    pub async fn task_ids(&self) -> Result<Vec<String>, KubeletError> {
        Ok(self
            .tasks()
            .list(self.req(
                api::ListTasksRequest {
                    filter: String::new(),
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("task list"))?
            .into_inner()
            .tasks
            .into_iter()
            .map(|t| t.id)
            .collect())
    }

    /// Keys of every snapshot in the namespace's snapshotter.
    pub async fn snapshot_keys(&self) -> Result<Vec<String>, KubeletError> {
        let mut stream = self
            .snapshots()
            .list(self.req(
                snap::ListSnapshotsRequest {
                    snapshotter: self.snapshotter.clone(),
                    filters: vec![],
                },
                None,
            ))
            .await
            .map_err(KubeletError::containerd("snapshot list"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = stream
            .message()
            .await
            .map_err(KubeletError::containerd("snapshot list"))?
        {
            out.extend(m.info.into_iter().map(|i| i.name));
        }
        Ok(out)
    }
}
