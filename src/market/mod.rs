//! The market plug-in: what orch's crypto-market side (exchanges, streams, the lake, the
//! warehouse) registers into the orchestration core, as any plug-in would. The core knows
//! none of it; the binary calls [`register`].

pub mod kinds;
pub mod sensors;

use std::sync::Arc;

use crate::config::Config;
use crate::scheduler::LeaderService;
use crate::tasks::Registry;

/// Adds the market's task kinds and sensor conditions to `registry`, and has the DAG loader
/// leave its stream files alone (the streams load them).
pub fn register(registry: &mut Registry) {
    kinds::register(registry);
    registry.register_sensor_condition(Arc::new(sensors::LakeObject));
    registry.register_sensor_condition(Arc::new(sensors::StreamCommitted));
    registry.register_foreign_files(crate::stream::is_stream_file);
}

/// What the market runs on the scheduling leader of `orch serve`: the live streams of the DAGs
/// folder, whose processes log as `log_format` says.
pub fn leader_services(
    config: &Config,
    log_format: &str,
) -> anyhow::Result<Vec<Box<dyn LeaderService>>> {
    Ok(vec![Box::new(crate::stream::service::StreamService::new(
        config, log_format,
    )?)])
}
