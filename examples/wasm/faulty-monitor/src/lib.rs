//! `monitor.faulty`: a wasm task monitor for berth's tests, which misbehaves when asked to. An event of a task
//! whose id contains `loop` never returns, `alloc` allocates until something stops it, `trap` panics (a trap
//! in a component). Every other event is published on `/faulty/seen` in the task's namespace as
//! `<task id> <event> <n>`, `n` counting the events this instance handled, so a test can tell a fresh
//! instance from a reused one.

use std::sync::atomic::{AtomicU64, Ordering};

use berth_plugin_sdk::monitor::{Monitor, Task, TaskEvent};
use berth_plugin_sdk::proto::Any;
use berth_plugin_sdk::{Host, Init, Result};

/// The plugin.
pub struct Faulty {
    host: Host,
    events: AtomicU64,
}

fn name(event: &TaskEvent) -> &'static str {
    match event {
        TaskEvent::Created { .. } => "created",
        TaskEvent::Started { .. } => "started",
        TaskEvent::Exited { .. } => "exited",
        TaskEvent::Oom => "oom",
        TaskEvent::Paused => "paused",
        TaskEvent::Resumed => "resumed",
        TaskEvent::Deleted { .. } => "deleted",
    }
}

impl Monitor for Faulty {
    const NAME: &'static str = "faulty";

    fn new(init: Init) -> Result<Self> {
        Ok(Faulty { host: init.host, events: AtomicU64::new(0) })
    }

    fn monitor(&self, _task: &Task) -> Result<()> {
        Ok(())
    }

    fn stop(&self, _task: &Task) -> Result<()> {
        Ok(())
    }

    fn event(&self, task: &Task, event: &TaskEvent) -> Result<()> {
        if task.id.contains("loop") {
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if task.id.contains("alloc") {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
            }
        }
        if task.id.contains("trap") {
            panic!("asked to trap on an event of task {}", task.id);
        }
        let n = self.events.fetch_add(1, Ordering::Relaxed) + 1;
        let note = format!("{} {} {n}", task.id, name(event));
        self.host.publish(&task.namespace, "/faulty/seen", Any { type_url: "faulty.Seen".into(), value: note.into() })
    }
}

berth_plugin_sdk::export_monitor!(Faulty);
