//! `orch dags list | validate | show | pause | unpause`.

use std::process::ExitCode;

use chrono::Utc;

use super::{DagsCommand, find_dag};
use crate::config::Config;
use crate::dag::{Dag, DagBag, load_file};
use crate::scheduler::wake;
use crate::store::{Store, timestamp};
use crate::tasks::Registry;

pub async fn dags(config: &Config, command: DagsCommand) -> anyhow::Result<ExitCode> {
    let registry = crate::registry();
    match command {
        DagsCommand::Validate { files } => Ok(validate(config, &registry, &files)),
        DagsCommand::List => {
            let bag = DagBag::load(&config.dags_dir, &registry);
            let store = Store::open(&config.database_url).await?;
            let paused_dags = store
                .paused_dags(bag.dags().map(|d| (d.id.as_str(), d.paused)))
                .await?;
            println!(
                "{:<32} {:<16} {:<8} {:>5}  FILE",
                "DAG", "SCHEDULE", "PAUSED", "TASKS"
            );
            for dag in bag.dags() {
                let paused = paused_dags.contains(&dag.id);
                println!(
                    "{:<32} {:<16} {:<8} {:>5}  {}",
                    dag.id,
                    dag.schedule
                        .as_ref()
                        .map_or("-".to_string(), |s| s.to_string()),
                    if paused { "yes" } else { "no" },
                    dag.tasks.len(),
                    dag.path.display()
                );
            }
            for error in bag.errors() {
                println!("\nbroken: {error}");
            }
            Ok(ExitCode::SUCCESS)
        }
        DagsCommand::Show { dag_id } => {
            let bag = DagBag::load(&config.dags_dir, &registry);
            let dag = find_dag(&bag, &dag_id)?;
            let store = Store::open(&config.database_url).await?;
            let paused = store.is_paused(&dag.id, dag.paused).await?;
            let last_end = store.last_scheduled_end(&dag.id).await?;
            show(&dag, paused, last_end);
            Ok(ExitCode::SUCCESS)
        }
        DagsCommand::Pause { dag_id } => set_paused(config, &registry, &dag_id, true).await,
        DagsCommand::Unpause { dag_id } => set_paused(config, &registry, &dag_id, false).await,
    }
}

async fn set_paused(
    config: &Config,
    registry: &Registry,
    dag_id: &str,
    paused: bool,
) -> anyhow::Result<ExitCode> {
    let bag = DagBag::load(&config.dags_dir, registry);
    let dag = find_dag(&bag, dag_id)?;
    let store = Store::open(&config.database_url).await?;
    store.set_paused(&dag.id, paused, dag.paused).await?;
    let action = if paused { "pause" } else { "unpause" };
    store
        .record_action(&super::cli_actor(), &dag.id, None, None, action, None)
        .await?;
    wake(&config.state_dir()).await;
    println!("{} {}", dag.id, if paused { "paused" } else { "unpaused" });
    Ok(ExitCode::SUCCESS)
}

/// Checks the named files, or every file of the DAGs folder (including duplicate ids).
fn validate(config: &Config, registry: &Registry, files: &[std::path::PathBuf]) -> ExitCode {
    let mut failed = false;
    let mut report = |result: Result<(&Dag, &std::path::Path), String>| match result {
        Ok((dag, path)) => {
            let problems = dag.pool_problems(&config.pools);
            if problems.is_empty() {
                println!(
                    "ok {} ({}, {} tasks)",
                    path.display(),
                    dag.id,
                    dag.tasks.len()
                );
            }
            for problem in problems {
                eprintln!("{problem}");
                failed = true;
            }
        }
        Err(error) => {
            eprintln!("{error}");
            failed = true;
        }
    };
    if files.is_empty() {
        let bag = DagBag::load(&config.dags_dir, registry);
        for dag in bag.dags() {
            report(Ok((dag, &dag.path)));
        }
        for error in bag.errors() {
            report(Err(error.to_string()));
        }
        let (streams, errors) = crate::stream::load_dir(&config.dags_dir);
        for stream in streams {
            println!("ok {} ({}, stream)", stream.path.display(), stream.id);
        }
        for error in errors {
            report(Err(error.to_string()));
        }
        if bag.dags().next().is_none()
            && bag.errors().next().is_none()
            && crate::stream::load_dir(&config.dags_dir).0.is_empty()
        {
            eprintln!(
                "no DAG files (*.yaml, *.yml) in {}",
                config.dags_dir.display()
            );
        }
    } else {
        for file in files {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            if crate::stream::is_stream_file(&text) {
                match crate::stream::load_str(file, &text) {
                    Ok(stream) => println!("ok {} ({}, stream)", file.display(), stream.id),
                    Err(error) => report(Err(error.to_string())),
                }
                continue;
            }
            match load_file(file, registry) {
                Ok(dag) => report(Ok((&dag, file))),
                Err(error) => report(Err(error.to_string())),
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn show(dag: &Dag, paused: bool, last_end: Option<chrono::DateTime<Utc>>) {
    println!("dag:              {}", dag.id);
    if let Some(description) = &dag.description {
        println!("description:      {description}");
    }
    println!("file:             {}", dag.path.display());
    println!(
        "schedule:         {} ({})",
        dag.schedule
            .as_ref()
            .map_or("manual only".to_string(), |s| s.to_string()),
        dag.timezone
    );
    if let Some(start) = dag.start_date {
        println!("start_date:       {start}");
    }
    println!("catchup:          {}", dag.catchup);
    println!("paused:           {paused}");
    println!("max_active_runs:  {}", dag.max_active_runs);
    println!("max_active_tasks: {}", dag.max_active_tasks);
    if let Some(due) = dag.next_due(last_end, Utc::now()).filter(|_| !paused) {
        println!("next run due:     {}", timestamp::format(due));
    }
    if !dag.params.is_empty() {
        println!(
            "params:           {}",
            serde_json::Value::Object(dag.params.clone())
        );
    }
    println!("tasks:");
    for task in &dag.tasks {
        let deps = if task.depends_on.is_empty() {
            String::new()
        } else {
            format!(" <- {}", task.depends_on.join(", "))
        };
        let timeout = task
            .timeout
            .map(|t| format!(", timeout {}", humantime::format_duration(t)))
            .unwrap_or_default();
        let limits = if task.limits.is_unlimited() {
            String::new()
        } else {
            format!(", limits {}", task.limits.describe())
        };
        println!(
            "  {} [{}]{deps} (trigger_rule {}, retries {}{timeout}{limits})",
            task.id,
            task.kind,
            task.trigger_rule.as_str(),
            task.retry.retries
        );
    }
}
