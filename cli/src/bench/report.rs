//! The bench's figures, as a table and as JSON.

use std::collections::BTreeMap;

use serde::Serialize;

use super::procs::ProcessFigures;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles.
    pub fn of(samples: &[f64]) -> Self {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let at = |p: f64| {
            if sorted.is_empty() {
                return 0.0;
            }
            let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            sorted[rank.clamp(1, sorted.len()) - 1]
        };
        Self {
            p50: at(50.0),
            p95: at(95.0),
            p99: at(99.0),
            max: sorted.last().copied().unwrap_or(0.0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub workflows: usize,
    pub steps_per_workflow: usize,
    pub concurrency: Option<usize>,
    pub rate: Option<f64>,
    pub payload_bytes: usize,
    pub topology: String,
    /// Workflows that did not end `succeeded`.
    pub failed: usize,
    /// First request accepted to last run finished, from Postgres timestamps.
    pub duration_s: f64,
    pub client_wall_s: f64,
    pub workflows_per_s: f64,
    pub steps_per_s: f64,
    /// Request accepted to run finished.
    pub latency_ms: Percentiles,
    /// Median latency divided by the steps on the critical path.
    pub per_step_overhead_ms: f64,
    /// `POST .../requests` round trip seen by the client.
    pub accept_ms: Percentiles,
    /// POSTs the API turned away under overload (503, `Retry-After`) and
    /// the bench filed again; not counted in `accept_ms`.
    pub shed_requests: usize,
    pub pg_xact: i64,
    pub pg_xact_per_step: f64,
    /// What those transactions wrote, per step: the cost behind them.
    pub pg_writes_per_step: PgWrites,
    /// Most runs accepted and not yet finished at one instant, from the
    /// same Postgres timestamps as the latency.
    pub peak_runs_in_flight: usize,
    pub processes: Vec<ProcessFigures>,
    /// CPU used meanwhile by Postgres and nats-server on this machine.
    pub services: Vec<ServiceCpu>,
    /// Where each step's time went.
    pub stages_ms: Stages,
}

/// CPU a local service used while the measured workflows ran.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceCpu {
    pub name: String,
    pub cpu_s: f64,
    pub cpu_ms_per_step: f64,
}

/// Rows written to Fulfil's tables (from `pg_stat_user_tables`) and WAL
/// generated, per step. A HOT update changed no index; every other row
/// write also wrote an entry in each of its table's indexes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PgWrites {
    pub rows_inserted: f64,
    pub rows_updated: f64,
    pub rows_hot_updated: f64,
    pub rows_deleted: f64,
    pub wal_bytes: f64,
    /// The same row counts, by table.
    pub tables: BTreeMap<String, TableWrites>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TableWrites {
    pub inserted: f64,
    pub updated: f64,
    pub hot_updated: f64,
    pub deleted: f64,
}

/// Per-step latency broken down by stage (see the bench's docs).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stages {
    pub dispatch_to_worker_start: Percentiles,
    pub handler: Percentiles,
    pub worker_finish_to_applied: Percentiles,
}

impl Report {
    pub fn table(&self) -> String {
        let load = match (self.concurrency, self.rate) {
            (_, Some(rate)) => format!("rate {rate}/s"),
            (Some(c), None) => format!("concurrency {c}"),
            _ => String::new(),
        };
        let mut out = format!(
            "scenario {} ({} steps), {} workflows, {load}, payload {} B, topology {}\n",
            self.scenario,
            self.steps_per_workflow,
            self.workflows,
            self.payload_bytes,
            self.topology
        );
        let rows = [
            ("workflows/s", format!("{:.1}", self.workflows_per_s)),
            ("steps/s", format!("{:.1}", self.steps_per_s)),
            (
                "latency ms p50/p95/p99/max",
                format!(
                    "{:.2} / {:.2} / {:.2} / {:.2}",
                    self.latency_ms.p50,
                    self.latency_ms.p95,
                    self.latency_ms.p99,
                    self.latency_ms.max
                ),
            ),
            (
                "per-step overhead ms",
                format!("{:.2}", self.per_step_overhead_ms),
            ),
            (
                "accept ms p50/p99",
                format!("{:.2} / {:.2}", self.accept_ms.p50, self.accept_ms.p99),
            ),
            ("requests shed (retried)", self.shed_requests.to_string()),
            (
                "pg transactions/step",
                format!("{:.2} ({} in all)", self.pg_xact_per_step, self.pg_xact),
            ),
            (
                "pg rows/step ins/upd(hot)/del",
                format!(
                    "{:.2} / {:.2} ({:.2}) / {:.2}",
                    self.pg_writes_per_step.rows_inserted,
                    self.pg_writes_per_step.rows_updated,
                    self.pg_writes_per_step.rows_hot_updated,
                    self.pg_writes_per_step.rows_deleted
                ),
            ),
            (
                "pg WAL bytes/step",
                format!("{:.0}", self.pg_writes_per_step.wal_bytes),
            ),
            ("peak runs in flight", self.peak_runs_in_flight.to_string()),
            ("failed workflows", self.failed.to_string()),
            ("duration s", format!("{:.2}", self.duration_s)),
        ];
        for (name, value) in rows {
            out.push_str(&format!("  {name:<28} {value}\n"));
        }
        for (name, stage) in [
            (
                "stage dispatch->worker",
                self.stages_ms.dispatch_to_worker_start,
            ),
            ("stage handler", self.stages_ms.handler),
            (
                "stage worker->applied",
                self.stages_ms.worker_finish_to_applied,
            ),
        ] {
            out.push_str(&format!(
                "  {name:<28} p50 {:.2} ms, p99 {:.2} ms\n",
                stage.p50, stage.p99
            ));
        }
        for p in &self.processes {
            out.push_str(&format!(
                "  {:<28} cpu {:.2} s, peak rss {:.1} MiB\n",
                format!("process {}", p.role),
                p.cpu_s,
                p.peak_rss_mib
            ));
        }
        for service in &self.services {
            out.push_str(&format!(
                "  {:<28} cpu {:.2} s, {:.3} ms/step\n",
                format!("service {}", service.name),
                service.cpu_s,
                service.cpu_ms_per_step
            ));
        }
        out
    }
}

/// The most intervals `[start, end)` open at one instant.
pub fn peak_overlap<T: Ord + Copy>(intervals: impl IntoIterator<Item = (T, T)>) -> usize {
    // An end sorts before a start at the same instant: a run that finished
    // when another was accepted was not in flight beside it.
    let mut edges: Vec<(T, bool)> = intervals
        .into_iter()
        .flat_map(|(start, end)| [(start, true), (end, false)])
        .collect();
    edges.sort();
    let (mut open, mut peak) = (0usize, 0usize);
    for (_, is_start) in edges {
        if is_start {
            open += 1;
            peak = peak.max(open);
        } else {
            open = open.saturating_sub(1);
        }
    }
    peak
}

#[cfg(test)]
mod tests {
    use super::peak_overlap;

    #[test]
    fn peak_overlap_counts_runs_open_together() {
        assert_eq!(peak_overlap(Vec::<(i32, i32)>::new()), 0);
        assert_eq!(peak_overlap([(0, 10), (2, 5), (3, 4), (6, 8)]), 3);
        // Back to back is not overlapping.
        assert_eq!(peak_overlap([(0, 5), (5, 9), (9, 12)]), 1);
    }
}
