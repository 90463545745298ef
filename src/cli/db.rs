//! `orch db prune`: the retention policy, applied by hand.

use std::process::ExitCode;

use crate::config::Config;
use crate::store::Store;

/// `orch db prune [--dry-run]`.
pub async fn prune(config: &Config, dry_run: bool) -> anyhow::Result<ExitCode> {
    if !config.retention.is_set() {
        anyhow::bail!(
            "no `retention:` in {}: set `days` and/or `runs_per_dag` to say what to keep",
            config.home.join("orch.yaml").display()
        );
    }
    let store = Store::open(&config.database_url).await?;
    let pruned =
        crate::history_pruning::prune(&store, &config.logs_dir, &config.retention, dry_run).await?;
    if dry_run {
        for run in &pruned.runs {
            println!("{}", run.run_id);
        }
        eprintln!("would delete {} runs", pruned.runs.len());
    } else {
        eprintln!(
            "deleted {} runs and {} log folders",
            pruned.deleted, pruned.log_folders
        );
    }
    Ok(ExitCode::SUCCESS)
}
