//! Wire types of aic and their validation.
//!
//! Everything that crosses a process boundary — a job request a user signs, the manifest
//! the validate function writes, the status records of a job, a serving registration, the
//! S3 event records that wake the functions, the gateway API's bodies — is defined here as a
//! serde type; the documents the bucket holds have a JSON Schema exported into `schemas/json/`.
//!
//! This crate does no I/O.

pub mod address;
pub mod event;
pub mod gateway;
pub mod gpuuse;
pub mod job;
pub mod jobfile;
pub mod manifest;
pub mod origin;
pub mod resume;
pub mod serving;
pub mod settlement;
pub mod status;
pub mod validate;

pub use address::Address;
pub use gpuuse::{GpuReading, GpuSample, SampleSource};
pub use job::{JobId, JobKind, JobRequest, Launcher, PaymentRef};
pub use manifest::{JobManifest, Quote};
pub use resume::ResumeRequest;
pub use serving::{AppServer, DeployKey, ServeOptions, ServingMinute, ServingRegistration};
pub use settlement::{ModelCharge, Settlement, SettlementKind};
pub use status::{AllocResult, JobState, StatusDetail, StatusRecord, shown_run};
pub use validate::{FieldError, ValidationErrors};

/// Every exported schema: (file name, schema).
pub fn json_schemas() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        ("job-request.schema.json", schemars::schema_for!(JobRequest)),
        ("job-manifest.schema.json", schemars::schema_for!(JobManifest)),
        ("resume-request.schema.json", schemars::schema_for!(ResumeRequest)),
        ("status-record.schema.json", schemars::schema_for!(StatusRecord)),
        ("alloc-result.schema.json", schemars::schema_for!(AllocResult)),
        ("serving-registration.schema.json", schemars::schema_for!(ServingRegistration)),
        ("settlement.schema.json", schemars::schema_for!(Settlement)),
        ("gpu-sample.schema.json", schemars::schema_for!(GpuSample)),
        ("serving-minute.schema.json", schemars::schema_for!(ServingMinute)),
        ("deploy-key.schema.json", schemars::schema_for!(DeployKey)),
        ("job-file.schema.json", schemars::schema_for!(jobfile::JobFile)),
        ("gateway-sign-request.schema.json", schemars::schema_for!(gateway::SignRequest)),
        ("gateway-sign-response.schema.json", schemars::schema_for!(gateway::SignResponse)),
        ("gateway-listing.schema.json", schemars::schema_for!(gateway::Listing)),
    ]
}
