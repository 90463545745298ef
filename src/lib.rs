//! orch: a single-binary orchestrator for crypto market-data pipelines.
//!
//! DAGs are YAML files ([`dag`]); `orch serve` ([`scheduler`]) creates runs on their schedules
//! and the [`executor`] runs their tasks ([`tasks`]), recording every run and attempt in the
//! metadata database ([`store`]) and every attempt's output in [`logs`].
//!
//! Data pipelines read from [`exchange`]s (tested against the [`simulator`]), keep prices
//! exact ([`decimal`]) and write Parquet to the [`lake`].

pub mod attempt;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod dag;
pub mod database;
pub mod decimal;
pub mod exchange;
pub mod executor;
pub mod history_pruning;
pub mod http_client;
pub mod lake;
pub mod lease;
pub mod logs;
pub mod manual_actions;
pub mod market;
pub mod membership;
pub mod notify;
pub mod process;
pub mod queue;
pub mod redact;
pub mod run_counters;
pub mod scheduler;
pub mod simulator;
pub mod staging;
pub mod store;
pub mod stream;
pub mod tasks;
pub mod template;
pub mod trade_bus;
pub mod transform;
pub mod warehouse;
pub mod web;
pub mod worker;

/// Every task kind this binary ships: the core's, and the market's registered into them.
pub fn registry() -> tasks::Registry {
    let mut registry = tasks::Registry::core();
    market::register(&mut registry);
    registry
}
