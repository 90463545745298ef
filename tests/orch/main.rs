//! End-to-end tests of the `orch` binary against temporary homes.

mod alerts;
mod bigquery;
mod binance;
mod browser;
mod demo;
mod email;
mod etl;
mod exact;
mod faults;
mod inspect;
mod isolation;
mod kinds;
mod mapping;
mod mercado_bitcoin;
mod pools;
mod postgres;
mod recovery;
mod retention;
mod run;
mod sensors;
mod serve;
mod stream;
mod support;
mod untrusted;
mod web;
mod workers;
