//! The conformance suite of the runtime kind: what every `runtime.*` backend must do the same way, whether it is
//! built in, loaded from a native library or from a wasm component. A backend's tests call [`run_all`] with
//! the backend and a [`Fixture`] that knows how to express "a process that exits with this code" and "a process
//! that runs until killed" in that backend's terms (an OCI spec and a rootfs for a Linux runtime, a function
//! call for a wasm one).
//!
//! Each check panics with a message naming the check and what differed.

use std::sync::Arc;
use std::time::Duration;

use crate::runtime::{CreateOptions, ExecOptions, Runtime, RuntimeError, RuntimeEvent, Status, Task};

/// How a backend's tests describe processes to the suite.
pub trait Fixture: Send + Sync {
    /// A task whose init process exits by itself with `code`, soon after start.
    fn exits(&self, id: &str, code: u32) -> CreateOptions;
    /// A task whose init process runs until it is killed.
    fn runs_until_killed(&self, id: &str) -> CreateOptions;
    /// A process exec'd into a running task that exits with `code`; None if the backend has no exec.
    fn exec_exits(&self, code: u32) -> Option<ExecOptions>;
    /// Whether the backend can pause tasks.
    fn can_pause(&self) -> bool;
}

/// The namespace the suite works in.
pub const NAMESPACE: &str = "conformance";

const DEADLINE: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f).await.unwrap_or_else(|_| panic!("{what}: no answer within {DEADLINE:?}"))
}

async fn status(task: &Arc<dyn Task>) -> Status {
    task.state().await.expect("state").status
}

/// Runs every check, in order. Task ids are prefixed with `prefix` so several backends can share a host.
pub async fn run_all(runtime: &dyn Runtime, fixture: &dyn Fixture, prefix: &str) {
    let mut events = runtime.take_events().expect("take_events: the first call must return the event stream");
    assert!(runtime.take_events().is_none(), "take_events: a second call must return None");

    lifecycle_and_exit_code(runtime, fixture, prefix).await;
    exit_event_is_reported(&mut events, &format!("{prefix}-life"), 7).await;
    duplicates_and_unknown_ids(runtime, fixture, prefix).await;
    kill_and_signalled_status(runtime, fixture, prefix).await;
    exec_processes(runtime, fixture, prefix).await;
    if fixture.can_pause() {
        pause_and_resume(runtime, fixture, prefix).await;
    }
}

/// create → Created, start → Running or already Stopped, wait → the code, delete → the same exit, then gone.
async fn lifecycle_and_exit_code(runtime: &dyn Runtime, fixture: &dyn Fixture, prefix: &str) {
    let id = format!("{prefix}-life");
    let task = within("create", runtime.create(NAMESPACE, &id, fixture.exits(&id, 7))).await.expect("create");
    assert_eq!(task.id(), id, "lifecycle: task id");
    assert_eq!(task.namespace(), NAMESPACE, "lifecycle: task namespace");
    assert_eq!(status(&task).await, Status::Created, "lifecycle: status after create");
    let listed = runtime.tasks(Some(NAMESPACE)).await.expect("tasks");
    assert!(listed.iter().any(|t| t.id() == id), "lifecycle: tasks() must list a created task");
    assert!(
        runtime.tasks(Some("conformance-other")).await.expect("tasks").iter().all(|t| t.id() != id),
        "lifecycle: tasks() of another namespace must not list it"
    );
    within("start", task.start()).await.expect("start");
    let exit = within("wait", task.wait()).await.expect("wait");
    assert_eq!(exit.status, 7, "lifecycle: exit status");
    assert_eq!(status(&task).await, Status::Stopped, "lifecycle: status after exit");
    let again = within("wait again", task.wait()).await.expect("wait after exit");
    assert_eq!(again, exit, "lifecycle: wait after exit answers at once with the same exit");
    let deleted = within("delete", runtime.delete(NAMESPACE, &id)).await.expect("delete");
    assert_eq!(deleted.status, 7, "lifecycle: delete returns the exit");
    match runtime.get(NAMESPACE, &id).await {
        Err(RuntimeError::DoesNotExist(_)) => {}
        Err(e) => panic!("lifecycle: get after delete must be DoesNotExist, got {e}"),
        Ok(_) => panic!("lifecycle: get after delete must be DoesNotExist, got the task"),
    }
}

async fn exit_event_is_reported(events: &mut crate::runtime::RuntimeEvents, id: &str, code: u32) {
    let found = within("exit event", async {
        while let Some(event) = events.recv().await {
            if let RuntimeEvent::Exit { container_id, exec_id: None, exit, namespace } = &event
                && container_id == id
            {
                assert_eq!(namespace, NAMESPACE, "events: exit namespace");
                return Some(exit.status);
            }
        }
        None
    })
    .await;
    assert_eq!(found, Some(code), "events: the init's exit must be reported with its status");
}

async fn duplicates_and_unknown_ids(runtime: &dyn Runtime, fixture: &dyn Fixture, prefix: &str) {
    let id = format!("{prefix}-dup");
    let _task = within("create", runtime.create(NAMESPACE, &id, fixture.runs_until_killed(&id))).await.expect("create");
    match within("create again", runtime.create(NAMESPACE, &id, fixture.runs_until_killed(&id))).await {
        Err(RuntimeError::AlreadyExists(_)) => {}
        Err(e) => panic!("duplicates: a second create must be AlreadyExists, got {e}"),
        Ok(_) => panic!("duplicates: a second create must fail"),
    }
    match runtime.get(NAMESPACE, "conformance-no-such-task").await {
        Err(RuntimeError::DoesNotExist(_)) => {}
        _ => panic!("duplicates: get of an unknown id must be DoesNotExist"),
    }
    // A created task that never started can be deleted.
    within("delete created", runtime.delete(NAMESPACE, &id)).await.expect("deleting a created task");
    assert!(runtime.get(NAMESPACE, &id).await.is_err(), "duplicates: deleted task still there");
}

async fn kill_and_signalled_status(runtime: &dyn Runtime, fixture: &dyn Fixture, prefix: &str) {
    let id = format!("{prefix}-kill");
    let task = within("create", runtime.create(NAMESPACE, &id, fixture.runs_until_killed(&id))).await.expect("create");
    within("start", task.start()).await.expect("start");
    assert_eq!(status(&task).await, Status::Running, "kill: status after start");
    assert!(runtime.delete(NAMESPACE, &id).await.is_err(), "kill: deleting a running task must be refused");
    assert_eq!(status(&task).await, Status::Running, "kill: a refused delete must leave the task running");
    within("kill", task.kill(9, false)).await.expect("kill");
    let exit = within("wait", task.wait()).await.expect("wait");
    assert_eq!(exit.status, 128 + 9, "kill: a SIGKILLed process reports 128 + 9");
    match task.kill(9, false).await {
        Err(RuntimeError::ProcessAlreadyExited(_)) => {}
        other => panic!("kill: killing an exited task must be ProcessAlreadyExited, got {:?}", other.err()),
    }
    within("delete", runtime.delete(NAMESPACE, &id)).await.expect("delete");
}

async fn exec_processes(runtime: &dyn Runtime, fixture: &dyn Fixture, prefix: &str) {
    let Some(exec) = fixture.exec_exits(5) else { return };
    let id = format!("{prefix}-exec");
    let task = within("create", runtime.create(NAMESPACE, &id, fixture.runs_until_killed(&id))).await.expect("create");
    let pid = within("start", task.start()).await.expect("start");
    assert_eq!(pid, task.state().await.expect("state").pid, "start: returns the pid that state reports");
    let process = within("exec", task.exec("e1", exec.clone())).await.expect("exec");
    assert_eq!(process.id(), "e1", "exec: process id");
    assert_eq!(process.state().await.expect("state").status, Status::Created, "exec: status before start");
    match task.exec("e1", exec.clone()).await {
        Err(RuntimeError::AlreadyExists(_)) => {}
        other => panic!("exec: a duplicate exec id must be AlreadyExists, got {:?}", other.err()),
    }
    let exec_pid = within("exec start", process.start()).await.expect("exec start");
    let exit = within("exec wait", process.wait()).await.expect("exec wait");
    assert_eq!(exit.status, 5, "exec: exit status");
    assert_eq!(exit.pid, exec_pid, "exec: start returns the pid the exit reports");
    let again = task.process("e1").await.expect("process by id");
    assert_eq!(again.state().await.expect("state").status, Status::Stopped, "exec: status after exit");
    let deleted = within("delete process", task.delete_process("e1")).await.expect("delete_process");
    assert_eq!(deleted.status, 5, "exec: delete_process returns the exit");
    assert!(task.process("e1").await.is_err(), "exec: a deleted process must be gone");
    assert_eq!(status(&task).await, Status::Running, "exec: the task keeps running");
    within("kill", task.kill(9, true)).await.expect("kill");
    within("wait", task.wait()).await.expect("wait");
    within("delete", runtime.delete(NAMESPACE, &id)).await.expect("delete");
}

async fn pause_and_resume(runtime: &dyn Runtime, fixture: &dyn Fixture, prefix: &str) {
    let id = format!("{prefix}-pause");
    let task = within("create", runtime.create(NAMESPACE, &id, fixture.runs_until_killed(&id))).await.expect("create");
    within("start", task.start()).await.expect("start");
    within("pause", task.pause()).await.expect("pause");
    assert_eq!(status(&task).await, Status::Paused, "pause: status");
    within("resume", task.resume()).await.expect("resume");
    assert_eq!(status(&task).await, Status::Running, "resume: status");
    within("kill", task.kill(9, true)).await.expect("kill");
    within("wait", task.wait()).await.expect("wait");
    within("delete", runtime.delete(NAMESPACE, &id)).await.expect("delete");
}
