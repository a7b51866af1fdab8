#![allow(unreachable_pub)]

//! Integration tests: one binary, one module per area. Real OTLP exporters, real
//! HTTP/2 gRPC, a real Kafka-protocol broker (started by `scripts/test.sh`).

mod canary;
mod cli;
mod detection;
mod golden;
mod kafka;
mod limits;
mod loadgen;
mod otlp_clients;
mod properties;
mod rca;
mod remediation;
mod replay;
mod support;
mod web;
