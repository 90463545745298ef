//! Dynamic task mapping within a run: a `for_each` task expands into instances `TASK[i]`, one
//! per item, whose states and outputs make the mapped task's.

use chrono::Utc;
use serde_json::Value;

use super::{Instance, PastCheck, RunLoop, Slot};
use crate::dag::for_each;
use crate::logs::attempt_log_path;
use crate::store::{RunChange, StoreError, TaskState, durably};
use crate::tasks::TaskError;

impl RunLoop<'_> {
    /// Whether slot `i` is a mapped task (not one of its instances).
    pub(super) fn is_mapped(&self, i: usize) -> bool {
        self.slots[i].instance.is_none() && self.dag.tasks[self.slots[i].task].for_each.is_some()
    }

    /// The slots of mapped task `parent`'s instances.
    pub(super) fn instances(&self, parent: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.slots.len()).filter(move |&s| {
            self.slots[s]
                .instance
                .as_ref()
                .is_some_and(|m| m.parent == parent)
        })
    }

    /// Adds a slot for instance `index` of mapped task `parent`, and returns it. A run loop
    /// expands a task once: when it loaded instances, their task was expanded already.
    pub(super) fn add_instance(&mut self, parent: usize, index: usize, item: Value) -> usize {
        let id = for_each::instance_id(&self.slots[parent].id, index);
        self.slots.push(Slot {
            task: self.slots[parent].task,
            id,
            instance: Some(Instance {
                parent,
                index,
                item,
            }),
        });
        self.upstream.push(Vec::new());
        self.states.push(TaskState::Scheduled);
        self.tries.push(0);
        self.bases.push(0);
        self.next_retry.push(None);
        self.past.push(PastCheck::Clear);
        self.slots.len() - 1
    }

    /// Expands mapped task `i` into an instance per item, each queued; an empty list skips
    /// it, and a list that cannot be had fails it, beyond any retry.
    pub(super) async fn expand(&mut self, i: usize) -> Result<(), StoreError> {
        let task = &self.dag.tasks[self.slots[i].task];
        let items = match &task.for_each {
            Some(for_each) => for_each.items(&self.variables(i)),
            None => Ok(Vec::new()),
        };
        let items = match items {
            Ok(items) => items,
            Err(error) => {
                let attempt = self.tries[i] + 1;
                let path = attempt_log_path(
                    &self.exec.logs_dir,
                    &self.dag.id,
                    &self.run.run_id,
                    &self.slots[i].id,
                    attempt,
                );
                let banner = format!("expanding mapped task `{}` ({})", task.id, task.kind);
                self.pending.push(RunChange::AttemptStarted {
                    task_id: self.slots[i].id.clone(),
                    attempt,
                    started_at: Utc::now(),
                    log_path: path.to_string_lossy().into_owned(),
                    queued: None,
                    claimed_by: None,
                });
                self.tries[i] = attempt;
                return self
                    .never_queued(i, attempt, path, &banner, TaskError::permanent(error))
                    .await;
            }
        };
        if items.is_empty() {
            tracing::info!(run_id = %self.run.run_id, task_id = %self.slots[i].id, "for_each gave no items: skipped");
            let row = vec![(self.slots[i].id.clone(), TaskState::Skipped)];
            self.pending.push(RunChange::TaskStates(row));
            self.states[i] = TaskState::Skipped;
            self.emit(i, TaskState::Skipped, None);
            return Ok(());
        }
        let rows: Vec<(String, String)> = items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                (
                    for_each::instance_id(&self.slots[i].id, index),
                    item.to_string(),
                )
            })
            .collect();
        // The instances' rows follow what is pending (the task's own state among it).
        self.flush().await?;
        durably(|| {
            self.exec
                .store
                .expand_task(&self.run.run_id, &self.slots[i].id, &rows)
        })
        .await?;
        self.states[i] = TaskState::Running;
        self.emit(i, TaskState::Running, None);
        for (index, item) in items.into_iter().enumerate() {
            let s = self.add_instance(i, index, item);
            self.states[s] = TaskState::Queued;
            self.next_retry[s] = None;
            self.bases[s] = self.tries[s];
            self.emit(s, TaskState::Queued, None);
        }
        Ok(())
    }

    /// The state mapped task `i` ends in, once all its instances have ended.
    pub(super) fn mapped_state(&self, i: usize) -> Option<TaskState> {
        let states: Vec<TaskState> = self.instances(i).map(|s| self.states[s]).collect();
        for_each::summed_state(&states)
    }

    /// Publishes what mapped task `i`'s instances published as one list, in index order
    /// (`null` for an instance that published nothing): `{{ outputs.TASK[0].key }}`.
    pub(super) fn collect_outputs(&mut self, i: usize) {
        let mut by_index: Vec<(usize, Value)> = self
            .instances(i)
            .filter_map(|s| {
                let index = self.slots[s].instance.as_ref()?.index;
                Some((
                    index,
                    self.outputs
                        .get(&self.slots[s].id)
                        .cloned()
                        .unwrap_or(Value::Null),
                ))
            })
            .collect();
        by_index.sort_by_key(|(index, _)| *index);
        let list = by_index.into_iter().map(|(_, v)| v).collect();
        self.outputs
            .insert(self.slots[i].id.clone(), Value::Array(list));
    }
}
