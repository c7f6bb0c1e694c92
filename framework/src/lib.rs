//! `connector-framework`: the traits, data model, registry and runner of the connector
//! pipeline framework.
//!
//! A pipeline reads tables from one [`Source`], writes them to one or more [`Sink`]s and
//! remembers what it did in a [`StateStore`]; a [`Strategy`] decides per table whether to sync
//! in full or incrementally. Connector crates implement these traits and register a
//! [`ConnectorDescriptor`] with `inventory`, so that the `connector-run` binary can list them,
//! describe them and build them from config:
//!
//! ```text
//! inventory::submit! {
//!     connector_framework::ConnectorDescriptor {
//!         kind: "ndjson",
//!         crate_name: env!("CARGO_PKG_NAME"),
//!         description: "Writes each table as newline-delimited JSON files",
//!         details: "",
//!         fields: FIELDS,
//!         example: r#"{"kind": "ndjson", "path": "out"}"#,
//!         types: &[],
//!         factory: connector_framework::Factory::Sink(parse),
//!     }
//! }
//! ```
//!
//! A whole pipeline, with the test kit's in-memory source, sink and state (feature `testkit`):
//!
//! ```
//! use std::sync::Arc;
//! use connector_framework::testkit::{CollectingSink, MemorySource, MemoryStateStore, sample_table};
//! use connector_framework::{CursorStrategy, RunOptions, Runner, Settings, Target};
//!
//! let source = MemorySource { databases: vec!["shop1".into(), "shop2".into()], ..Default::default() };
//! for shop in ["shop1", "shop2"] {
//!     let (schema, rows) = sample_table(shop, "orders", 3);
//!     source.add_table(schema, rows);
//! }
//! let sink = CollectingSink::new("warehouse");
//! let target = Target { id: "warehouse".into(), sink: Arc::new(sink.clone()), state: Arc::new(MemoryStateStore::default()) };
//! let runner = Runner {
//!     source: Arc::new(source),
//!     targets: vec![target],
//!     strategy: Arc::new(CursorStrategy),
//!     settings: Settings::default(),
//!     tables: Vec::new(), // every table
//!     table_options: Default::default(),
//!     listeners: Vec::new(),
//!     stop: Default::default(),
//! };
//! let run = tokio::runtime::Runtime::new().unwrap().block_on(runner.run(&RunOptions::default()));
//! let report = run.unwrap();
//! assert_eq!(report.failed(), 0);
//! assert_eq!(sink.committed_rows("orders", "shop2").len(), 3);
//! ```
//!
//! Data flows as [`RowBatch`]es of typed [`Value`]s described by a [`TableSchema`] in
//! [`LogicalType`]s; decimals keep their digits and never pass through `f64`. Errors are one
//! [`ConnectorError`] classified as config, transient or permanent; only transient ones are
//! retried, by a jittered [`RetryPolicy`]. See `docs/ARCHITECTURE.md` for the flow of a run.

pub mod alerts;
pub mod cdc;
pub mod change;
pub mod config;
pub mod digest;
pub mod error;
pub mod events;
pub mod history;
pub mod pipeline;
pub mod registry;
pub mod report;
pub mod retry;
pub mod runner;
pub mod schema;
pub mod secrets;
pub mod settings;
pub mod sink;
pub mod source;
pub mod state;
pub mod strategy;
pub mod system;
pub mod tenants;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod value;
pub mod verify;
pub mod window;

pub use cdc::{CdcOptions, CdcReport, StreamReport};
pub use change::{
    ChangeEvent, ChangeLog, ChangeLogStatus, ChangeMeta, ChangeOp, ChangePosition, ChangeRequest, ChangeSeq,
    ChangeStream, ChangeTable, RowChange,
};
pub use config::{FieldDoc, Secret};
pub use error::{ConnectorError, ErrorClass, Result};
pub use events::{Event, EventListener};
pub use history::{RunRecord, TableRun};
pub use pipeline::{CdcDeletes, Pipeline, Settings, TableOptions};
pub use registry::{BuildContext, ConnectorDescriptor, Factory, Role, SinkConfig, SourceConfig, StateConfig, TypeRow};
pub use report::{OutcomeStatus, RunReport, TableOutcome};
pub use retry::RetryPolicy;
pub use runner::{CdcSnapshots, RunOptions, Runner, Target};
pub use schema::{Column, KeySource, LogicalType, TableRef, TableSchema};
pub use sink::{
    ChangeTracking, CommitOutcome, CommitSummary, Prepared, ResumeFrom, Sink, StageRequest, Staged, StagingWriter,
    TargetOptions, TargetPlan, TargetTable, WriteMode,
};
pub use source::{BatchSender, Preflight, ReadRange, ReadRequest, ReadSummary, RowSink, Source};
pub use state::{
    CdcTableState, DatabaseState, LockScope, MemoryStateStore, ResumePoint, ScratchState, StateLock, StateStore,
    StreamState, SyncMode, SyncStatus, TableState, TargetStamp, Watermark,
};
pub use strategy::{CursorStrategy, NullCursorPolicy, PlanOptions, Strategy, TablePlan};
pub use system::SystemColumns;
pub use tenants::{Shard, TenantChanges, TenantSelection};
pub use value::{Row, RowBatch, Value};
pub use verify::{VerifyOptions, VerifyReport};
pub use window::{WindowCheck, WindowRows, WindowSeen};

/// Re-exported so connector crates register without naming `inventory` themselves.
pub use inventory;
