//! End-to-end tests of the `orch` binary against temporary homes.

mod inspect;
mod recovery;
mod run;
mod serve;
mod support;
