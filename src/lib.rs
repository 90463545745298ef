//! orch: a single-binary orchestrator for crypto market-data pipelines.
//!
//! DAGs are YAML files ([`dag`]); `orch serve` ([`scheduler`]) creates runs on their schedules
//! and the [`executor`] runs their tasks ([`tasks`]), recording every run and attempt in the
//! metadata database ([`store`]) and every attempt's output in [`logs`].

pub mod cli;
pub mod config;
pub mod dag;
pub mod executor;
pub mod lease;
pub mod logs;
pub mod process;
pub mod scheduler;
pub mod store;
pub mod tasks;
pub mod template;
